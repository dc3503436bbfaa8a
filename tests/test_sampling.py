"""Next-token sampling (audiocraft's rules) and classifier-free guidance, on hand-made distributions."""

from __future__ import annotations

import math

import pytest
import torch


from musicgen.engine.sampling import SamplingParams, apply_cfg, probabilities, sample_next, top_k_filter, top_p_filter
from musicgen.engine.sampling import draw as race
from musicgen_dev.ops import Ops

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


def test_top_k_keeps_every_token_tied_with_the_kth_probability():
    # audiocraft's sample_top_k keeps p >= the k-th largest value: with k = 2 the three tokens tied at 0.2
    # all stay (k = 2 sorted values would keep only two of them), renormalised over 0.9
    probs = torch.tensor([[0.3, 0.2, 0.2, 0.2, 0.1]])
    expected = torch.tensor([[0.3, 0.2, 0.2, 0.2, 0.0]]) / 0.9
    assert torch.allclose(top_k_filter(probs, 2), expected, atol=1e-7, rtol=0)
    tokens = draw(logits_of([0.3, 0.2, 0.2, 0.2, 0.1]), top_k=2)
    assert set(tokens.tolist()) == {0, 1, 2, 3}
    assert torch.allclose(frequencies(tokens, 5), expected[0], atol=0.03)


@pytest.mark.parametrize("p,kept", [(0.5, [0.5, 0.25, 0.0, 0.0]), (0.74, [0.5, 0.25, 0.0, 0.0]),
                                    (0.75, [0.5, 0.25, 0.125, 0.0]), (0.875, [0.5, 0.25, 0.125, 0.125])])
def test_top_p_keeps_a_token_whose_preceding_mass_equals_p(p, kept):
    # exact binary fractions: the mass before each sorted token is 0, 0.5, 0.75, 0.875 with no rounding;
    # audiocraft drops a token only when that mass is strictly greater than p
    probs = torch.tensor([[0.125, 0.5, 0.125, 0.25]])
    sorted_probs, order = top_p_filter(probs, p)
    expected = torch.tensor([kept]) / sum(kept)
    assert torch.equal(sorted_probs, expected)
    assert order[0, :2].tolist() == [1, 3]  # sorted positions map back to vocabulary ids


def test_draw_is_torch_multinomial_from_the_same_generator_state():
    """The exponential race gives torch.multinomial's token and leaves the generator where it leaves it."""
    for seed in range(200):
        make = torch.Generator().manual_seed(seed + 10_000)
        probs = torch.rand(8, 2048, generator=make) * (torch.rand(8, 2048, generator=make) > 0.9)
        probs[:, seed % 2048] += 1e-3  # every row drawable
        if seed % 2:
            probs = probs / probs.sum(dim=-1, keepdim=True)
        ours, theirs = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
        assert torch.equal(race(probs, ours), torch.multinomial(probs, 1, generator=theirs)), seed
        assert torch.equal(ours.get_state(), theirs.get_state())


def audiocraft_next_token(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> torch.Tensor:
    """The reference: audiocraft 1.3's LMModel._sample_next_token and utils.sample_top_k / sample_top_p /
    multinomial, statement for statement, with torch.multinomial drawing (and a generator passed to it)."""
    probs = torch.softmax(logits / params.temperature, dim=-1)
    if params.top_p > 0.0:
        probs_sort, probs_idx = torch.sort(probs, dim=-1, descending=True)
        probs_sum = torch.cumsum(probs_sort, dim=-1)
        mask = probs_sum - probs_sort > params.top_p
        probs_sort *= (~mask).float()
        probs_sort.div_(probs_sort.sum(dim=-1, keepdim=True))
        next_token = torch.multinomial(probs_sort, num_samples=1, generator=generator)
        return torch.gather(probs_idx, -1, next_token)[:, 0]
    if params.top_k > 0:
        top_k_value, _ = torch.topk(probs, params.top_k, dim=-1)
        min_value_top_k = top_k_value[..., [-1]]
        probs *= (probs >= min_value_top_k).float()
        probs.div_(probs.sum(dim=-1, keepdim=True))
    return torch.multinomial(probs, num_samples=1, generator=generator)[:, 0]


@pytest.mark.parametrize("params", [SamplingParams(), SamplingParams(top_k=3, temperature=0.7),
                                    SamplingParams(top_k=2048), SamplingParams(top_k=0, temperature=1.3),
                                    SamplingParams(top_p=0.8, top_k=250), SamplingParams(top_p=0.05, temperature=2.0)])
def test_the_same_generator_draws_audiocrafts_token(params):
    for seed in range(100):
        logits = torch.randn(8, 2048, generator=torch.Generator().manual_seed(seed)) * 4
        logits[:, 100:140] = logits[:, 7:8]  # ties, some of them at the k-th value
        ours = sample_next(logits, params, torch.Generator().manual_seed(seed))
        assert torch.equal(ours, audiocraft_next_token(logits, params, torch.Generator().manual_seed(seed))), seed


@pytest.mark.parametrize("params", [SamplingParams(), SamplingParams(top_p=0.9), SamplingParams(top_k=0),
                                    SamplingParams(temperature=0.0)])
def test_sampling_never_reads_a_value_on_the_host(params):
    """No .item()/bool() (aten._local_scalar_dense, a device sync), no torch.multinomial (two of them
    inside), and no Python branch on a value: it runs on meta tensors, which hold no values at all."""
    logits = torch.randn(6, 2048, generator=torch.Generator().manual_seed(0))
    with Ops() as recorded:
        sample_next(logits, params, torch.Generator().manual_seed(0))
    assert recorded.ops and not recorded.ops & {"_local_scalar_dense", "multinomial", "item"}
    assert sample_next(torch.empty(6, 2048, device="meta"), params, None).shape == (6,)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_sampling_on_cuda_never_synchronizes():
    logits = torch.randn(16, 2048, device="cuda")
    generator = torch.Generator(device="cuda").manual_seed(0)
    torch.cuda.set_sync_debug_mode("error")
    try:
        for params in (SamplingParams(), SamplingParams(top_p=0.9), SamplingParams(top_k=0)):
            sample_next(logits, params, generator)
    finally:
        torch.cuda.set_sync_debug_mode("default")


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


def test_every_slot_sampled_at_once_picks_each_requests_own_token():
    """``SlotSampling`` (every slot of the decode step at once, on device tensors: what a CUDA graph replays)
    picks, slot by slot, exactly the token ``sample_next`` picks from the same logits, settings and noise: top-k
    (past the vocabulary too), top-p, plain, greedy, a temperature too small to divide by, guidance on and off,
    over ties, NaN and infinite logits."""
    from musicgen.engine.sampling import SlotSampling

    settings = [SamplingParams(top_k=250), SamplingParams(top_k=0, top_p=0.9), SamplingParams(temperature=0.0),
                SamplingParams(top_k=0), SamplingParams(top_k=3000), SamplingParams(temperature=0.3, top_k=5),
                SamplingParams(temperature=1e-40, top_k=50), SamplingParams(top_k=1),
                SamplingParams(top_p=0.01, cfg_scale=1.0), SamplingParams(top_k=50, cfg_scale=10.0)]
    slots, codebooks, vocab = len(settings), 4, 2048
    sampler = SlotSampling(slots, torch.device("cpu"))
    rows = [1 if p.cfg_scale == 1.0 else 2 for p in settings]
    for slot, (params, n) in enumerate(zip(settings, rows)):
        sampler.set(slot, params, n)
    for trial in range(12):
        logits = torch.randn(2 * slots, codebooks, vocab, generator=torch.Generator().manual_seed(trial)) * (1 + trial)
        if trial % 3 == 0:
            logits[0, 0, :100] = 5.0
            logits[3, 1] = float("nan")
            logits[4, 2, 7] = float("inf")
        if trial % 4 == 1:
            logits = logits.round()  # many ties
        noise = torch.ones(slots, codebooks, vocab)
        expected = []
        for slot, params in enumerate(settings):
            cond, uncond = logits[2 * slot], logits[2 * slot + 1]
            scores = cond if rows[slot] == 1 else apply_cfg(cond, uncond, params.cfg_scale)
            expected.append(sample_next(scores, params, torch.Generator().manual_seed(100 * trial + slot)))
            if not params.greedy:  # the same Exp(1) draw sample_next made
                noise[slot].exponential_(1, generator=torch.Generator().manual_seed(100 * trial + slot))
        chosen = sampler.sample(logits[0::2], logits[1::2], noise)
        for slot in range(slots):
            assert torch.equal(chosen[slot], expected[slot]), (trial, settings[slot])
