"""Takes on disk: `//viewfinder/<shot>/takes/<NNN>/NNNN.png` plus `take.json`.

A take folder is created when its first frame arrives and `take.json` is
rewritten (atomically) as frames land, so a cancelled or crashed take keeps
what it finished and says so (`"complete": false`). Plain Python: any thread.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .paths import atomic_write_bytes, file_names, frame_name, next_take_index, take_name

logger = logging.getLogger(__name__)

TAKE_FILE = "take.json"
FORMAT_VERSION = 1

# A take's tier (take.json "tier"; docs/user-guide.md "Drafts"): how its frames were made.
DRAFT = "draft"  # the few-step distilled generation path (engine/models/draft.py)
FINAL = "final"  # the full generation path
FINALIZED = "finalized"  # Finalize Take: a take enlarged and re-detailed (core/jobs/finalize.py)
TIERS = (DRAFT, FINAL, FINALIZED)


@dataclass
class TakeInfo:
    shot: str
    take: str  # "001"
    prompt: str
    style_prompt: str
    negative_prompt: str
    seed: int
    models: dict[str, Any]
    settings: dict[str, Any]
    control_hash: str  # hash of the control maps the take followed
    request_hash: str  # hash of everything that decides the frames
    frames_total: list[int]
    frames_done: list[int] = field(default_factory=list)
    complete: bool = False
    cancelled: bool = False
    error: str = ""
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%d %H:%M:%S"))
    engine: str = ""
    format: int = FORMAT_VERSION
    # What the engine adjusted (VIDEO: padding a short shot, rounding the size), for the user.
    notes: list[str] = field(default_factory=list)
    # The characters sent with the take: [{"name", "mask_ids"}]; the identity metric crops them by mask.
    characters: list[dict[str, Any]] = field(default_factory=list)
    tier: str = ""  # DRAFT, FINAL or FINALIZED; read it with take_tier() (older files: "" or "final")

    def file_names(self) -> list[str]:
        return [frame_name(f) for f in sorted(self.frames_done)]


def take_tier(info: TakeInfo | None) -> str:
    """The take's tier, also for take.json files written before generation had tiers.

    Those have "" (a generated take: the full path) or "final" for a Finalize Take take,
    which records its source take in ``settings`` ("finalized" now).
    """
    if info is None:
        return ""
    if info.tier in (DRAFT, FINALIZED):
        return info.tier
    if "finalize" in info.settings or "source_take" in info.settings:
        return FINALIZED
    return FINAL


def request_hash(control_hash: str, models: dict[str, Any], prompts: dict[str, Any], settings: dict[str, Any]) -> str:
    """Everything that decides a take's frames, hashed: equal hashes mean an identical take.

    `settings` carries the characters block and the film look's references
    (core/scene/characters.py) when a shot has them, so they are hashed too.
    """
    canonical = json.dumps(
        {"control": control_hash, "models": models, "prompts": prompts, "settings": settings},
        sort_keys=True, separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def new_take_dir(takes_dir: Path) -> Path:
    """Reserve the next take folder (mkdir is atomic: two Blenders never share one)."""
    takes_dir.mkdir(parents=True, exist_ok=True)
    while True:
        candidate = takes_dir / take_name(next_take_index(takes_dir))
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue


def write_take(take_dir: Path, info: TakeInfo) -> None:
    atomic_write_bytes(take_dir / TAKE_FILE, json.dumps(asdict(info), indent=2).encode("utf-8"))


# The JSON type each take.json field must have; a file edited by hand or by another tool
# with a wrong type is ignored (logged), never a traceback in the middle of a generate.
_FIELD_TYPES: dict[str, type | tuple[type, ...]] = {
    "shot": str, "take": str, "prompt": str, "style_prompt": str, "negative_prompt": str, "seed": int,
    "models": dict, "settings": dict, "control_hash": str, "request_hash": str, "frames_total": list,
    "frames_done": list, "complete": bool, "cancelled": bool, "error": str, "created": str, "engine": str,
    "format": int, "tier": str,
}


def _type_problem(data: dict[str, Any]) -> str | None:
    for key, value in data.items():
        expected = _FIELD_TYPES.get(key)
        if expected is None:
            continue
        if expected is int and isinstance(value, bool) or not isinstance(value, expected):
            return f"'{key}' is {type(value).__name__}"
        if key in ("frames_total", "frames_done") and not all(
                isinstance(f, int) and not isinstance(f, bool) for f in value):
            return f"'{key}' holds something other than frame numbers"
    return None


def read_take(take_dir: Path) -> TakeInfo | None:
    """The take's metadata, or None when the folder holds no readable take.json."""
    try:
        data = json.loads((take_dir / TAKE_FILE).read_text("utf-8"))
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        problem = _type_problem(data)
        if problem is not None:
            raise ValueError(problem)
        known = {k: v for k, v in data.items() if k in TakeInfo.__dataclass_fields__}
        return TakeInfo(**known)
    except OSError:
        return None
    except (ValueError, TypeError) as exc:
        logger.warning("Ignoring %s: %s", take_dir / TAKE_FILE, exc)
        return None


def is_take_folder_name(name: str) -> bool:
    """'001', '1000': ASCII digits only ('١٢' is a digit to str.isdigit but not a take)."""
    return name.isascii() and name.isdigit()


def list_takes(takes_dir: Path) -> list[tuple[Path, TakeInfo]]:
    """The takes of a shot, oldest first by number ('999' before '1000')."""
    if not takes_dir.is_dir():
        return []
    found = []
    folders = [p for p in takes_dir.iterdir() if p.is_dir() and is_take_folder_name(p.name)]
    for folder in sorted(folders, key=lambda p: (int(p.name), p.name)):
        info = read_take(folder)
        if info is not None:
            found.append((folder, info))
    return found


def find_complete_take(takes_dir: Path, wanted_hash: str) -> tuple[Path, TakeInfo] | None:
    """An existing complete take made from exactly the same request, with all its frames on disk."""
    for folder, info in reversed(list_takes(takes_dir)):
        if info.complete and info.request_hash == wanted_hash:
            present = file_names(folder)
            if all(frame_name(f) in present for f in info.frames_total):
                return folder, info
    return None


def find_resumable_take(takes_dir: Path, wanted_hash: str) -> tuple[Path, TakeInfo] | None:
    """The newest unfinished take of the same request: generation continues it instead of starting over."""
    for folder, info in reversed(list_takes(takes_dir)):
        if not info.complete and info.request_hash == wanted_hash:
            return folder, info
    return None
