"""Next-token sampling with audiocraft's semantics.

temperature scales the logits first; temperature 0 means argmax. top_p > 0 selects nucleus sampling and
takes precedence over top_k; otherwise top_k > 0 keeps the k most likely tokens; both 0 samples the full
distribution. Classifier-free guidance mixes conditional and unconditional logits before any of this.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0
    top_k: int = 250
    top_p: float = 0.0
    cfg_scale: float = 3.0

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def apply_cfg(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """uncond + (cond - uncond) * scale (audiocraft and transformers use the same formula)."""
    return uncond + (cond - uncond) * scale


def sample_next(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> torch.Tensor:
    """Pick one token per row of ``logits`` (rows, vocab); returns (rows,) int64."""
    if params.greedy:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / params.temperature, dim=-1)
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
