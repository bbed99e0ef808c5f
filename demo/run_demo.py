"""`make demo`: the whole job on a fresh machine, in headless Blender.

1. Build the extension with Blender's own builder and install it the way a user
   would (into a throwaway Blender user folder under demo/out/blender-user).
2. Build the demo film: a small set, two walking characters who pass each other
   in the Pan shot, three shots with different camera moves, and a sound strip
   made locally. The Orbit shot uses normal and line-art maps, the Pan shot a
   segmentation map, beside depth and pose; the storyboard shows them under the
   frames. They are sent to the engine only where the models have a net for them
   (the toy world's do not: there they are rendered and shown, not sent). The character bible holds both, with different descriptions;
   the traveller's reference image is rendered here (VIEWFINDER_DEMO_BIBLE=0
   builds the same film without the bible, for the identity comparison).
3. Generate every shot with the engine (a child process, as in the UI).
4. Write demo/out/film.blend, storyboard.png and animatic.mp4, and say where.

Models: by default the trained toy-world models (`python -m engine make-toy-models`,
engine/testing/toy/MODEL_CARD.md): offline, small, and the frames show the film's
people and blocks following each shot's camera, in the toy world's look and words.
Real models when asked: VIEWFINDER_DEMO_MODEL=... (local folders), or
VIEWFINDER_DEMO_MODELS=real (the defaults, downloaded on first use).

Model family (issue 24): `--family sd15|sdxl|flux` (or VIEWFINDER_DEMO_FAMILY; `make demo
FAMILY=sdxl`). SD 1.5 is the default and the toy world's. SDXL and Flux.1 have no toy-world models:
offline they run on the tiny random-weight models of `python -m engine make-tiny-models` (their frames
are noise: the run shows the film going end to end on that family, every map, character and take);
with VIEWFINDER_DEMO_MODEL=... and VIEWFINDER_DEMO_CONTROLNET_UNION=... (local folders), or
VIEWFINDER_DEMO_MODELS=real, on real ones. On Flux.1 the film is the same; what Flux cannot take (the
characters, the traveller's reference, normal and seg maps) is left unsent, each with the reason.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
import wave
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(os.environ.get("VIEWFINDER_DEMO_OUT") or ROOT / "demo" / "out")
# Quick mode (tests): tiny frames and one step, the same pipeline end to end.
QUICK = os.environ.get("VIEWFINDER_DEMO_QUICK") == "1"
ENGINE_PYTHON = os.environ.get("VIEWFINDER_ENGINE_PYTHON") or str(ROOT / ".venv-engine" / "bin" / "python")

# Blender reads HOME once, at import: point it at a throwaway user folder first.
_home = Path(tempfile.mkdtemp(prefix="viewfinder-demo-home-"))
os.environ["HOME"] = str(_home)
os.environ["XDG_CONFIG_HOME"] = str(_home / ".config")

import bpy  # noqa: E402

sys.path.insert(0, str(ROOT))
from demo.scene import build_demo_scene, dress, render_reference  # noqa: E402

BIBLE = os.environ.get("VIEWFINDER_DEMO_BIBLE", "1") != "0"
FAMILIES = {"sd15": "SD15", "sdxl": "SDXL", "flux": "FLUX"}  # --family -> scene.viewfinder.model_family
# VIEWFINDER_DEMO_MODELS=real on SDXL and Flux.1: each family's base model and union ControlNet.
REAL_MODELS = {"sdxl": ("stabilityai/stable-diffusion-xl-base-1.0", "xinsir/controlnet-union-sdxl-1.0"),
               "flux": ("black-forest-labs/FLUX.1-dev", "Shakker-Labs/FLUX.1-dev-ControlNet-Union-Pro")}
CAST = {
    # character name: (armature, description, coat colour)
    "Traveller": ("Hero", "a tall young woman with short black hair in a long red coat", (0.7, 0.08, 0.05, 1.0)),
    "Stranger": ("Stranger", "an old man with a grey beard in a dark green suit and a flat cap",
                 (0.1, 0.3, 0.12, 1.0)),
}
# The same film in the toy world's words (engine/testing/toy/vocab.py): what its models know.
TOY_CAST = {"Traveller": "a red person", "Stranger": "a green person"}
TOY_PROMPTS = {
    "Dolly": "a red person and a white cube on tiles under a blue sky",
    "Pan": "a red person, a green person and a white cube on tiles under a blue sky",
    "Orbit": "a red person and a white cube on tiles under a sunset sky",
}


def say(text: str) -> None:
    print(f"[demo] {text}", flush=True)


def install_extension() -> str:
    cli = Path(bpy.utils.system_resource("SCRIPTS")) / "addons_core" / "bl_pkg" / "cli" / "blender_ext.py"
    build = Path(tempfile.mkdtemp(prefix="viewfinder-build-"))
    zip_path = build / "viewfinder.zip"
    subprocess.run([sys.executable, str(cli), "build", "--source-dir", str(ROOT), "--output-filepath", str(zip_path)],
                   check=True, stdout=subprocess.DEVNULL)
    result = bpy.ops.extensions.package_install_files(repo="user_default", filepath=str(zip_path), enable_on_install=True)
    if result != {"FINISHED"}:
        raise SystemExit("Installing the extension into Blender failed")
    say(f"installed {zip_path.name} into headless Blender {bpy.app.version_string}")
    return "bl_ext.user_default.viewfinder"


def hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def choose_models(settings, family: str) -> bool:
    """Set the scene's model family and models; True when they are real, False for the toy-world models
    (SD 1.5) or the tiny random-weight ones (SDXL, Flux.1)."""
    settings.model_family = FAMILIES[family]
    override = os.environ.get("VIEWFINDER_DEMO_MODEL")
    if override:
        settings.model = override
        settings.controlnet_depth = os.environ.get("VIEWFINDER_DEMO_CONTROLNET_DEPTH", settings.controlnet_depth)
        settings.controlnet_pose = os.environ.get("VIEWFINDER_DEMO_CONTROLNET_POSE", settings.controlnet_pose)
        for kind in ("normal", "lineart", "seg"):  # local folders only: unnamed, the map is shown, not sent
            setattr(settings, f"controlnet_{kind}", os.environ.get(f"VIEWFINDER_DEMO_CONTROLNET_{kind.upper()}", ""))
        settings.controlnet_union = os.environ.get("VIEWFINDER_DEMO_CONTROLNET_UNION", "")
        say(f"using the models you named: {settings.model}")
        return True
    if os.environ.get("VIEWFINDER_DEMO_MODELS") == "real":
        if not hub_reachable():
            raise SystemExit("VIEWFINDER_DEMO_MODELS=real needs the Hugging Face Hub, which cannot be reached: "
                             "name local folders with VIEWFINDER_DEMO_MODEL=..., or leave it unset for the toy world")
        if family in REAL_MODELS:
            settings.model, settings.controlnet_union = REAL_MODELS[family]
        say(f"using the default models (downloaded on first use): {settings.model}")
        return True
    if family != "sd15":
        use_tiny_models(settings, family)
        return False
    toy = OUT / "toy-models"
    subprocess.run([ENGINE_PYTHON, "-m", "engine", "make-toy-models", str(toy)], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL)
    settings.model = str(toy / "sd15")
    settings.controlnet_depth = str(toy / "controlnet-depth")
    settings.controlnet_pose = str(toy / "controlnet-pose")
    settings.ip_adapter = ""  # the toy world has no IP-Adapter: references stay in the bible, unsent
    # Normal, line-art and seg nets where the model folder has them (tiny models do, the toy world's do not):
    # without a net the shots still render those maps (storyboard, Preview) and send depth and pose only.
    missing = []
    for kind in ("normal", "lineart", "seg"):
        net = toy / f"controlnet-{kind}"
        setattr(settings, f"controlnet_{kind}", str(net) if net.is_dir() else "")
        if not net.is_dir():
            missing.append(kind)
    if missing:
        say(f"the toy world has no {', '.join(missing)} ControlNet: those maps are rendered and shown, not sent")
    say("using the toy-world models (engine/testing/toy/MODEL_CARD.md): trained here on shapes and mannequins,")
    say("         64-pixel frames in the toy world's look, prompts in its words. For real frames, point the demo")
    say("         at local models: VIEWFINDER_DEMO_MODEL=/path/to/sd15 VIEWFINDER_DEMO_CONTROLNET_DEPTH=/path/to/depth "
        "VIEWFINDER_DEMO_CONTROLNET_POSE=/path/to/openpose make demo (or VIEWFINDER_DEMO_MODELS=real online)")
    return False


def use_tiny_models(settings, family: str) -> None:
    """SDXL or Flux.1 offline: the tiny random-weight models of make-tiny-models, with the family's union
    ControlNet (every map it has a mode for) and, on SDXL, its IP-Adapter for the traveller's reference."""
    given = os.environ.get("VIEWFINDER_DEMO_TINY_MODELS")  # the tests' own, made once per session
    tiny = Path(given) if given else OUT / "tiny-models"
    if not given:
        subprocess.run([ENGINE_PYTHON, "-m", "engine", "make-tiny-models", str(tiny)], cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL)
    settings.model = str(tiny / family)
    settings.controlnet_union = str(tiny / f"controlnet-union-{family}")
    for kind in ("normal", "lineart", "seg"):  # the union net serves them: no net of their own
        setattr(settings, f"controlnet_{kind}", "")
    if family == "sdxl":
        settings.ip_adapter = str(tiny / "ip-adapter-sdxl" / "ip-adapter.safetensors")
        settings.image_encoder = str(tiny / "ip-adapter-sdxl" / "image-encoder")
    say(f"using the tiny random-weight {settings.model_family} models (python -m engine make-tiny-models): "
        "no toy world for this family, so the frames are noise; the film runs end to end on it. For real frames: "
        f"VIEWFINDER_DEMO_MODEL=/path/to/{family} VIEWFINDER_DEMO_CONTROLNET_UNION=/path/to/union make demo "
        f"FAMILY={family}")


def use_exact_maps(settings) -> None:
    """Beyond depth and pose: the Orbit shot holds the buildings with normals and line art, the Pan shot
    gets a segmentation map (a class per object: buildings, people, the floor)."""
    orbit, pan = settings.shots["Orbit"], settings.shots["Pan"]
    orbit.normal_weight, orbit.lineart_weight = 0.8, 0.8
    orbit.lineart_form, orbit.line_weight = "LINEART", 1
    pan.seg_weight = 0.6
    say("exact maps: Orbit uses normal + line art, Pan a segmentation map (see the storyboard's map rows)")


def write_tone(path: Path, seconds: float, rate: int = 48000) -> None:
    """A soft two-note score, made here: the demo needs no downloaded audio."""
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        samples = bytearray()
        for i in range(int(seconds * rate)):
            t = i / rate
            freq = 220.0 if int(t) % 2 == 0 else 277.18
            samples += struct.pack("<h", int(6000 * math.sin(2 * math.pi * freq * t) * min(1.0, 4 * (t % 1.0))))
        out.writeframes(bytes(samples))


def add_cast(scene, toy: bool) -> None:
    """The character bible: both characters, and the traveller's reference rendered here."""
    for rig_name, _description, colour in CAST.values():
        dress(bpy.data.objects[rig_name], colour)
    if not BIBLE:
        say("no character bible (VIEWFINDER_DEMO_BIBLE=0): the comparison run")
        return
    for name, (rig_name, description, _colour) in CAST.items():
        rig = bpy.data.objects[rig_name]
        bpy.ops.object.select_all(action="DESELECT")
        rig.select_set(True)
        bpy.context.view_layer.objects.active = rig
        if bpy.ops.viewfinder.add_character() != {"FINISHED"}:
            raise SystemExit(f"Adding the character {name} failed: see the messages above")
        character = scene.viewfinder.characters[rig_name]
        character.name = name
        character.description = TOY_CAST[name] if toy else description
    reference = render_reference(bpy.data.objects["Hero"], OUT / "traveller-reference.png")
    scene.viewfinder.active_character_index = list(scene.viewfinder.characters.keys()).index("Traveller")
    if bpy.ops.viewfinder.add_reference(filepath=str(reference)) != {"FINISHED"}:
        raise SystemExit("Adding the traveller's reference failed: see the messages above")
    say(f"character bible: {', '.join(scene.viewfinder.characters.keys())}; the traveller's reference: {reference}")


def main(family: str) -> int:
    started = time.time()
    if OUT.exists():
        for name in ("film.blend", "film.blend1", "storyboard.png", "animatic.mp4", "viewfinder",
                     "traveller-reference.png"):
            target = OUT / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    OUT.mkdir(parents=True, exist_ok=True)
    if not Path(ENGINE_PYTHON).is_file() and not os.environ.get("VIEWFINDER_ENGINE_URL"):
        raise SystemExit(f"No engine interpreter at {ENGINE_PYTHON}: run `make demo` (it sets one up)")
    os.environ.setdefault("VIEWFINDER_ENGINE_PYTHON", ENGINE_PYTHON)

    # 1. The extension, installed as a user would.
    install_extension()

    # 2. The film.
    bpy.ops.wm.read_homefile(use_empty=True)
    scene = bpy.context.scene
    build_demo_scene(scene)
    settings = scene.viewfinder
    real = choose_models(settings, family)
    toy = not real and family == "sd15"
    # The toy models were trained on 64-pixel squares; 112 is the long edge whose 16:9 short edge
    # reaches the engine's 64-pixel minimum (the tiny models' too). Real SDXL and Flux.1: their 1024.
    settings.long_edge = (768 if family == "sd15" else 1024) if real else 112
    # Quick mode (tests): four steps on the toy world, two on the tiny models (whose frames are noise anyway).
    settings.steps = 20 if real else (20 if not QUICK else 4 if toy else 2)
    settings.batch_size = 4
    if real:
        settings.style_prompt = "cinematic still, overcast light, muted colours, 35mm film grain"
    else:
        settings.guidance_scale = 5.0
    add_cast(scene, toy=toy)
    prompts = TOY_PROMPTS if toy else {
        "Dolly": "a lone traveller walks down an empty street between old brick buildings",
        "Pan": "the street seen from the corner, the traveller and a stranger pass each other, shop signs",
        "Orbit": "close on the traveller, buildings behind, dramatic sky",
    }
    for shot in settings.shots:
        shot.prompt = prompts.get(shot.name, "a street at dusk")
        shot.negative_prompt = "" if toy else "blurry, deformed, text, watermark"
        shot.coherence = os.environ.get("VIEWFINDER_DEMO_COHERENCE", "FLOW")
    use_exact_maps(settings)
    film = OUT / "film.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(film))
    scene = bpy.context.scene
    fps = scene.render.fps / scene.render.fps_base
    tone = OUT / "score.wav"
    write_tone(tone, (scene.frame_end - scene.frame_start + 1) / fps)
    editor = scene.sequence_editor_create()
    strips = editor.strips if hasattr(editor, "strips") else editor.sequences
    try:
        strips.new_sound(name="Score", filepath=bpy.path.relpath(str(tone)), channel=1, frame_start=scene.frame_start)
    except RuntimeError as exc:  # some bpy builds lack audio support
        say(f"no sound strip: {exc}")
    say(f"built the demo film: {len(settings.shots)} shots, frames {scene.frame_start}–{scene.frame_end}")
    for shot in settings.shots:
        say(f"  {shot.name}: frames {shot.frame_start}–{shot.frame_end}, camera {shot.camera.name}")

    # 3. Generate every shot.
    if bpy.ops.viewfinder.generate(shot="") != {"FINISHED"}:
        raise SystemExit("Generation failed: see the messages above")
    bpy.ops.wm.save_mainfile()

    # 4. Storyboard and animatic.
    if bpy.ops.viewfinder.export_storyboard(filepath=str(OUT / "storyboard.png")) != {"FINISHED"}:
        raise SystemExit("The storyboard export failed: see the messages above")
    if bpy.ops.viewfinder.export_animatic(filepath=str(OUT / "animatic.mp4")) != {"FINISHED"}:
        raise SystemExit("The animatic export failed: see the messages above")

    say(f"done in {time.time() - started:.0f} s")
    for name in ("film.blend", "storyboard.png", "animatic.mp4"):
        say(f"  {OUT / name}")
    if not real:
        say(f"({'toy-world' if toy else 'tiny random-weight'} models: see above for how to use real models)")
    return 0


def parse_family(argv: list[str]) -> str:
    parser = argparse.ArgumentParser(description="Build the demo film and generate every shot (make demo).")
    parser.add_argument("--family", choices=sorted(FAMILIES),
                        default=os.environ.get("VIEWFINDER_DEMO_FAMILY") or "sd15",
                        help="the image model family (default sd15: the toy-world models; sdxl, flux: tiny models "
                             "offline, or the ones VIEWFINDER_DEMO_MODEL names)")
    return parser.parse_args(argv).family


if __name__ == "__main__":
    code = main(parse_family(sys.argv[1:]))
    # Stop the engine child before Blender's module shuts down.
    bpy.ops.preferences.addon_disable(module="bl_ext.user_default.viewfinder")
    sys.exit(code)
