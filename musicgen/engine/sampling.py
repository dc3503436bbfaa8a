"""Next-token sampling exactly as audiocraft does it (``LMModel._sample_next_token`` and
``audiocraft.utils.utils``: ``sample_top_p``, ``sample_top_k``, ``multinomial``), without host syncs.

temperature 0 means argmax of the logits; so does a positive temperature too small to divide by (its
reciprocal overflows float32). Otherwise ``probs = softmax(logits / temperature)``, then:

- top_p > 0 (takes precedence): sort the probabilities in descending order, drop every token whose
  preceding mass already exceeds p (the most likely token always stays), renormalise, draw an index into
  the sorted order and map it back (``sample_top_p``);
- else top_k > 0: keep every token whose probability is at least the k-th largest one (ties at the k-th
  value are all kept), zero the rest in vocabulary order, renormalise and draw over the whole vocabulary
  (``sample_top_k``; a k past the vocabulary keeps everything, where audiocraft's ``topk`` would fail);
- else draw from ``probs`` as they are.

The draw is ``torch.multinomial(p, 1)`` written out: ATen draws one sample as ``argmax(p / q)`` with
``q = Exp(1)`` noise drawn by ``torch.empty_like(p).exponential_(1, generator)`` (an exponential race),
after two ``.item()`` validity checks that stall a GPU every step. :func:`draw` is that race without the
checks, so the same generator state draws the same token as ``torch.multinomial`` and as audiocraft, and a
decode step never waits for the host. Nothing here branches in Python on tensor values.

Whatever the logits hold (huge values from a large guidance scale, inf or NaN), the distribution raced over
is finite, non-negative and has a positive sum, so sampling never fails: NaN counts as the lowest score,
infinities as the largest finite ones, and where dividing by the temperature would overflow a row, that
row's maximum is subtracted first (the softmax is the same). Classifier-free guidance mixes conditional and
unconditional logits before any of this.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from musicgen.inputs import DEFAULTS

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


def _scores(logits: torch.Tensor) -> torch.Tensor:
    """The logits in float32 with NaN as the lowest score and infinities as the largest finite ones."""
    return torch.nan_to_num(logits.float(), nan=_F32.min, posinf=_F32.max, neginf=_F32.min)


def probabilities(logits: torch.Tensor, temperature: float | torch.Tensor,
                  divide: Callable[[torch.Tensor, float | torch.Tensor], torch.Tensor] = torch.div) -> torch.Tensor:
    """softmax(logits / temperature) over the last dimension (audiocraft's order of operations), in float32,
    always a valid distribution: in a row where ``logits / temperature`` overflows, the row's maximum is
    subtracted before dividing (the same softmax, computed without inf - inf). ``divide(x, temperature)``: how
    the division is computed (``SlotSampling`` reproduces CUDA's division by a Python number)."""
    scores = _scores(logits)
    scaled = divide(scores, temperature)
    overflow = torch.isinf(scaled.amax(dim=-1, keepdim=True))
    shifted = divide(scores - scores.amax(dim=-1, keepdim=True), temperature)  # <= 0, the maximum exactly 0
    return torch.softmax(torch.where(overflow, shifted, scaled), dim=-1)


def draw(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One index per row of ``probs`` (rows, n), as ``torch.multinomial(probs, 1, generator=generator)``
    draws it (``argmax(probs / Exp(1))``, the same noise from the same generator), without its host-side
    checks: (rows, 1) int64. Tokens of probability 0 are never drawn (``multinomial`` could pick one where
    its noise is exactly 0, a 0/0)."""
    return race(probs, torch.empty_like(probs).exponential_(1, generator=generator))


def race(probs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """``draw`` given its ``Exp(1)`` noise (the shape of ``probs``): the index of the largest probs / noise
    among tokens of positive probability, keepdim."""
    return torch.where(probs > 0, probs / noise, -1.0).argmax(dim=-1, keepdim=True)


def keep_at_least(probs: torch.Tensor, kth: torch.Tensor) -> torch.Tensor:
    """Tokens with probability >= ``kth`` (per row, keepdim), the rest zeroed in vocabulary order,
    renormalised."""
    kept = probs * (probs >= kth).float()
    return kept / kept.sum(dim=-1, keepdim=True)


def top_k_filter(probs: torch.Tensor, k: int) -> torch.Tensor:
    """audiocraft's ``sample_top_k`` distribution: tokens with probability >= the k-th largest (ties kept),
    the rest zeroed in vocabulary order, renormalised."""
    return keep_at_least(probs, probs.topk(min(k, probs.shape[-1]), dim=-1).values[..., -1:])


def top_p_sorted(probs_sort: torch.Tensor, p: float | torch.Tensor) -> torch.Tensor:
    """audiocraft's ``sample_top_p`` distribution over probabilities sorted in descending order: every token
    dropped whose preceding mass exceeds ``p`` (the most likely one always stays), renormalised."""
    mass_before = probs_sort.cumsum(dim=-1) - probs_sort
    kept = probs_sort * (~(mass_before > p)).float()
    return kept / kept.sum(dim=-1, keepdim=True)


def top_p_filter(probs: torch.Tensor, p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """audiocraft's ``sample_top_p`` distribution, in descending order: (renormalised sorted probabilities
    with every token dropped whose preceding mass exceeds ``p``, the vocabulary index of each position)."""
    probs_sort, order = probs.sort(dim=-1, descending=True)
    return top_p_sorted(probs_sort, p), order


def sample_next(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> torch.Tensor:
    """Pick one token per row of ``logits`` (rows, vocab); returns (rows,) int64."""
    if params.greedy:
        return _scores(logits).argmax(dim=-1)
    probs = probabilities(logits, params.temperature)
    if params.top_p > 0.0:
        sorted_probs, order = top_p_filter(probs, params.top_p)
        return order.gather(-1, draw(sorted_probs, generator)).squeeze(-1)
    if params.top_k > 0:
        probs = top_k_filter(probs, params.top_k)
    return draw(probs, generator).squeeze(-1)


class SlotSampling:
    """Every decoding request's sampling settings as device tensors, one entry per slot, so that one call
    samples every slot's next column (``sample``) with no Python branch on anyone's settings: what a CUDA
    graph of the whole decode step replays. Each slot's tokens are exactly ``sample_next``'s for the same
    logits, settings and noise (one ``Exp(1)`` draw of (K, vocab) per slot, as ``draw`` takes it)."""

    def __init__(self, slots: int, device: torch.device):
        f32 = dict(dtype=torch.float32, device=device)
        # CUDA divides a tensor by a Python number as a product with its float32 reciprocal (one bit from the
        # quotient at times): sampling a request on its own does that, so there the batched form holds 1 / t
        # and multiplies; a CPU divides by t
        self._divide = torch.mul if device.type == "cuda" else torch.div
        self.temperature = torch.ones(slots, **f32)  # t, or 1 / t on CUDA
        self.top_p = torch.zeros(slots, **f32)
        self.cfg = torch.ones(slots, **f32)
        self.top_k = torch.zeros(slots, dtype=torch.long, device=device)
        self.guided = torch.zeros(slots, dtype=torch.bool, device=device)  # two rows: guidance mixes them
        self.greedy = torch.zeros(slots, dtype=torch.bool, device=device)

    def set(self, slot: int, params: SamplingParams, rows: int) -> None:
        """Slot ``slot`` samples with ``params`` (``rows``: 2 with guidance)."""
        temperature = 1.0 if params.greedy else params.temperature  # a greedy slot's draw is unused
        if self._divide is torch.mul:  # 1 / t in float32, as CUDA's kernel takes it
            temperature = 1.0 / torch.tensor(temperature, dtype=torch.float32)
        self.temperature[slot] = temperature
        self.top_p[slot] = params.top_p
        self.top_k[slot] = params.top_k
        self.cfg[slot] = params.cfg_scale
        self.guided[slot] = rows == 2
        self.greedy[slot] = params.greedy

    def sample(self, cond: torch.Tensor, uncond: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The first S slots' tokens (S, K) from their conditional and unconditional logits (S, K, vocab) and
        their noise (S, K, vocab)."""
        n, vocab = cond.shape[0], cond.shape[-1]
        per_slot = lambda t: t[:n, None, None]  # noqa: E731
        scores = torch.where(per_slot(self.guided), apply_cfg(cond, uncond, per_slot(self.cfg)), cond)
        probs = probabilities(scores, per_slot(self.temperature), self._divide)
        probs_sort, order = probs.sort(dim=-1, descending=True)
        by_p = order.gather(-1, race(top_p_sorted(probs_sort, per_slot(self.top_p)), noise))
        kth = probs_sort.gather(-1, (per_slot(self.top_k).clamp(1, vocab) - 1).expand(-1, cond.shape[1], 1))
        by_k = race(keep_at_least(probs, kth), noise)
        drawn = torch.where(per_slot(self.top_p) > 0, by_p,
                            torch.where(per_slot(self.top_k) > 0, by_k, race(probs, noise))).squeeze(-1)
        return torch.where(self.greedy[:n, None], _scores(scores).argmax(dim=-1), drawn)
