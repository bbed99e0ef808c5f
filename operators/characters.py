"""The character bible: add/remove characters and references, make a reference sheet."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import bpy
from bpy.props import IntProperty, StringProperty

from ..core.client import link as engine_link
from ..core.generate.shot import Progress, TakeOutcome, run_shot
from ..core.jobs.reference_sheet import SheetJob, load_sheet, prepare_sheet
from ..core.scene.characters import RENDERABLE, add_character_from_selection, deformed_by
from ..preferences import get_prefs
from .common import EngineJobModal, NeedsScene, project_of, report

log = logging.getLogger(__name__)


def _active_character(context: bpy.types.Context):
    settings = context.scene.viewfinder
    if not settings.characters:
        return None
    return settings.characters[min(settings.active_character_index, len(settings.characters) - 1)]


class NeedsCharacter:
    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        if context.scene is None or not hasattr(context.scene, "viewfinder"):
            cls.poll_message_set("No scene with Viewfinder settings")
            return False
        if not context.scene.viewfinder.characters:
            cls.poll_message_set("No characters: select an armature and use Add Character from Selection")
            return False
        return True


class VIEWFINDER_OT_add_character(NeedsScene, bpy.types.Operator):
    """Add the selected armature (with the meshes it deforms, and any selected meshes) as a character"""

    bl_idname = "viewfinder.add_character"
    bl_label = "Add Character from Selection"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        if not super().poll(context):
            return False
        selected = list(context.selected_objects or ())
        if context.active_object is not None and context.active_object not in selected:
            selected.append(context.active_object)
        if not any(o.type == "ARMATURE" or o.type in RENDERABLE for o in selected):
            cls.poll_message_set("Select the character's armature (or its meshes)")
            return False
        return True

    def execute(self, context: bpy.types.Context) -> set[str]:
        selected = list(context.selected_objects or ())
        active = context.active_object
        if active is not None and active not in selected:
            selected.append(active)
        character, error = add_character_from_selection(context.scene, selected, active)
        if error:
            report(self, "ERROR", error)
            return {"CANCELLED"}
        count = len(deformed_by(context.scene, character.armature)) if character.armature else 0
        report(self, "INFO", f"Character '{character.name}': {count + len(character.extra_objects)} objects")
        return {"FINISHED"}


class VIEWFINDER_OT_remove_character(NeedsCharacter, bpy.types.Operator):
    """Remove a character from the bible (its objects stay in the scene)"""

    bl_idname = "viewfinder.remove_character"
    bl_label = "Remove Character"
    bl_options = {"REGISTER", "UNDO"}

    character: StringProperty(name="Character", description="Character name; empty: the active one")

    def execute(self, context: bpy.types.Context) -> set[str]:
        settings = context.scene.viewfinder
        name = self.character or _active_character(context).name
        index = settings.characters.find(name)
        if index < 0:
            report(self, "ERROR", f"No character named '{name}'")
            return {"CANCELLED"}
        settings.characters.remove(index)
        settings.active_character_index = max(0, min(settings.active_character_index, len(settings.characters) - 1))
        return {"FINISHED"}


class VIEWFINDER_OT_add_reference(NeedsCharacter, bpy.types.Operator):
    """Add a reference image to the active character: an image file, or an image already in this file"""

    bl_idname = "viewfinder.add_reference"
    bl_label = "Add Character Reference"
    bl_options = {"REGISTER", "UNDO"}

    filepath: StringProperty(name="File", subtype="FILE_PATH")
    image: StringProperty(name="Image", description="Name of an image already in this file (instead of a file)")
    filter_image: bpy.props.BoolProperty(default=True, options={"HIDDEN", "SKIP_SAVE"})
    filter_folder: bpy.props.BoolProperty(default=True, options={"HIDDEN", "SKIP_SAVE"})

    def invoke(self, context: bpy.types.Context, event: bpy.types.Event) -> set[str]:
        if self.image or self.filepath:
            return self.execute(context)
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}

    def execute(self, context: bpy.types.Context) -> set[str]:
        character = _active_character(context)
        if self.image:
            image = bpy.data.images.get(self.image)
            if image is None:
                report(self, "ERROR", f"No image named '{self.image}' in this file")
                return {"CANCELLED"}
        elif self.filepath:
            path = Path(bpy.path.abspath(self.filepath))
            if not path.is_file():
                report(self, "ERROR", f"Character '{character.name}': {path} does not exist: choose an image file")
                return {"CANCELLED"}
            try:
                image = bpy.data.images.load(str(path), check_existing=True)
            except RuntimeError as exc:
                report(self, "ERROR", f"Character '{character.name}': Blender cannot read {path.name} ({exc}): "
                                      "choose a PNG or JPEG")
                return {"CANCELLED"}
        else:
            report(self, "ERROR", "Choose an image file or name an image")
            return {"CANCELLED"}
        if any(r.image == image for r in character.references):
            report(self, "INFO", f"Character '{character.name}' already has '{image.name}' as a reference")
            return {"FINISHED"}
        character.references.add().image = image
        character.active_reference_index = len(character.references) - 1
        # Kept from the sheet: it no longer waits there to be picked.
        for index, item in reversed(list(enumerate(character.sheet))):
            if item.image == image:
                character.sheet.remove(index)
        return {"FINISHED"}


class VIEWFINDER_OT_remove_reference(NeedsCharacter, bpy.types.Operator):
    """Remove a reference image from the active character (the image stays in the file)"""

    bl_idname = "viewfinder.remove_reference"
    bl_label = "Remove Character Reference"
    bl_options = {"REGISTER", "UNDO"}

    index: IntProperty(name="Index", default=-1, description="Reference to remove; -1: the active one")

    def execute(self, context: bpy.types.Context) -> set[str]:
        character = _active_character(context)
        index = self.index if self.index >= 0 else character.active_reference_index
        if not 0 <= index < len(character.references):
            report(self, "ERROR", f"Character '{character.name}' has no reference #{index + 1}")
            return {"CANCELLED"}
        character.references.remove(index)
        character.active_reference_index = max(0, min(index, len(character.references) - 1))
        return {"FINISHED"}


class VIEWFINDER_OT_make_reference_sheet(NeedsCharacter, EngineJobModal, bpy.types.Operator):
    """Generate front, three-quarter and side views of the active character from its own rig in a neutral pose.
    Keep the ones you like as references"""

    bl_idname = "viewfinder.make_reference_sheet"
    bl_label = "Make Reference Sheet"
    # No UNDO: the images are files on disk; the sheet list is refilled on the next run.
    bl_options = {"REGISTER"}

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        if not super().poll(context):
            return False
        character = _active_character(context)
        if character.armature is None and not character.extra_objects and character.collection is None:
            cls.poll_message_set(f"Character '{character.name}' has no armature or objects to draw")
            return False
        return True

    def _prepare(self, context: bpy.types.Context) -> SheetJob | None:
        """Main thread: the views' control maps and the engine job, or None after reporting why not."""
        character = _active_character(context)
        project = project_of(context)
        self._prefs = get_prefs(context)
        if project.temporary:
            report(self, "WARNING", f"Unsaved file: the sheet goes to {project.describe()}")
        try:
            return prepare_sheet(context.scene, character, project, self._prefs)
        except Exception as exc:
            self._fail(character.name, exc)
            return None

    def _fail(self, name: str, exc: BaseException) -> None:
        log.debug("reference sheet failed", exc_info=True)
        text = str(exc) or exc.__class__.__name__
        report(self, "ERROR", text if name in text else f"Character '{name}': {text}")

    def _place(self, context: bpy.types.Context, sheet: SheetJob, outcome: TakeOutcome) -> set[str]:
        try:
            images = load_sheet(context.scene, sheet.character, outcome)
        except Exception as exc:
            self._fail(sheet.character, exc)
            return {"CANCELLED"}
        report(self, "INFO", f"Character '{sheet.character}': reference sheet of {len(images)} views; "
                             "keep the ones you like (Keep)")
        return {"FINISHED"}

    # -- blocking path (scripts, background mode) ---------------------------

    def execute(self, context: bpy.types.Context) -> set[str]:
        sheet = self._prepare(context)
        if sheet is None:
            return {"CANCELLED"}
        try:
            outcome = run_shot(sheet.job, engine_link.connect(self._prefs))
        except Exception as exc:
            self._fail(sheet.character, exc)
            return {"CANCELLED"}
        return self._place(context, sheet, outcome)

    # -- modal path: the engine job on a worker (common.EngineJobModal), the UI stays responsive ----

    status_label = "Viewfinder reference sheet"

    def invoke(self, context: bpy.types.Context, event: bpy.types.Event) -> set[str]:
        if bpy.app.background:
            return self.execute(context)
        self._sheet = self._prepare(context)
        if self._sheet is None:
            return {"CANCELLED"}
        return self.start_engine_job(context, self._sheet.job, self._prefs, "generating")

    def progress_text(self, progress: Progress) -> str:
        return f"view {progress.frames_done} of {progress.frames_total}"

    def job_finished(self, context: bpy.types.Context, message: Any) -> set[str]:
        if isinstance(message, Exception):
            self._fail(self._sheet.character, message)
            return {"CANCELLED"}
        return self._place(context, self._sheet, message)

classes = (
    VIEWFINDER_OT_add_character,
    VIEWFINDER_OT_remove_character,
    VIEWFINDER_OT_add_reference,
    VIEWFINDER_OT_remove_reference,
    VIEWFINDER_OT_make_reference_sheet,
)
register, unregister = bpy.utils.register_classes_factory(classes)
