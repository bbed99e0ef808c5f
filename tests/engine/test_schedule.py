"""Per-frame values (engine/contract/schedule.py) and prompt blending (engine/models/prompt_blend.py).

In-process: the schedule's pure parts, the cache keys of requests without per-frame
fields (pinned to the formula every earlier engine used), and the embedding blend
on the tiny pipeline.
"""

from __future__ import annotations

import hashlib

import pytest

from engine import ALGORITHM_VERSION
from engine.coherence.strategies import IndependentCoherence, make_strategy
from engine.contract.schedule import describe_frames, frame_values, job_warnings
from engine.contract.schema import JobRequest
from engine.jobs.keys import frame_key
from engine.models.pipelines import PipelineKey
from engine.storage import canonical_hash

SHA = "a" * 64
KEY = PipelineKey(base="b", depth="d", pose=None, lora=None, lora_scale=0.0, device="cpu", dtype="float32",
                  attention_slicing=False, cpu_offload=False)


def request(frames: list[dict], **kwargs) -> JobRequest:  # type: ignore[no-untyped-def]
    return JobRequest(prompt="a street", style_prompt="pencil", frames=frames, **kwargs)


def test_frames_without_own_values_keep_their_cache_keys() -> None:
    """The key formula of a plain request is pinned; a frame sending the job's own values is the same frame."""
    req = request([{"frame": 1, "depth": SHA}], seed=3, depth_weight=0.5,
                  coherence={"mode": "FLOW", "strength": 0.4})
    strategy = make_strategy(req.coherence)
    # The job-wide part is hashed once per job (issue 11: a long prompt is not hashed per frame),
    # texts by their digest; the frame's own values keep the names the key always used.
    def digest(text: str) -> str:
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    job_part = canonical_hash({
        "algorithm": ALGORITHM_VERSION,
        "models": {"base": "b", "depth": "d", "pose": None, "lora": None, "lora_scale": 0.0},
        "device": "cpu", "dtype": "float32",
        "negative_prompt": digest(""), "steps": 20, "width": 512, "height": 512,
    })
    old_formula = canonical_hash({
        "request": job_part,
        "prompt": digest("a street, pencil"),
        "seed": 3, "guidance_scale": 7.5,
        "depth_weight": 0.5, "pose_weight": 1.0, "control_start": 0.0, "control_end": 1.0,
        "coherence": req.coherence.cache_dump(),
        "depth": SHA, "pose": None,
        **strategy.cache_inputs(req.frames[0], None),
    })
    assert frame_key(req, KEY, strategy, req.frames[0]) == old_formula
    # A frame that sends the job's own value is the same frame.
    same = request([{"frame": 1, "depth": SHA, "depth_weight": 0.5, "seed": 3, "strength": 0.4}], seed=3,
                   depth_weight=0.5, coherence={"mode": "FLOW", "strength": 0.4})
    assert frame_key(same, KEY, strategy, same.frames[0]) == old_formula
    # Its own strength, weight or seed is another frame.
    for change in ({"strength": 0.5}, {"depth_weight": 0.6}, {"seed": 4}, {"guidance_scale": 3.0}):
        other = request([{"frame": 1, "depth": SHA, **change}], seed=3, depth_weight=0.5,
                        coherence={"mode": "FLOW", "strength": 0.4})
        assert frame_key(other, KEY, strategy, other.frames[0]) != old_formula, change


def test_prompt_weights_blend_single_keys_are_plain_prompts_and_zero_falls_back() -> None:
    req = request([{"frame": f, "prompt_weights": w} for f, w in
                   ((1, [1.0, 0.0]), (2, [3.0, 1.0]), (3, [0.0, 2.0]), (4, [0.0, 0.0]), (5, [0.0, 0.0]),
                    (6, [1.0, 1e-9]))], prompt_keys=["quiet", "flames"])
    values = {f.frame: frame_values(req, f) for f in req.frames}
    assert (values[1].prompt, values[1].blend) == ("quiet, pencil", None)
    assert values[2].blend == (("quiet, pencil", 0.75), ("flames, pencil", 0.25))
    assert (values[3].prompt, values[3].blend) == ("flames, pencil", None)
    # All zero: the shot prompt, and a warning naming the frames.
    assert (values[4].prompt, values[4].fallback) == ("a street, pencil", True)
    assert job_warnings(req) == [
        "frames 4-5: every prompt key's weight is 0, so these frames use the shot prompt; key a weight above 0 "
        "there to keep the prompt travel going"]
    # A key faded to float noise does not make a blend.
    assert (values[6].prompt, values[6].blend) == ("quiet, pencil", None)
    # Frame 1 is the same frame as a shot with prompt "quiet" alone.
    alone = JobRequest(prompt="quiet", style_prompt="pencil", frames=[{"frame": 1}])
    strategy = make_strategy(req.coherence)
    assert frame_key(req, KEY, strategy, req.frames[0]) == \
        frame_key(alone, KEY, strategy, alone.frames[0])


def test_frames_batch_by_equal_values_blends_and_seeds_may_differ() -> None:
    frames = [{"frame": 1, "prompt_weights": [1, 0]}, {"frame": 2, "prompt_weights": [0.5, 0.5], "seed": 9},
              {"frame": 3, "prompt_weights": [0.25, 0.75]}, {"frame": 4, "prompt_weights": [0.2, 0.8],
                                                              "depth_weight": 0.3},
              {"frame": 5, "prompt_weights": [0.1, 0.9], "depth_weight": 0.3}, {"frame": 6, "prompt_weights": [0, 1]}]
    req = request(frames, prompt_keys=["a", "b"], batch_size=8)
    values = {f.frame: frame_values(req, f) for f in req.frames}
    batches = IndependentCoherence(req.coherence).batches(req.frames, 8, lambda f: values[f.frame].batch_group())
    assert [[f.frame for f in b] for b in batches] == [[1], [2, 3], [4, 5], [6]]
    assert [values[f].seed for f in (1, 2)] == [0, 9]


@pytest.mark.parametrize(("frames", "keys", "message"), [
    ([{"frame": 1, "prompt_weights": [1.0]}], [], "prompt_keys is empty"),
    ([{"frame": 1, "prompt_weights": [1.0]}], ["a", "b"], "has 1 weights but prompt_keys has 2"),
    ([{"frame": 1}, {"frame": 2, "control_start": 0.9, "control_end": 0.5}], [], "frames[1].control_start"),
])
def test_per_frame_inputs_are_checked(frames, keys, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        request(frames, prompt_keys=keys)


def test_describe_frames() -> None:
    assert describe_frames([9, 3, 4, 5, 11]) == "3-5, 9, 11"


def test_blend_encodes_each_prompt_once_and_sums(tiny_models: dict[str, str]) -> None:
    import torch
    from diffusers import StableDiffusionPipeline

    from engine.models.prompt_blend import PromptEmbeddings

    pipe = StableDiffusionPipeline.from_pretrained(tiny_models["base"], safety_checker=None,
                                                   requires_safety_checker=False)
    embeddings = PromptEmbeddings(pipe, "blurry")
    req = request([{"frame": f, "prompt_weights": [1 - t, t]} for f, t in ((1, 0.0), (2, 0.25), (3, 0.5), (4, 1.0))],
                  prompt_keys=["quiet", "flames"])
    values = [frame_values(req, f) for f in req.frames]
    batch = embeddings.batch(values[1:3])
    assert embeddings.encode_calls == 2  # "quiet, pencil" and "flames, pencil", whatever the number of frames
    a, b = embeddings.encode("quiet, pencil"), embeddings.encode("flames, pencil")
    assert embeddings.encode_calls == 2
    assert tuple(batch["prompt_embeds"].shape) == (2, *a["prompt_embeds"].shape[1:])
    assert torch.allclose(batch["prompt_embeds"][0], 0.75 * a["prompt_embeds"][0] + 0.25 * b["prompt_embeds"][0])
    assert torch.allclose(batch["prompt_embeds"][1], 0.5 * (a["prompt_embeds"][0] + b["prompt_embeds"][0]))
    assert torch.equal(batch["negative_prompt_embeds"][0], a["negative_prompt_embeds"][0])
    # The ends of the travel are the prompts themselves.
    assert not torch.equal(a["prompt_embeds"], b["prompt_embeds"])
    assert torch.equal(embeddings.batch([values[3]])["prompt_embeds"], b["prompt_embeds"])
