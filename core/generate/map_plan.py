"""Which of a shot's normal, line-art and seg maps are rendered, and which of those are sent.

Rendered: a map whose weight is above 0 on the shot's first frame or anywhere its F-curve goes
within the shot (a driver counts as "maybe"): weight 0 means neither rendered nor sent, and a
shot with all three at 0 (the default) renders and sends exactly what it did before these maps.

Sent: a rendered map goes to the engine when the film names a ControlNet for it
(`scene.viewfinder.controlnet_normal` / `_lineart` / `_seg`) and the shot uses the Image
generator. A map without a net is still rendered, for the preview and the storyboard, and the
shot says so in a warning. This is how the demo's toy models, which have no normal or line-art
nets, keep showing the maps: the demo leaves those ControlNets empty (it sets each one to the
model folder's net where the folder has it), nothing else changes.

On SDXL and Flux.1 with a union ControlNet set (`scene.viewfinder.controlnet_union`, issue 24), the
union net serves every map its family has a control mode for: those are sent without a net of their
own; a map the family's union has no mode for (Flux.1: normal, seg) is rendered and shown, not sent,
with a warning saying why (core/jobs/families.map_why_not).

The line-art net follows the shot's Line Form when the setting holds one of ControlNet 1.1's
line presets (lineart, canny, mlsd: `request.LINEART_PRESETS`); any other id or folder is sent as
it is, whatever the form.

Main thread (reads the shot's settings and F-curves).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..conditioning.geometry_maps import KINDS, MapOptions, options_from_shot
from ..jobs.families import map_why_not
from ..jobs.request import LINEART_PRESETS
from ..scene import anim_paths
from ..scene.anim_sample import shot_prefix

if TYPE_CHECKING:
    import bpy

LABELS = {"normal": "Normal", "lineart": "Line Art", "seg": "Segmentation"}


@dataclass
class MapPlan:
    options: MapOptions  # what render_shot renders
    sent: tuple[str, ...] = ()  # the kinds that go to the engine
    models: dict[str, str] = field(default_factory=dict)  # ModelSpec fields for them: controlnet_<kind> -> id
    warnings: list[str] = field(default_factory=list)


def weight_used(scene: bpy.types.Scene, shot: Any, kind: str) -> bool:
    """True when the shot's `<kind>_weight` is above 0 now or on any frame its curve reaches in the shot."""
    if float(getattr(shot, f"{kind}_weight", 0.0)) > 0.0:
        return True
    try:
        curves = anim_paths.curves_under(scene, shot_prefix(scene, shot))
    except ValueError:  # a shot not in the list (archived): its current value is all there is
        return False
    curve = curves.get(f"{kind}_weight")
    if curve is None:
        return False
    fcurve, is_driver = curve
    return is_driver or any(fcurve.evaluate(f) > 0.0 for f in range(shot.frame_start, shot.frame_end + 1))


def lineart_net(setting: str, form: str) -> str:
    """The line-art ControlNet for a form: a ControlNet 1.1 line preset follows the form, anything else stays."""
    if setting in LINEART_PRESETS.values():
        return LINEART_PRESETS[form]
    return setting


def render_options(scene: bpy.types.Scene, shot: Any) -> MapOptions:
    """The normal / line-art / seg maps the shot renders: those whose weight is used (`weight_used`)."""
    return options_from_shot(shot, tuple(k for k in KINDS if weight_used(scene, shot, k)))


def plan_maps(scene: bpy.types.Scene, shot: Any, nets: dict[str, str], *, video: bool = False,
              family: str = "sd15", union: bool = False) -> MapPlan:
    """The shot's MapPlan (see the module docstring).

    ``nets``: the film's ControlNet per kind ("" none), paths already made absolute;
    ``video``: the shot uses the Video generator; ``family``: the request's ``models.family``;
    ``union``: a union ControlNet of the family is set, serving every map it has a mode for.
    """
    plan = MapPlan(render_options(scene, shot))
    sent = []
    for kind in plan.options.kinds:
        net = nets.get(kind, "")
        if video:
            plan.warnings.append(f"Shot '{shot.name}': {LABELS[kind]} maps are rendered but the Video generator "
                                 "takes depth or pose only: they are not sent")
        elif map_why_not(family, kind):
            plan.warnings.append(f"Shot '{shot.name}': {LABELS[kind]} maps: {map_why_not(family, kind)}")
        elif union:
            sent.append(kind)  # the union ControlNet takes it in its control mode: no net of its own
        elif not net:
            plan.warnings.append(f"Shot '{shot.name}': {LABELS[kind]} maps are rendered (Preview, storyboard) but "
                                 f"not sent: no {LABELS[kind]} ControlNet is set (Viewfinder ▸ Film)")
        else:
            sent.append(kind)
            plan.models[f"controlnet_{kind}"] = lineart_net(net, plan.options.lineart_form) if kind == "lineart" \
                else net
    plan.sent = tuple(sent)
    return plan
