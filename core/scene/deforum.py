"""Read Deforum schedules: prompt schedules and `0:(value)` value schedules. Plain Python.

Deforum (the Automatic1111 extension and its notebooks) directs an animation with
text schedules:

- prompts, `frame: prompt`, in a settings file as `"prompts"` / `"cond_prompts"` /
  `"animation_prompts"` (a JSON object or its text) or pasted as lines;
- values, `0:(0.65), 48:(0.4)`, in a settings file as `strength_schedule`,
  `cfg_scale_schedule`, `seed_schedule` and the ControlNet units' `cn_N_weight`,
  `cn_N_guidance_start`, `cn_N_guidance_end`.

`parse` takes a settings file's text, a pasted prompt schedule or a pasted value
schedule and returns a `Schedule` in Viewfinder's terms (shot property names, Deforum
frame numbers: frame 0 is the shot's first frame). Each malformed line or entry is
named in `problems` and skipped; everything else is kept. Deforum's `strength` is how
much of the previous frame is kept, so FLOW strength (how much a frame may change) is
`1 - strength`. Value expressions (`0:(0.5*sin(t))`) are not evaluated: named, skipped.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

# A settings key -> the shot property it keys (ControlNet units are matched by their model).
VALUE_KEYS = {"strength_schedule": "flow_strength", "cfg_scale_schedule": "guidance_scale", "seed_schedule": "seed"}
PROMPT_KEYS = ("prompts", "cond_prompts", "animation_prompts")
TARGETS = ("flow_strength", "guidance_scale", "seed", "depth_weight", "pose_weight", "control_start", "control_end",
           "normal_weight", "lineart_weight", "seg_weight", "normal_start", "normal_end", "lineart_start",
           "lineart_end", "seg_start", "seg_end")

_ENTRY_RE = re.compile(r"^\s*(-?\d+)\s*:\s*\((.*)\)\s*$", re.S)
_PROMPT_LINE_RE = re.compile(r"""^\s*["']?(-?\d+)["']?\s*:\s*(.*?)\s*,?\s*$""")
_VALUE_LINE_RE = re.compile(r"^\s*-?\d+\s*:\s*\(")


@dataclass
class Schedule:
    """What a Deforum schedule says, in shot terms; frames are Deforum frames (0 = the shot's first)."""

    prompts: list[tuple[int, str]] = field(default_factory=list)
    values: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.prompts and not any(self.values.values())


def parse(text: str, target: str = "flow_strength") -> Schedule:
    """A settings file (JSON), a prompt schedule or a value schedule for ``target``."""
    if target not in TARGETS:
        raise ValueError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            data = json.loads(stripped)
        except json.JSONDecodeError as exc:
            return Schedule(problems=[f"the text starts like JSON but is not valid JSON (line {exc.lineno}, column "
                                      f"{exc.colno}: {exc.msg}): fix it or paste the schedule lines alone"])
        if isinstance(data, dict) and any(k in data for k in (*PROMPT_KEYS, *VALUE_KEYS)) or \
                any(str(k).startswith("cn_") for k in (data if isinstance(data, dict) else {})):
            return parse_settings(data)
        schedule = Schedule()
        schedule.prompts = _prompt_dict(data, "the pasted prompts", schedule.problems)
        return _sorted(schedule)
    schedule = Schedule()
    lines = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip() and
             not line.strip().startswith(("#", "//"))]
    values_text = [(n, line) for n, line in lines if _VALUE_LINE_RE.match(line)]
    for n, line in lines:
        if _VALUE_LINE_RE.match(line):
            continue
        prompt = _prompt_line(line, f"line {n}", schedule.problems, schedule.notes)
        if prompt is not None:
            schedule.prompts.append(prompt)
    for n, line in values_text:
        keys = parse_values(line, f"line {n}", target, schedule.problems)
        schedule.values.setdefault(target, []).extend(keys)
    if target == "flow_strength" and schedule.values.get(target):
        schedule.notes.append("Deforum strength is how much of the previous frame is kept; FLOW strength is keyed "
                              "to 1 - strength")
    return _sorted(schedule)


def parse_values(text: str, where: str, target: str, problems: list[str]) -> list[tuple[int, float]]:
    """`0:(0.65), 48:(0.4)` -> [(0, value), (48, value)] for ``target``; bad entries named in ``problems``."""
    keys: list[tuple[int, float]] = []
    for entry in _split_entries(text):
        if not entry.strip():
            continue
        match = _ENTRY_RE.match(entry)
        if match is None:
            problems.append(f"{where}: '{entry.strip()}' is not 'frame:(value)': skipped")
            continue
        frame, raw = int(match.group(1)), match.group(2).strip()
        if frame < 0:
            problems.append(f"{where}: frame {frame} is negative: skipped (Deforum frames start at 0)")
            continue
        try:
            value = float(raw)
        except ValueError:
            problems.append(f"{where}: frame {frame}: '{raw}' is an expression, not a number: skipped (key the "
                            "value by hand or with a driver)")
            continue
        if target == "seed":
            if value < 0:
                problems.append(f"{where}: frame {frame}: seed {raw} means a random seed in Deforum: skipped (key "
                                "a fixed seed)")
                continue
            value = float(round(value))
        if target == "flow_strength":
            value = round(1.0 - value, 6)  # Deforum: share kept; FLOW: share changed
        keys.append((frame, value))
    return keys


def parse_settings(data: dict[str, Any]) -> Schedule:
    """A Deforum settings file (already loaded from JSON)."""
    schedule = Schedule()
    # 1. Prompts: the first of the known keys that is present.
    for key in PROMPT_KEYS:
        if key in data:
            value = data[key]
            if isinstance(value, str):
                try:
                    value = json.loads(value)
                except json.JSONDecodeError:
                    value = {n: line for n, line in enumerate(value.splitlines(), 1)}
                    for n, line in value.items():
                        prompt = _prompt_line(line, f"{key} line {n}", schedule.problems, schedule.notes)
                        if prompt is not None:
                            schedule.prompts.append(prompt)
                    break
            schedule.prompts = _prompt_dict(value, key, schedule.problems, schedule.notes)
            break
    for key in ("positive_prompts", "negative_prompts"):
        if str(data.get(key) or "").strip():
            schedule.notes.append(f"{key} ('{str(data[key]).strip()}') is constant text: put it in the Style prompt or "
                                  "the shot's negative prompt")
    # 2. Value schedules.
    for key, target in VALUE_KEYS.items():
        if key not in data:
            continue
        if key == "seed_schedule" and data.get("seed_behavior", "schedule") != "schedule":
            schedule.notes.append(f"seed_schedule skipped: seed_behavior is '{data.get('seed_behavior')}', not "
                                  "'schedule'")
            continue
        schedule.values[target] = parse_values(str(data[key]), key, target, schedule.problems)
        if target == "flow_strength":
            schedule.notes.append("Deforum strength is how much of the previous frame is kept; FLOW strength is "
                                  "keyed to 1 - strength")
    # 3. ControlNet units: depth and OpenPose units key the depth and pose weights and the control range;
    #    normal, line (lineart, canny, mlsd) and seg units key their map's weight and its own range.
    for unit in sorted({m.group(1) for k in data if (m := re.match(r"^cn_(\d+)_", str(k)))}):
        if data.get(f"cn_{unit}_enabled") is False:
            continue
        model = f"{data.get(f'cn_{unit}_module', '')} {data.get(f'cn_{unit}_model', '')}".lower()
        kind = unit_kind(model)
        if kind is None:
            schedule.notes.append(f"ControlNet unit {unit} ('{model.strip()}') is not depth, OpenPose, normal, "
                                  "line art or segmentation: skipped")
            continue
        start, end = ("control_start", "control_end") if kind in ("depth", "pose") else (f"{kind}_start", f"{kind}_end")
        for suffix, target in (("weight", f"{kind}_weight"), ("guidance_start", start), ("guidance_end", end)):
            key = f"cn_{unit}_{suffix}"
            if key in data:
                schedule.values[target] = parse_values(str(data[key]), key, target, schedule.problems)
    return _sorted(schedule)


def unit_kind(model: str) -> str | None:
    """The map a Deforum ControlNet unit's module/model names: "depth", "pose", "normal", "lineart", "seg" or None."""
    for kind, words in (("depth", ("depth",)), ("pose", ("pose",)), ("normal", ("normal",)),
                        ("lineart", ("lineart", "canny", "mlsd", "line")), ("seg", ("seg",))):
        if any(word in model for word in words):
            return kind
    return None


def _split_entries(text: str) -> list[str]:
    """Split on the commas between entries, not those inside parentheses."""
    entries, depth, current = [], 0, ""
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            entries.append(current)
            current = ""
        else:
            current += char
    entries.append(current)
    return entries


def _prompt_line(line: str, where: str, problems: list[str], notes: list[str] | None = None) -> tuple[int, str] | None:
    match = _PROMPT_LINE_RE.match(line)
    if match is None:
        problems.append(f"{where}: '{line.strip()}' is not 'frame: prompt': skipped")
        return None
    text = match.group(2).strip().strip("\"'").strip()
    return _prompt_entry(match.group(1), text, where, problems, notes)


def _prompt_entry(frame_text: str, text: str, where: str, problems: list[str],
                  notes: list[str] | None) -> tuple[int, str] | None:
    try:
        frame = int(str(frame_text).strip())
    except ValueError:
        problems.append(f"{where}: frame '{frame_text}' is not a whole number: skipped")
        return None
    if frame < 0:
        problems.append(f"{where}: frame {frame} is negative: skipped (Deforum frames start at 0)")
        return None
    if "--neg" in text:
        text, negative = (part.strip() for part in text.split("--neg", 1))
        if notes is not None:
            notes.append(f"{where}: the negative part ('{negative}') is not imported: put it in the shot's negative "
                         "prompt")
    if not text:
        problems.append(f"{where}: frame {frame} has an empty prompt: skipped")
        return None
    return frame, text


def _prompt_dict(value: Any, where: str, problems: list[str], notes: list[str] | None = None) -> list[tuple[int, str]]:
    if not isinstance(value, dict):
        problems.append(f"{where} is not an object of frame: prompt: skipped")
        return []
    prompts = []
    for frame_text, text in value.items():
        entry = _prompt_entry(frame_text, str(text).strip(), f"{where} \"{frame_text}\"", problems, notes)
        if entry is not None:
            prompts.append(entry)
    return prompts


def _sorted(schedule: Schedule) -> Schedule:
    """Frames in order; a frame given twice keeps the last one, with a problem naming it."""
    seen: dict[int, str] = {}
    for frame, text in schedule.prompts:
        if frame in seen:
            schedule.problems.append(f"prompt frame {frame} is given twice: the last one ('{text}') is kept")
        seen[frame] = text
    schedule.prompts = sorted(seen.items())
    for target, keys in schedule.values.items():
        schedule.values[target] = sorted(dict(keys).items())
    return schedule
