"""Prompt travel: per-frame blends of text embeddings, each prompt encoded once per job.

A blend is a weighted sum of the prompts' text-encoder outputs (Deforum's prompt
interpolation). The negative prompt is constant over a job. For SDXL the pooled
embeddings blend the same way; Flux has no negative prompt (its guidance is distilled into the
model), and its T5 and pooled CLIP embeddings blend. Worker thread (runs the text encoder).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from ..contract.schedule import FrameValues

logger = logging.getLogger(__name__)

# encode_prompt's outputs, in order, under the names the pipelines' __call__ takes.
SD_NAMES = ("prompt_embeds", "negative_prompt_embeds")
SDXL_NAMES = ("prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds")
FLUX_NAMES = ("prompt_embeds", "pooled_prompt_embeds")  # its third output, text_ids, the pipeline remakes


class PromptEmbeddings:
    """Text embeddings of one job: each distinct prompt encoded once, blends are sums."""

    def __init__(self, pipe: Any, negative_prompt: str, family: str = "sd15") -> None:
        self.pipe = pipe
        self.negative_prompt = negative_prompt
        self.family = family
        self._encoded: dict[str, dict[str, torch.Tensor]] = {}
        self.encode_calls = 0

    def encode(self, text: str) -> dict[str, torch.Tensor]:
        """One row of each embedding for ``text`` (with the job's negative prompt)."""
        if text not in self._encoded:
            import torch

            with torch.no_grad():
                if self.family == "flux":
                    outputs = self.pipe.encode_prompt(prompt=text, prompt_2=None, device=self.pipe._execution_device,
                                                      num_images_per_prompt=1)[:2]
                else:
                    outputs = self.pipe.encode_prompt(
                        prompt=text, device=self.pipe._execution_device, num_images_per_prompt=1,
                        do_classifier_free_guidance=True, negative_prompt=self.negative_prompt,
                    )
            names = FLUX_NAMES if self.family == "flux" else SDXL_NAMES if len(outputs) == 4 else SD_NAMES
            self._encoded[text] = dict(zip(names, outputs, strict=True))
            self.encode_calls += 1
        return self._encoded[text]

    def blend(self, pairs: Sequence[tuple[str, float]]) -> dict[str, torch.Tensor]:
        """Weighted sum of the prompts' embeddings; the negative ones are the job's, unblended."""
        parts = [(self.encode(text), share) for text, share in pairs]
        out: dict[str, torch.Tensor] = {}
        for name in parts[0][0]:
            if name.startswith("negative"):
                out[name] = parts[0][0][name]
                continue
            total = parts[0][0][name] * parts[0][1]
            for encoded, share in parts[1:]:
                total = total + encoded[name] * share
            out[name] = total
        return out

    def batch(self, values: Sequence[FrameValues]) -> dict[str, torch.Tensor]:
        """The pipeline's embedding arguments for a batch: one row per frame."""
        import torch

        rows = [self.blend(v.blend) if v.blend is not None else self.encode(v.prompt) for v in values]
        return {name: torch.cat([row[name] for row in rows]) for name in rows[0]}
