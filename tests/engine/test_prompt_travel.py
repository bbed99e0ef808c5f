"""Prompt travel and per-frame values through a real engine process.

The travel is generated on the session engine and the single-prompt shots on a second
engine with an empty cache, so "the first frame is prompt A alone" is checked on
pixels that were really generated twice, not on a cache hit.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from engine_testlib import depth_png, make_job, read_png, start_local_engine, wait_for

pytestmark = pytest.mark.engine

N = 6


@pytest.fixture(scope="module")
def fresh_client(core: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    local = start_local_engine(core, tmp_path_factory.mktemp("fresh-engine"))
    yield local.client(timeout=30)
    local.stop()


def shot(client: Any) -> list[dict[str, Any]]:
    return [{"frame": 11 + i, "depth": client.upload_blob(depth_png(i / (N - 1)))} for i in range(N)]


def travel(frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A cross-fade from key 0 to key 1 over the shot."""
    return [{**f, "prompt_weights": [round(1 - i / (N - 1), 4), round(i / (N - 1), 4)]} for i, f in enumerate(frames)]


def run(client: Any, job: dict[str, Any], tmp_path: Path) -> tuple[dict[str, Any], dict[int, np.ndarray]]:
    answer = client.submit_full(job)
    status = wait_for(client, answer["id"])
    assert status["status"] == "done", status
    status["submitted_cached"] = answer["cached_frames"]
    images = {f: read_png(client.fetch_frame(status["id"], f, str(tmp_path / f"{status['id']}-{f}.png")))
              for f in status["frames"]}
    return status, images


def test_cross_fade_ends_on_each_prompt_alone_and_edits_regenerate_only_their_frames(
        client: Any, fresh_client: Any, tiny_models: dict[str, str], tmp_path: Path) -> None:
    frames = shot(client)
    keys = ["a quiet street at night", "the street in flames"]
    job = make_job({**tiny_models, "pose": None}, travel(frames), prompt="unused shot prompt", prompt_keys=keys,
                   seed=1313, batch_size=4)
    status, images = run(client, job, tmp_path)
    assert status["submitted_cached"] == [] and status["warnings"] == []

    fresh_frames = shot(fresh_client)
    alone = {}
    for name, prompt in (("a", keys[0]), ("b", keys[1])):
        plain = {**job, "prompt": prompt, "frames": fresh_frames}
        del plain["prompt_keys"]
        alone[name] = run(fresh_client, plain, tmp_path)[1]
    first, last = 11, 10 + N
    assert np.array_equal(images[first], alone["a"][first])
    assert np.array_equal(images[last], alone["b"][last])
    for middle in range(first + 1, last):
        # Random-weight text encoders move pixels only a little: any real difference counts.
        assert np.abs(images[middle].astype(int) - alone["a"][middle]).mean() > 0.05, middle
        assert np.abs(images[middle].astype(int) - alone["b"][middle]).mean() > 0.05, middle
    # The travel moves away from A step by step: frame-to-A distance grows along the shot.
    distance = [np.abs(images[f].astype(int) - alone["a"][f]).mean() for f in range(first, last + 1)]
    assert distance[0] == 0.0 and distance[-1] > distance[1]

    # Edit one key (frame 13's weights): only that frame is generated again.
    edited = [dict(f) for f in job["frames"]]
    edited[2]["prompt_weights"] = [0.1, 0.9]
    status2, images2 = run(client, {**job, "frames": edited}, tmp_path)
    assert status2["submitted_cached"] == [11, 12, 14, 15, 16]
    assert not np.array_equal(images2[13], images[13])
    assert all(np.array_equal(images2[f], images[f]) for f in (11, 12, 14, 15, 16))


def test_per_frame_weight_seed_and_flow_chain(client: Any, tiny_models: dict[str, str], tmp_path: Path) -> None:
    frames = shot(client)
    base = make_job(tiny_models, frames, seed=77, batch_size=3)
    status, images = run(client, base, tmp_path)
    # Frame 12's own depth weight and frame 14's own seed change those frames only.
    own = [dict(f) for f in frames]
    own[1]["depth_weight"] = 0.0
    own[3]["seed"] = 78
    status2, images2 = run(client, {**base, "frames": own}, tmp_path)
    assert status2["submitted_cached"] == [11, 13, 15, 16]
    assert not np.array_equal(images2[12], images[12]) and not np.array_equal(images2[14], images[14])
    # A frame that repeats the job's value is the same frame (a cache hit).
    same = [{**f, "depth_weight": 1.0, "seed": 77} for f in frames]
    assert client.submit_full({**base, "frames": same})["status"] == "done"

    # FLOW: the keys chain, so a changed strength on frame 13 regenerates 13 and everything after.
    flow = {**base, "coherence": {"mode": "FLOW", "strength": 0.5}, "seed": 79}
    status3, _ = run(client, flow, tmp_path)
    stronger = [dict(f) for f in frames]
    stronger[2]["strength"] = 0.9
    status4, _ = run(client, {**flow, "frames": stronger}, tmp_path)
    assert status4["submitted_cached"] == [11, 12]


def test_zero_weights_warn_and_bad_per_frame_fields_are_named(client: Any, tiny_models: dict[str, str],
                                                              tmp_path: Path) -> None:
    frames = shot(client)[:3]
    weights = [[1.0, 0.0], [0.0, 0.0], [0.0, 0.0]]
    job = make_job(tiny_models, [{**f, "prompt_weights": w} for f, w in zip(frames, weights)],
                   prompt_keys=["a", "b"], seed=4242)
    status, images = run(client, job, tmp_path)
    assert status["warnings"] == [
        "frames 12-13: every prompt key's weight is 0, so these frames use the shot prompt; key a weight above 0 "
        "there to keep the prompt travel going"]
    # The fallback frames are the shot prompt's frames.
    plain = {k: v for k, v in job.items() if k != "prompt_keys"}
    plain["frames"] = frames
    answer = client.submit_full(plain)
    assert 12 in answer["cached_frames"] and 13 in answer["cached_frames"]

    from vf_core_under_test.client.http import EngineError

    for frame_fields, field in (({"prompt_weights": [1.0]}, "has 1 weights"),
                                ({"depth_weight": 3.0}, "frames[0].depth_weight"),
                                ({"seed": -1}, "frames[0].seed")):
        bad = {**job, "frames": [{**frames[0], **frame_fields}]}
        with pytest.raises(EngineError, match=field.replace("[", r"\[").replace("]", r"\]")):
            client.submit(bad)


def test_prompt_travel_under_flow_carries_blended_frames(client: Any, tiny_models: dict[str, str],
                                                          tmp_path: Path) -> None:
    """FLOW frames after the first are img2img from the warped previous frame, with blended embeddings."""
    from test_coherence import depth_map as moving_depth
    from test_coherence import flow_map, npy, png16

    frames = [{"frame": n, "depth": client.upload_blob(png16(moving_depth(n))),
               "flow": client.upload_blob(npy(flow_map(n))) if n > 1 else None} for n in range(1, 5)]
    flow = make_job({**tiny_models, "pose": None}, frames, seed=31, steps=4,
                    coherence={"mode": "FLOW", "strength": 0.6})
    plain_status, plain = run(client, flow, tmp_path)
    weights = [[1.0, 0.0], [0.5, 0.5], [0.2, 0.8], [0.0, 1.0]]
    travel = {**flow, "prompt_keys": [flow["prompt"], "the street in flames"],
              "frames": [{**f, "prompt_weights": w} for f, w in zip(frames, weights)]}
    status, images = run(client, travel, tmp_path)
    # Frame 1 is the shot prompt alone (key 0 is the same text): the same frame, from the cache;
    # frames 2-4 are carried along the flow (no keyframes), each with its own blend.
    assert plain_status["detail"]["keyframes"] == [1] and status["detail"]["keyframes"] == []
    assert status["submitted_cached"] == [1] and np.array_equal(images[1], plain[1])
    for n in (2, 3, 4):
        assert not np.array_equal(images[n], plain[n]), n
