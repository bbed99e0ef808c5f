"""Scene settings (`scene.viewfinder`) and per-shot settings.

`scene.viewfinder.shots` reads as the current shot list: it brings the stored
list in line with the timeline markers before returning it (see core.scene.shots).
The stored collection is `shot_list`, which UI lists draw.
"""

from __future__ import annotations

import math
from typing import Any

import bpy
from bpy.props import (
    BoolProperty,
    CollectionProperty,
    EnumProperty,
    FloatProperty,
    IntProperty,
    PointerProperty,
    StringProperty,
)

from ..core.jobs.families import FAMILY_ITEMS
from ..core.jobs.request import (
    DEFAULT_BASE,
    DEFAULT_CONTROLNET_DEPTH,
    DEFAULT_CONTROLNET_LINEART,
    DEFAULT_CONTROLNET_NORMAL,
    DEFAULT_CONTROLNET_POSE,
    DEFAULT_CONTROLNET_SEG,
    DEFAULT_IMAGE_ENCODER,
    DEFAULT_IP_ADAPTER,
    DEFAULT_MOTION_ADAPTER,
)
from ..core.scene import shots as shots_core
from . import characters as props_characters
from .characters import ViewfinderCharacter

GENERATOR_ITEMS = [
    ("IMAGE", "Image", "Per-frame image model (SD 1.5 / SDXL + ControlNets) with the shot's coherence mode"),
    ("VIDEO", "Video", "A video model (Wan VACE, or AnimateDiff for small GPUs) driven by the same control maps"),
]
SHOT_GENERATOR_ITEMS = [("DEFAULT", "Scene Default", "Use the scene's generator (Viewfinder ▸ Film)"), *GENERATOR_ITEMS]
# Known video models; the ids live in core/jobs/video.py (VIDEO_MODELS).
VIDEO_MODEL_ITEMS = [
    ("WAN21_VACE_1_3B", "Wan 2.1 VACE 1.3B", "Wan-AI/Wan2.1-VACE-1.3B-diffusers: 480p, runs on a consumer GPU"),
    ("WAN21_VACE_14B", "Wan 2.1 VACE 14B", "Wan-AI/Wan2.1-VACE-14B-diffusers: 480p/720p, needs a large GPU"),
    ("WAN22_VACE_14B", "Wan 2.2 VACE Fun A14B", "linoyts/Wan2.2-VACE-Fun-14B-diffusers: two experts, large GPU"),
    ("ANIMATEDIFF", "AnimateDiff ControlNet", "The scene's SD 1.5 model and ControlNets with a motion adapter (8 GB)"),
    ("CUSTOM", "Custom", "A Wan VACE diffusers folder or Hub id of your own (Video Model)"),
]
VIDEO_CONTROL_ITEMS = [
    ("DEPTH", "Depth", "The shot's depth maps as the control video"),
    ("POSE", "Pose", "The shot's OpenPose drawings as the control video"),
    ("DEPTH_POSE", "Depth + Pose", "Pose drawings over the depth maps"),
]

# Generation tiers (issue 15; docs/user-guide.md "Drafts"): take.json and requests use "draft" / "final".
TIER_ITEMS = [
    ("FINAL", "Final", "The full path: the scene's steps and guidance at full size"),
    ("DRAFT", "Draft", "A few-step distilled path (LCM or TCD LoRA, ControlNets kept): seconds, to iterate on blocking"),
]
SHOT_TIER_ITEMS = [("DEFAULT", "Scene Default", "Use the scene's tier (Viewfinder ▸ Film)"), *TIER_ITEMS]
DRAFT_SCHEDULER_ITEMS = [
    ("LCM", "LCM", "LCM-LoRA with the LCM scheduler (latent-consistency/lcm-lora-*)"),
    ("TCD", "TCD", "TCD LoRA with the TCD scheduler (h1t/TCD-*): more detail at the same steps"),
]

LINEART_FORM_ITEMS = [
    ("LINEART", "Line Art", "Lines drawn Line Weight pixels wide, for the line-art ControlNet"),
    ("CANNY", "Canny", "Thin 1-pixel lines, like Canny edges, for the canny ControlNet"),
    ("MLSD", "MLSD", "Straight segments only (curves dropped), for the M-LSD ControlNet"),
]


def _map_weight(label: str, what: str) -> dict[str, Any]:
    return {"name": f"{label} Weight", "default": 0.0, "min": 0.0, "soft_max": 2.0,
            "description": f"How strongly frames follow the {what} (0: not rendered, not sent)"}


def _own_range(label: str) -> dict[str, Any]:
    return {"name": f"{label} Own Range", "default": False,
            "description": f"Give the {label.lower()} map its own start/end instead of Control Start/End"}


def _range_end(label: str, end: str) -> dict[str, Any]:
    return {"name": f"{label} {end.title()}", "default": 0.0 if end == "start" else 1.0, "min": 0.0, "max": 1.0,
            "subtype": "FACTOR", "description": f"Fraction of denoising steps {'before' if end == 'start' else 'after'} "
            f"which the {label.lower()} map {'applies' if end == 'start' else 'stops applying'} (its own range)"}


COHERENCE_ITEMS = [
    ("FLOW", "Flow", "Carry each generated frame into the next with the scene's exact motion vectors"),
    ("INDEPENDENT", "Independent", "Generate each frame on its own with the shot's seed"),
]


class ViewfinderPromptKey(bpy.types.PropertyGroup):
    """One prompt of a prompt travel: frames blend the prompts by their (animatable) weights."""

    prompt: StringProperty(name="Prompt", description="What the shot shows while this key's weight is up")
    weight: FloatProperty(
        name="Weight", default=1.0, min=0.0, soft_max=1.0,
        description="Share of this prompt on the current frame; key it (I over the field) to make the prompt travel",
    )


class ViewfinderShot(bpy.types.PropertyGroup):
    """One shot. Name, camera and frame range follow the timeline markers; the rest is the user's."""

    # Synced from the markers (core.scene.shots.sync_shots); editing them has no lasting effect.
    camera: PointerProperty(name="Camera", type=bpy.types.Object, description="Camera bound to the shot's marker")
    frame_start: IntProperty(name="Start", description="First frame (the marker's frame)")
    frame_end: IntProperty(name="End", description="Last frame (the frame before the next camera marker)")
    has_marker: BoolProperty(default=False, options={"HIDDEN"})
    marker_frame: IntProperty(default=0, options={"HIDDEN"})
    problem: StringProperty(name="Problem", description="Why this shot cannot be generated, if it cannot")

    # The user's settings, kept across renames, moves and reloads.
    prompt: StringProperty(name="Prompt", description="What this shot shows")
    negative_prompt: StringProperty(name="Negative Prompt", description="What this shot must not show")
    seed: IntProperty(name="Seed", min=0, description="Noise seed: the same seed and inputs give the same frames")
    depth_weight: FloatProperty(
        name="Depth Weight", default=1.0, min=0.0, soft_max=2.0, description="How strongly frames follow the depth map"
    )
    pose_weight: FloatProperty(
        name="Pose Weight", default=1.0, min=0.0, soft_max=2.0, description="How strongly people follow the pose map"
    )
    # Issue 23: maps beyond depth and pose (0 = off: existing shots render and send what they did).
    normal_weight: FloatProperty(**_map_weight("Normal", "normal map (camera-space surface directions)"))
    lineart_weight: FloatProperty(**_map_weight("Line Art", "line art (outlines, depth steps, creases)"))
    seg_weight: FloatProperty(**_map_weight("Segmentation", "segmentation map (a class per object)"))
    lineart_form: EnumProperty(name="Line Form", items=LINEART_FORM_ITEMS, default="LINEART",
                               description="Which line map (and so which ControlNet preset) the shot uses")
    line_weight: IntProperty(name="Line Weight", default=1, min=1, max=8,
                             description="Line width in pixels (Line Art and MLSD forms; Canny is always 1)")
    crease_angle: FloatProperty(name="Crease Angle", default=math.radians(30.0), min=0.0, max=math.pi,
                                subtype="ANGLE", description="Draw a line where the surface folds by more than this")
    # Per-map ranges: off, a map follows Control Start/End.
    use_depth_range: BoolProperty(**_own_range("Depth"))
    depth_start: FloatProperty(**_range_end("Depth", "start"))
    depth_end: FloatProperty(**_range_end("Depth", "end"))
    use_pose_range: BoolProperty(**_own_range("Pose"))
    pose_start: FloatProperty(**_range_end("Pose", "start"))
    pose_end: FloatProperty(**_range_end("Pose", "end"))
    use_normal_range: BoolProperty(**_own_range("Normal"))
    normal_start: FloatProperty(**_range_end("Normal", "start"))
    normal_end: FloatProperty(**_range_end("Normal", "end"))
    use_lineart_range: BoolProperty(**_own_range("Line Art"))
    lineart_start: FloatProperty(**_range_end("Line Art", "start"))
    lineart_end: FloatProperty(**_range_end("Line Art", "end"))
    use_seg_range: BoolProperty(**_own_range("Segmentation"))
    seg_start: FloatProperty(**_range_end("Segmentation", "start"))
    seg_end: FloatProperty(**_range_end("Segmentation", "end"))
    control_start: FloatProperty(
        name="Control Start", default=0.0, min=0.0, max=1.0, subtype="FACTOR",
        description="Fraction of denoising steps before the control maps apply",
    )
    control_end: FloatProperty(
        name="Control End", default=1.0, min=0.0, max=1.0, subtype="FACTOR",
        description="Fraction of denoising steps after which the control maps stop applying",
    )
    coherence: EnumProperty(name="Coherence", items=COHERENCE_ITEMS, default="FLOW")
    flow_strength: FloatProperty(
        name="Flow Strength", default=0.55, min=0.05, max=1.0, subtype="FACTOR",
        description="How much each frame may change from the previous frame carried along the motion",
    )
    keyframe_interval: IntProperty(
        name="Keyframe Interval", default=0, min=0,
        description="Generate a fresh keyframe every N frames (0: only at the first frame and at cuts)",
    )
    generator: EnumProperty(name="Generator", items=SHOT_GENERATOR_ITEMS, default="DEFAULT")
    reference_image: StringProperty(
        name="Reference Image", subtype="FILE_PATH",
        description="VIDEO: an image of the shot's subject or look (used until the character bible supplies one)",
    )
    # Prompt travel and per-shot guidance (core/scene/anim_sample.py samples them per frame).
    prompt_keys: CollectionProperty(type=ViewfinderPromptKey, name="Prompt Keys")
    active_prompt_key_index: IntProperty(name="Active Prompt Key", default=0, min=0)
    use_guidance_scale: BoolProperty(
        name="Own Guidance", default=False, description="Use this shot's guidance scale instead of the film's",
    )
    guidance_scale: FloatProperty(
        name="Guidance", default=7.5, min=0.0, max=30.0, description="This shot's prompt strength (animatable)",
    )
    tier: EnumProperty(name="Tier", items=SHOT_TIER_ITEMS, default="DEFAULT",
                       description="Draft or final generation for this shot (Scene Default: the film's tier)")


class ViewfinderSettings(bpy.types.PropertyGroup):
    """Scene-wide settings: `bpy.context.scene.viewfinder`."""

    shot_list: CollectionProperty(type=ViewfinderShot)
    shot_archive: CollectionProperty(type=ViewfinderShot, options={"HIDDEN"})
    active_shot_index: IntProperty(name="Active Shot", default=0, min=0)

    style_prompt: StringProperty(
        name="Style", description="Appended to every shot's prompt so the whole film keeps one look"
    )
    model: StringProperty(
        name="Base Model", default=DEFAULT_BASE,
        description="Hugging Face id, local diffusers folder, or single-file .safetensors checkpoint",
    )
    controlnet_depth: StringProperty(
        name="Depth ControlNet", default=DEFAULT_CONTROLNET_DEPTH, description="Hugging Face id or local folder"
    )
    controlnet_pose: StringProperty(
        name="Pose ControlNet", default=DEFAULT_CONTROLNET_POSE, description="Hugging Face id or local folder"
    )
    controlnet_normal: StringProperty(
        name="Normal ControlNet", default=DEFAULT_CONTROLNET_NORMAL,
        description="Hugging Face id or local folder; empty: normal maps are rendered (to preview) but not sent",
    )
    controlnet_lineart: StringProperty(
        name="Line Art ControlNet", default=DEFAULT_CONTROLNET_LINEART,
        description="Hugging Face id or local folder. A ControlNet 1.1 line preset (lineart, canny, mlsd) follows "
        "each shot's Line Form; empty: line maps are rendered but not sent",
    )
    controlnet_seg: StringProperty(
        name="Segmentation ControlNet", default=DEFAULT_CONTROLNET_SEG,
        description="Hugging Face id or local folder; empty: segmentation maps are rendered but not sent",
    )
    # Issue 24 (core/jobs/families.py, core/generate/shot_job.family_models; the Film panel's family block).
    model_family: EnumProperty(
        name="Model Family", items=FAMILY_ITEMS, default="SD15",
        description="What the base model is: SD 1.5, SDXL or Flux.1 (the engine checks it before loading)",
    )
    controlnet_union: StringProperty(
        name="Union ControlNet",
        description="One ControlNet for every map, each in its control mode (SDXL: xinsir/controlnet-union-sdxl-1.0; "
                    "Flux: Shakker-Labs/FLUX.1-dev-ControlNet-Union-Pro): Hub id, local folder, or a file beside "
                    "its config.json. When set, the per-map ControlNets are not used",
    )
    base_config: StringProperty(
        name="Base Config", subtype="DIR_PATH",
        description="For a single-file base model: a diffusers folder of the same family whose configs and "
                    "tokenizers build it (its weights are not read). Empty: the family's one in the Hugging Face "
                    "cache on the engine machine",
    )
    lora: StringProperty(name="LoRA", subtype="FILE_PATH", description="Optional LoRA (.safetensors)")
    lora_scale: FloatProperty(name="LoRA Scale", default=1.0, soft_min=0.0, soft_max=2.0)
    long_edge: IntProperty(
        name="Long Edge", default=512, min=64, max=4096, step=8,
        description="Generated frames' long edge in pixels; the short edge follows the scene's aspect ratio",
    )
    steps: IntProperty(name="Steps", default=20, min=1, max=150, description="Denoising steps per frame")
    guidance_scale: FloatProperty(name="Guidance", default=7.5, min=1.0, max=30.0, description="Prompt strength")
    batch_size: IntProperty(name="Batch Size", default=4, min=1, max=64, description="Frames per batch on the engine")
    generator: EnumProperty(name="Generator", items=GENERATOR_ITEMS, default="IMAGE",
                            description="How shots set to Scene Default are generated")
    video_model_preset: EnumProperty(name="Video Model", items=VIDEO_MODEL_ITEMS, default="WAN21_VACE_1_3B")
    video_model: StringProperty(
        name="Custom Video Model", description="Wan VACE: Hugging Face id or local diffusers folder (safetensors)"
    )
    motion_adapter: StringProperty(
        name="Motion Adapter", default=DEFAULT_MOTION_ADAPTER,
        description="AnimateDiff motion adapter: Hugging Face id or local folder",
    )
    video_control: EnumProperty(name="Control Video", items=VIDEO_CONTROL_ITEMS, default="DEPTH")
    video_window: IntProperty(
        name="Window", default=81, min=5, max=257,
        description="Frames per video-model call (Wan: 4k+1, 81 as trained); longer shots run in windows",
    )
    video_overlap: IntProperty(
        name="Overlap", default=8, min=1, max=64,
        description="Frames of the previous window given to the next one, so windows join without a jump",
    )
    # Draft tier (core/shot_job.draft_block; engine/models/draft.py).
    tier: EnumProperty(name="Tier", items=TIER_ITEMS, default="FINAL",
                       description="How shots set to Scene Default are generated: draft (seconds) or final")
    draft_scheduler: EnumProperty(name="Draft Method", items=DRAFT_SCHEDULER_ITEMS, default="LCM")
    draft_steps: IntProperty(name="Draft Steps", default=4, min=1, max=50, description="Denoising steps of a draft")
    draft_guidance: FloatProperty(name="Draft Guidance", default=1.0, min=0.0, max=10.0,
                                  description="Prompt strength of a draft; 1 or less turns guidance off (fastest)")
    draft_half_size: BoolProperty(name="Half Size", default=False,
                                  description="Drafts at half the long edge (control maps rendered at that size)")
    draft_tiny_vae: BoolProperty(name="Tiny VAE", default=False,
                                 description="Decode drafts with a tiny VAE (TAESD): faster, slightly softer")
    draft_lora: StringProperty(
        name="Draft LoRA", subtype="FILE_PATH",
        description="LCM/TCD LoRA: .safetensors file or Hub id; empty: the one made for the base model's family",
    )
    draft_tiny_vae_model: StringProperty(
        name="Tiny VAE Model", description="AutoencoderTiny folder or Hub id; empty: madebyollin/taesd (taesdxl)",
    )

    # The character bible and the film look (props/characters.py, core/jobs/characters.py).
    characters: CollectionProperty(type=ViewfinderCharacter)
    active_character_index: IntProperty(name="Active Character", default=0, min=0)
    style_reference: PointerProperty(
        name="Style Reference", type=bpy.types.Image,
        description="Film-wide style image: its look (not its content) applies to every shot",
    )
    style_strength: FloatProperty(
        name="Style Strength", default=0.5, min=0.0, max=2.0, soft_max=1.0,
        description="How strongly the style reference's look applies (style-only IP-Adapter scale)",
    )
    palette_reference: PointerProperty(
        name="Palette Reference", type=bpy.types.Image,
        description="Film-wide palette: every shot's colours are held to this image's",
    )
    ip_adapter: StringProperty(
        name="IP-Adapter", default=DEFAULT_IP_ADAPTER,
        description="IP-Adapter weights (.safetensors file or hub repo/path); empty: reference images are not used",
    )
    image_encoder: StringProperty(
        name="Image Encoder", default=DEFAULT_IMAGE_ENCODER,
        description="The IP-Adapter's image encoder (local folder, or hub repo[/subfolder])",
    )

    @property
    def shots(self) -> bpy.types.bpy_prop_collection:
        """The current shot list, in timeline order, each item the shot's settings.

        Brings the stored list in line with the markers first. Where Blender
        forbids writing (while drawing the UI) the stored list is returned as is.
        """
        try:
            shots_core.sync_shots(self.id_data)
        except AttributeError as exc:
            if not shots_core.write_refused(exc):
                raise
            # read-only context: a handler or timer syncs soon after
        return self.shot_list


classes = (ViewfinderPromptKey, ViewfinderShot, ViewfinderSettings)
_register_classes, _unregister_classes = bpy.utils.register_classes_factory(classes)


def register() -> None:
    props_characters.register()
    _register_classes()
    bpy.types.Scene.viewfinder = PointerProperty(type=ViewfinderSettings)


def unregister() -> None:
    del bpy.types.Scene.viewfinder
    _unregister_classes()
    props_characters.unregister()
