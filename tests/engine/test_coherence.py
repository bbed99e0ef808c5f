"""FLOW coherence: warp and masks on synthetic shots (in-process), then end to end over HTTP
with tiny random-weight models: chained cache keys, cuts, missing flow, resume after cancel,
and the take metric command."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from engine_testlib import ROOT, make_job, read_png, wait_for
from PIL import Image

from engine.coherence.flow import depth_offset, flow_masks, warp
from engine.coherence.strategies import ColorStats, match_color
from engine.metrics.take import depth_edge_correlation, measure_take, warp_error

SIZE = 64
BG_SPEED, FG_SPEED = 2, 5  # pixels per frame, to the right


# A synthetic shot: a textured backdrop panning right and a near square moving faster ----------

def depth_map(n: int, size: int = SIZE) -> np.ndarray:
    """uint16 as stored: backdrop v = 0.2, a near square (v = 0.9) that moves FG_SPEED px a frame."""
    v = np.full((size, size), 0.2, np.float32)
    x0 = 8 + FG_SPEED * n
    v[20:44, x0:x0 + 16] = 0.9
    return (1 + np.rint(v * 65534)).astype(np.uint16)


def flow_map(n: int, size: int = SIZE) -> np.ndarray:
    """Backward flow of frame n: a pixel of frame n was BG/FG_SPEED px to the left in frame n-1."""
    flow = np.zeros((size, size, 2), np.float32)
    flow[..., 0] = -BG_SPEED
    x0 = 8 + FG_SPEED * n
    flow[20:44, x0:x0 + 16, 0] = -FG_SPEED
    return flow


def texture(n: int, size: int = SIZE) -> np.ndarray:
    """What a coherent generator that follows the depth map would draw: a bright square over a
    darker backdrop, both textured, the texture moving with the flow."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    bg = 80 + 25 * np.sin((x - BG_SPEED * n) / 3.0) * np.cos(y / 4.0)
    fg = 190 + 25 * np.cos((x - FG_SPEED * n) / 2.0 + y / 3.0)
    depth = depth_map(n, size)
    value = np.where(depth > 40000, fg, bg)
    return np.clip(np.stack([value, 255 - value, value * 0.5 + 40], -1), 0, 255).astype(np.uint8)


def png16(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


# In-process: warp, masks, metric ---------------------------------------------------------------

def test_warp_carries_a_coherent_shot_and_marks_the_disocclusion() -> None:
    prev, cur = texture(1).astype(np.float32), texture(2).astype(np.float32)
    masks = flow_masks(depth_map(1), depth_map(2), flow_map(2), radius=0)
    warped, inside = warp(prev, flow_map(2))
    error = np.abs(warped - cur).mean(axis=-1)
    assert error[masks.valid].max() < 1e-3
    # The square moved 5 px right over a backdrop that moved 2: 3 columns of backdrop appear at its left.
    expected = np.zeros((SIZE, SIZE), bool)
    x0 = 8 + FG_SPEED * 2
    expected[20:44, x0 - 3:x0] = True
    assert (masks.disoccluded == expected).all()
    assert error[masks.disoccluded].mean() > 20  # plain warping is wrong exactly there
    assert (~inside[:, :BG_SPEED]).all() and masks.out_of_frame[:, :BG_SPEED].all()
    assert 0.85 < masks.carried_fraction() < 0.97
    # Without the flow, nothing lines up.
    assert np.abs(prev - cur).mean(axis=-1)[masks.valid].mean() > 5


def test_cut_and_narrow_depth_range() -> None:
    # Unrelated views: the warped depth does not match, so little is carried (a cut).
    other = np.full((SIZE, SIZE), 1 + 60000, np.uint16)
    assert flow_masks(depth_map(1), other, flow_map(2)).carried_fraction() < 0.1
    # A backdrop 20..21 units away fills v = 0..1; moving 0.5 units changes v a lot but 1/z by 2.5%:
    # with the shot's near/far the check carries it, without them it marks it (conservative).
    before = np.full((SIZE, SIZE), 1 + 20000, np.uint16)
    after = np.full((SIZE, SIZE), 1 + 36000, np.uint16)
    zero = np.zeros((SIZE, SIZE, 2), np.float32)
    assert flow_masks(before, after, zero, offset=depth_offset(20.0, 21.0)).carried_fraction() > 0.95
    assert flow_masks(before, after, zero).carried_fraction() < 0.05


def test_colour_match_and_metrics_separate_coherent_from_flicker(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    drifted = np.clip(texture(1).astype(np.float32) * 0.7 + 50, 0, 255).astype(np.uint8)
    anchor = texture(1).reshape(-1, 3).astype(np.float32)
    matched = match_color(drifted, ColorStats(anchor.mean(0), anchor.std(0)))
    assert np.abs(matched.astype(np.float32) - texture(1)).mean() < 1.5
    # A take that moves with the flow against one that is new noise every frame.
    shot = tmp_path / "Shot"
    for n in range(1, 6):
        for sub in ("depth", "flow"):
            (shot / "conditioning" / sub).mkdir(parents=True, exist_ok=True)
        Image.fromarray(depth_map(n)).save(shot / "conditioning" / "depth" / f"{n:04d}.png")
        np.save(shot / "conditioning" / "flow" / f"{n:04d}.npy", flow_map(n))
    for take, frames in (("001", [texture(n) for n in range(1, 6)]),
                         ("002", [rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8) for _ in range(5)])):
        folder = shot / "takes" / take
        folder.mkdir(parents=True)
        for n, frame in enumerate(frames, start=1):
            Image.fromarray(frame).save(folder / f"{n:04d}.png")
        (folder / "take.json").write_text(json.dumps({"shot": "Shot", "take": take,
                                                      "settings": {"coherence": {"mode": "FLOW"}}}))
    coherent, noise = measure_take(shot / "takes" / "001"), measure_take(shot / "takes" / "002")
    assert coherent.pairs == noise.pairs == 4
    assert coherent.warp_error < 0.5 and noise.warp_error > 50
    # The texture's edges sit on the square's depth edges; noise has none.
    assert coherent.depth_edge_corr > 0.3 > abs(noise.depth_edge_corr)
    assert warp_error(texture(1), texture(2), flow_map(2), depth_map(1), depth_map(2))[0] < 0.5
    assert depth_edge_correlation(texture(1), depth_map(1)) == pytest.approx(coherent.correlations[0])
    # The command: one line per take.
    result = subprocess.run([sys.executable, "-m", "engine", "--log-level", "WARNING", "metrics", str(shot)],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 2 and all("warp_error" in line and "depth_edge_corr" in line for line in lines)
    assert "Shot take 001 [FLOW]" in lines[0]


# End to end over HTTP ----------------------------------------------------------------------------

def upload(client: Any, data: bytes) -> str:
    sha = client.upload_blob(data)
    assert sha == hashlib.sha256(data).hexdigest()
    return sha


@pytest.fixture()
def shot_maps(client: Any) -> list[dict[str, Any]]:
    return [{"frame": n, "depth": upload(client, png16(depth_map(n))), "pose": None,
             "flow": upload(client, npy(flow_map(n)))} for n in range(1, 7)]


def flow_job(tiny_models: dict[str, str], frames: list[dict[str, Any]], **coherence: Any) -> dict[str, Any]:
    job = make_job(tiny_models, frames, steps=4, batch_size=4, seed=5)
    job["coherence"] = {"mode": "FLOW", "strength": 0.5, "keyframe_interval": 0, **coherence}
    return job


def frames_of(client: Any, job_id: str, numbers: list[int], tmp_path: Path) -> list[np.ndarray]:
    out = []
    for n in numbers:
        path = tmp_path / f"{job_id}-{n}.png"
        client.fetch_frame(job_id, n, path)
        out.append(read_png(path).astype(np.float32))
    return out


def test_flow_job_chains_frames_and_is_steadier_than_independent(client: Any, tiny_models: dict[str, str],
                                                                  shot_maps: list[dict[str, Any]],
                                                                  tmp_path: Path) -> None:
    numbers = [f["frame"] for f in shot_maps]
    flow_id = client.submit(flow_job(tiny_models, shot_maps))
    status = wait_for(client, flow_id)
    assert status["status"] == "done" and status["frames"] == numbers, status
    assert status["detail"]["keyframes"] == [1]
    indep = make_job(tiny_models, shot_maps, steps=4, batch_size=4, seed=5)
    indep_id = client.submit(indep)
    assert wait_for(client, indep_id)["status"] == "done"
    errors = {}
    for name, job_id in (("FLOW", flow_id), ("INDEPENDENT", indep_id)):
        images = frames_of(client, job_id, numbers, tmp_path)
        errors[name] = np.mean([warp_error(images[i - 1], images[i], flow_map(i + 1), depth_map(i), depth_map(i + 1))[0]
                                for i in range(1, len(images))])
    # Same model, seed and maps: carrying each frame along the flow flickers far less.
    assert errors["FLOW"] < 0.5 * errors["INDEPENDENT"], errors

    # Same request again: every frame from the cache. A changed frame 4 invalidates 4.. only.
    again = client.submit(flow_job(tiny_models, shot_maps))
    assert wait_for(client, again)["cached_frames"] == numbers
    changed = [dict(f) for f in shot_maps]
    changed[3]["depth"] = upload(client, png16(np.roll(depth_map(4), 3, axis=1)))
    redo = client.submit(flow_job(tiny_models, changed))
    status = wait_for(client, redo)
    assert status["status"] == "done" and status["cached_frames"] == [1, 2, 3], status


def test_cut_missing_flow_and_keyframe_interval_start_keyframes(client: Any, tiny_models: dict[str, str],
                                                                shot_maps: list[dict[str, Any]]) -> None:
    frames = [dict(f) for f in shot_maps]
    # Frame 3 is another camera: its depth has nothing to do with frame 2's (and frame 4, back on
    # the first camera, has nothing to do with frame 3's: a second cut).
    frames[2]["depth"] = upload(client, png16(np.full((SIZE, SIZE), 60001, np.uint16)))
    frames[4]["flow"] = None  # frame 5: flow missing
    status = wait_for(client, client.submit(flow_job(tiny_models, frames, strength=0.6)))
    assert status["status"] == "done" and status["detail"]["keyframes"] == [1, 3, 4, 5], status
    status = wait_for(client, client.submit(flow_job(tiny_models, shot_maps, strength=0.6, keyframe_interval=4)))
    assert status["detail"]["keyframes"] == [1, 5], status


def test_cancelled_flow_job_resumes_from_the_last_finished_frame(client: Any, tiny_models: dict[str, str],
                                                                 shot_maps: list[dict[str, Any]]) -> None:
    job = flow_job(tiny_models, shot_maps, strength=0.7)
    job["steps"] = 30  # slow enough to cancel mid-shot
    job_id = client.submit(job)
    deadline = wait_for(client, job_id, until=("running",))
    assert deadline["status"] == "running"
    while len(client.status(job_id)["frames"]) < 2:
        pass
    client.cancel(job_id)
    status = wait_for(client, job_id)
    finished = status["frames"]
    assert status["status"] == "cancelled" and 2 <= len(finished) < 6, status
    resumed = wait_for(client, client.submit(job))
    assert resumed["status"] == "done" and resumed["cached_frames"] == finished, resumed
    # The resumed frames continued the chain: none of them is a fresh keyframe.
    assert resumed["detail"]["keyframes"] == []
