"""Next-token sampling (audiocraft's rules) and classifier-free guidance, on hand-made distributions."""

from __future__ import annotations

import math

import pytest
import torch

from musicgen.sampling import SamplingParams, apply_cfg, probabilities, sample_next

DRAWS = 4000


def logits_of(probs: list[float]) -> torch.Tensor:
    return torch.tensor(probs).log()[None]


def draw(logits: torch.Tensor, seed: int = 0, draws: int = DRAWS, **params) -> torch.Tensor:
    """``draws`` samples from one row of ``logits`` (the row repeated, one generator)."""
    generator = torch.Generator().manual_seed(seed)
    return sample_next(logits.expand(draws, -1), SamplingParams(**params), generator)


def frequencies(tokens: torch.Tensor, vocab: int) -> torch.Tensor:
    return torch.bincount(tokens, minlength=vocab).float() / tokens.numel()


PROBS = [0.5, 0.3, 0.15, 0.05]


def test_samples_follow_the_distribution_at_temperature_1():
    freq = frequencies(draw(logits_of(PROBS), top_k=0), 4)
    assert torch.allclose(freq, torch.tensor(PROBS), atol=0.03), freq


def test_temperature_reshapes_the_distribution_as_softmax_of_logits_over_t():
    logits = logits_of(PROBS)
    expected = torch.softmax(logits / 2.0, dim=-1)[0]  # flatter
    freq = frequencies(draw(logits, top_k=0, temperature=2.0), 4)
    assert torch.allclose(freq, expected, atol=0.03), (freq, expected)
    assert freq[3] > 0.1  # the unlikely token gains mass


@pytest.mark.parametrize("temperature", [0.0, 1e-320, 5e-324, 1e-39, 2.5e-39])
def test_temperature_zero_or_too_small_to_divide_by_is_argmax(temperature):
    logits = torch.randn(6, 2048, generator=torch.Generator().manual_seed(1)) * 5
    params = SamplingParams(temperature=temperature, top_k=250)
    assert params.greedy
    assert torch.equal(sample_next(logits, params, torch.Generator().manual_seed(0)), logits.argmax(dim=-1))


def test_a_tiny_temperature_that_can_divide_keeps_only_the_best_token():
    logits = torch.tensor([[1.0, 3.0, 2.0, 3.0 - 1e-3]])
    params = SamplingParams(temperature=1e-30, top_k=0)
    assert not params.greedy
    assert set(draw(logits, temperature=1e-30, top_k=0, draws=200).tolist()) == {1}


@pytest.mark.parametrize("k", [1, 3, 7])
def test_top_k_samples_exactly_the_k_most_likely_tokens(k):
    logits = torch.arange(10.0).flip(0)[None] * 0.1  # token 0 most likely, nearly flat
    seen = set(draw(logits, top_k=k).tolist())
    assert seen == set(range(k))


def test_top_k_0_or_past_the_vocabulary_samples_the_whole_distribution():
    logits = torch.zeros(1, 10)
    assert set(draw(logits, top_k=0).tolist()) == set(range(10))
    assert set(draw(logits, top_k=50).tolist()) == set(range(10))


@pytest.mark.parametrize("p,kept", [(0.4, {0}), (0.5, {0, 1}), (0.7, {0, 1}), (0.81, {0, 1, 2}), (1.0, {0, 1, 2, 3})])
def test_nucleus_keeps_tokens_until_the_mass_before_them_exceeds_p(p, kept):
    # mass before each token: 0, 0.5, 0.8, 0.95
    tokens = draw(logits_of(PROBS), top_p=p, top_k=0)
    assert set(tokens.tolist()) == kept
    freq = frequencies(tokens, 4)
    renormalised = torch.tensor([q if i in kept else 0.0 for i, q in enumerate(PROBS)])
    assert torch.allclose(freq, renormalised / renormalised.sum(), atol=0.03)


def test_top_p_takes_precedence_over_top_k():
    tokens = draw(logits_of(PROBS), top_p=0.9, top_k=1)
    assert set(tokens.tolist()) == {0, 1, 2}  # top-1 would give only token 0


def test_same_generator_state_gives_the_same_tokens():
    logits = torch.randn(4, 2048, generator=torch.Generator().manual_seed(3))
    a = sample_next(logits, SamplingParams(), torch.Generator().manual_seed(9))
    b = sample_next(logits, SamplingParams(), torch.Generator().manual_seed(9))
    c = sample_next(logits, SamplingParams(), torch.Generator().manual_seed(10))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("params", [SamplingParams(), SamplingParams(top_k=0), SamplingParams(top_p=0.9),
                                    SamplingParams(temperature=1e-30), SamplingParams(temperature=1e30)])
def test_any_logits_give_a_valid_distribution_and_a_token(params):
    inf, nan = math.inf, math.nan
    rows = torch.tensor([
        [0.0, inf, 1.0, 2.0],  # an infinite score wins
        [nan, 1.0, 5.0, 2.0],  # NaN counts as the lowest score
        [-inf, -inf, 3.0, -inf],  # masked tokens are never drawn
        [nan, nan, nan, nan],  # nothing usable: still a token, never an error
        [-inf, -inf, -inf, -inf],
        [3e38, -3e38, 0.0, 1e38],  # huge finite scores (a guidance scale of 10^9)
    ])
    probs = probabilities(rows, max(params.temperature, 1e-30))
    assert torch.isfinite(probs).all() and (probs >= 0).all() and torch.allclose(probs.sum(-1), torch.ones(6))
    tokens = sample_next(rows, params, torch.Generator().manual_seed(0))
    assert tokens.shape == (6,) and ((tokens >= 0) & (tokens < 4)).all()
    assert tokens[0] == 1 and tokens[2] == 2 and tokens[5] == 0
    if not params.greedy:
        assert tokens[1] != 0  # NaN is never preferred over real scores


def test_classifier_free_guidance_extrapolates_from_the_unconditional_logits():
    cond = torch.tensor([[2.0, 0.0, -1.0]])
    uncond = torch.tensor([[1.0, 1.0, 1.0]])
    assert torch.equal(apply_cfg(cond, uncond, 1.0), cond)
    assert torch.equal(apply_cfg(cond, uncond, 0.0), uncond)
    assert torch.equal(apply_cfg(cond, uncond, 3.0), torch.tensor([[4.0, -2.0, -5.0]]))
    guided = apply_cfg(cond, uncond, 1e9)  # a huge scale overflows nothing that sampling cannot take
    assert sample_next(guided, SamplingParams(), torch.Generator().manual_seed(0)).item() == 0


def test_sampling_params_come_from_the_request_by_keyword():
    from musicgen import GenerationRequest

    request = GenerationRequest(temperature=0.7, top_k=12, top_p=0.3, classifier_free_guidance=5)
    assert SamplingParams.of(request) == SamplingParams(temperature=0.7, top_k=12, top_p=0.3, cfg_scale=5.0)
    assert SamplingParams.of(GenerationRequest()) == SamplingParams()  # one set of defaults
