"""Next-token sampling with audiocraft's semantics.

temperature scales the logits first; temperature 0 means argmax, and so does a positive temperature too small
to divide by (its reciprocal overflows float32). top_p > 0 selects nucleus sampling and takes precedence over
top_k; otherwise top_k > 0 keeps the k most likely tokens; both 0 samples the full distribution.
Classifier-free guidance mixes conditional and unconditional logits before any of this.

Whatever the logits hold (huge values from a large guidance scale, inf or NaN), the distribution handed to
``torch.multinomial`` is finite, non-negative and has a positive sum, so sampling never fails.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .inputs import DEFAULTS

_F32 = torch.finfo(torch.float32)


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = DEFAULTS["temperature"]
    top_k: int = DEFAULTS["top_k"]
    top_p: float = DEFAULTS["top_p"]
    cfg_scale: float = float(DEFAULTS["classifier_free_guidance"])

    @classmethod
    def of(cls, request) -> SamplingParams:
        """The sampling settings of a :class:`~musicgen.request.GenerationRequest`."""
        return cls(temperature=request.temperature, top_k=request.top_k, top_p=request.top_p,
                   cfg_scale=float(request.classifier_free_guidance))

    @property
    def greedy(self) -> bool:
        """Argmax decoding: temperature 0, or one so small that dividing by it overflows float32."""
        return self.temperature == 0 or 1.0 / self.temperature > _F32.max


def apply_cfg(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """uncond + (cond - uncond) * scale (audiocraft and transformers use the same formula)."""
    return uncond + (cond - uncond) * scale


def probabilities(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax(logits / temperature) over the last dimension, in float32, always a valid distribution: NaN
    counts as the lowest score and infinities as the largest finite ones, and the row's maximum is subtracted
    before dividing (the softmax is the same), so nothing overflows into NaN."""
    scores = torch.nan_to_num(logits.float(), nan=_F32.min, posinf=_F32.max, neginf=_F32.min)
    scores = scores - scores.amax(dim=-1, keepdim=True)  # <= 0, the maximum exactly 0 (or -inf below it)
    return torch.softmax(scores / temperature, dim=-1)


def sample_next(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> torch.Tensor:
    """Pick one token per row of ``logits`` (rows, vocab); returns (rows,) int64."""
    if params.greedy:
        return logits.argmax(dim=-1)
    probs = probabilities(logits, params.temperature)
    if params.top_p > 0.0:
        probs_sorted, order = probs.sort(dim=-1, descending=True)
        cumulative = probs_sorted.cumsum(dim=-1)
        # drop tokens once the mass before them already exceeds p (the most likely token always stays)
        probs_sorted = probs_sorted.masked_fill(cumulative - probs_sorted > params.top_p, 0.0)
        probs_sorted = probs_sorted / probs_sorted.sum(dim=-1, keepdim=True)
        picked = torch.multinomial(probs_sorted, 1, generator=generator)
        return order.gather(-1, picked).squeeze(-1)
    if 0 < params.top_k < probs.shape[-1]:
        top, idx = probs.topk(params.top_k, dim=-1)
        top = top / top.sum(dim=-1, keepdim=True)
        picked = torch.multinomial(top, 1, generator=generator)
        return idx.gather(-1, picked).squeeze(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
