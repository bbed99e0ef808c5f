"""Bounds on what one request may ask of the engine, so no input can take it down.

Every number here is documented in docs/shared-engine.md ("Running a shared engine") and engine/API.md.
They are chosen so that a real GPU (24 to 80 GB) can serve any request that passes:
the largest batch is bounded in pixels, not only in frames, and a control map must
have exactly the job's size, so a small file can never decode to a huge array.
"""

from __future__ import annotations

import io
import logging
import struct
from typing import TYPE_CHECKING

from ..contract.errors import BadRequest, EngineFault

if TYPE_CHECKING:
    from ..contract.schema import JobRequest

logger = logging.getLogger(__name__)

# Bodies --------------------------------------------------------------------------
MAX_JSON_BYTES = 8 * 1024 * 1024  # POST /jobs and every other JSON body
MAX_BLOB_BYTES = 64 * 1024 * 1024  # PUT /blobs: a 4096 x 4096 x 2 float32 flow is 128 MiB, see MAX_SIDE
# Jobs ------------------------------------------------------------------------------
MAX_SIDE = 4096  # width and height (the add-on's Long Edge goes to 4096)
MAX_BATCH_PIXELS = 64 * 512 * 512  # batch_size x width x height: 64 at 512², 4 at 2048², 1 at 4096²
MAX_STEPS = 150
MAX_FRAMES = 10_000  # frames per job
MAX_PROMPT_CHARS = 4000  # each of prompt, style_prompt, negative_prompt (CLIP reads 77 tokens of it)
MAX_SHOT_CHARS = 200
MAX_ACTIVE_JOBS_PER_TOKEN = 16  # queued + running jobs of one token
MAX_STATUS_IDS = 100  # job ids in one GET /jobs?ids=...
QUOTA_RETRY_AFTER_S = 1  # Retry-After of a 429 queue_full: a job of the token may end any moment
# Cache ------------------------------------------------------------------------------
DEFAULT_CACHE_QUOTA_BYTES = 20 * 1024**3  # blobs + frames; least recently used are evicted past it



def published(job_quota: int, jobs_active: int) -> dict[str, int]:
    """The engine's limits as ``GET /limits`` publishes them to a client (engine/API.md): the
    token's job quota and how much of it is used, and the bounds a request must keep."""
    return {"job_quota": job_quota, "jobs_active": jobs_active, "retry_after_s": QUOTA_RETRY_AFTER_S,
            "max_side": MAX_SIDE, "max_batch_pixels": MAX_BATCH_PIXELS, "max_steps": MAX_STEPS,
            "max_frames": MAX_FRAMES, "max_prompt_chars": MAX_PROMPT_CHARS, "max_shot_chars": MAX_SHOT_CHARS,
            "max_status_ids": MAX_STATUS_IDS, "max_json_bytes": MAX_JSON_BYTES, "max_blob_bytes": blob_limit()}


# A flow blob may be a little larger than a 4096² one; see blob_limit().
_NPY_HEADER_SLACK = 4096


class TooLarge(EngineFault):
    def __init__(self, message: str, field: str = "body") -> None:
        super().__init__(message, code="body_too_large", status=413, field=field)


def blob_limit() -> int:
    """The largest blob accepted: enough for a flow map at MAX_SIDE x MAX_SIDE."""
    return max(MAX_BLOB_BYTES, MAX_SIDE * MAX_SIDE * 2 * 4 + _NPY_HEADER_SLACK)


# A frame object has at most 21 keys and 5 more in its control_ranges (schema.FrameSpec); room to spare.
KEYS_PER_FRAME = 40
KEYS_BESIDE_FRAMES = 1024  # the request's own, models, characters, video, finalize, draft


def check_key_count(body: bytes) -> None:
    """Refuse a JSON body with far more object keys than any request of its frames has, before
    it is parsed: 700k unknown keys cost the parser and the validator seconds of CPU (holding
    the interpreter) to refuse, this ten milliseconds. Counts ``":`` outside escapes, so keys."""
    keys = body.count(b'":') - body.count(b'\\":')
    frames = body.count(b'"frame":')
    most = KEYS_PER_FRAME * (frames + 1) + KEYS_BESIDE_FRAMES
    if keys > most:
        raise EngineFault(f"body: {keys} keys, far more than a request of {frames} frames has (at most {most}); "
                          "unknown keys are refused", code="invalid_field", status=422, field="body")


def check_request(request: JobRequest) -> None:
    """Refuse a job past any bound, naming the field (400 ``limit_exceeded``)."""

    def refuse(field: str, message: str) -> BadRequest:
        return BadRequest(f"{field}: {message}", field=field, code="limit_exceeded")

    for name in ("width", "height"):
        if getattr(request, name) > MAX_SIDE:
            raise refuse(name, f"{getattr(request, name)} is larger than the engine's limit of {MAX_SIDE} pixels")
    if request.steps > MAX_STEPS:
        raise refuse("steps", f"{request.steps} is more than the engine's limit of {MAX_STEPS} steps")
    batch_pixels = request.batch_size * request.width * request.height
    if batch_pixels > MAX_BATCH_PIXELS:
        most = max(1, MAX_BATCH_PIXELS // (request.width * request.height))
        raise refuse("batch_size", f"{request.batch_size} frames of {request.width}x{request.height} at once is "
                     f"more than the engine serves; use a batch size of at most {most} at this size")
    if len(request.frames) > MAX_FRAMES:
        raise refuse("frames", f"{len(request.frames)} frames in one job; the limit is {MAX_FRAMES}: split the "
                     "shot into several jobs")
    # Every text that becomes a prompt: the shot's, each prompt-travel key, each character's.
    texts = [(name, getattr(request, name)) for name in ("prompt", "style_prompt", "negative_prompt")]
    texts += [(f"prompt_keys[{i}]", key) for i, key in enumerate(request.prompt_keys)]
    for i, character in enumerate(request.characters):
        texts += [(f"characters[{i}].description", character.description),
                  (f"characters[{i}].trigger_words", character.trigger_words)]
    for name, text in texts:
        if len(text) > MAX_PROMPT_CHARS:
            raise refuse(name, f"{len(text)} characters; the limit is {MAX_PROMPT_CHARS} "
                         "(the model reads only the first 77 tokens)")
    if len(request.shot) > MAX_SHOT_CHARS:
        raise refuse("shot", f"the shot name has {len(request.shot)} characters; the limit is {MAX_SHOT_CHARS}")


# Map headers: the size of a control map, read without decoding it ---------------------------


def png_size(head: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR, or None when ``head`` is not a PNG."""
    if len(head) < 24 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", head[16:24])
    return int(width), int(height)


def npy_header(head: bytes) -> tuple[tuple[int, ...], str] | None:
    """(shape, dtype string) of a ``.npy`` file from its header, or None when it is not one."""
    import numpy as np

    try:
        f = io.BytesIO(head)
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    except (ValueError, OSError, EOFError, SyntaxError):
        return None
    if fortran or dtype.hasobject:
        return None
    return tuple(int(s) for s in shape), dtype.str


HEADER_BYTES = 4096


def check_map(head: bytes, kind: str, width: int, height: int, field: str) -> None:
    """Refuse a control map whose pixel size is not the job's, before anything decodes it.

    Depth and pose maps are PNGs of exactly width x height; a flow map is the ``.npy``
    the add-on writes: float32 height x width x 2. ``.npz`` and other formats are refused
    (a small ``.npz`` can unpack to hundreds of MB).
    """
    if kind in ("depth", "pose"):
        size = png_size(head)
        if size is None:
            raise BadRequest(f"{field}: the {kind} map is not a PNG; render the shot's control maps again",
                             field=field, code="bad_map")
        if size != (width, height):
            raise BadRequest(f"{field}: the {kind} map is {size[0]}x{size[1]} pixels but the job is "
                             f"{width}x{height}; render the control maps at the job's size", field=field,
                             code="map_size_mismatch")
        return
    header = npy_header(head)
    if header is None:
        raise BadRequest(f"{field}: the flow map is not a .npy array (the engine reads only the float32 "
                         "H x W x 2 .npy files the add-on writes; .npz and others are refused)", field=field,
                         code="bad_map")
    shape, dtype = header
    import numpy as np

    if shape != (height, width, 2) or np.dtype(dtype).kind != "f":
        raise BadRequest(f"{field}: the flow map is {dtype} {list(shape)} but the job needs float32 "
                         f"[{height}, {width}, 2]; render the control maps at the job's size", field=field,
                         code="map_size_mismatch")
