"""The decode engine through its public API: parity with transformers generate(), windows, codec."""

from __future__ import annotations

import re

import pytest
import torch

from conftest import ROOT, SR, tone
from musicgen.engine.chroma import chroma
from musicgen.engine.engine import Engine, WindowSettings
from musicgen.engine.sampling import SamplingParams
from musicgen.engine.loading import load

TEXT = "lofi beat with piano"


@pytest.fixture(scope="module", params=["plain", "melody"])
def loaded(request, checkpoints):
    model, tokenizer = load(checkpoints[request.param], torch.device("cpu"))
    return request.param, model, tokenizer


def reference_codes(model, tokenizer, n_new, cfg, prompt=None, melody=None):
    """Greedy codes from transformers' own generate() on the same weights (captured before decoding)."""
    captured = []
    original = model.audio_encoder.decode

    def capture(codes, *args, **kwargs):
        captured.append(codes.clone())
        return original(codes, *args, **kwargs)

    kwargs = dict(tokenizer([TEXT], return_tensors="pt"))
    if melody is not None:
        kwargs["input_features"] = chroma(melody, SR)[None]
    if prompt is not None:
        start = torch.full((prompt.shape[0], 1), model.generation_config.decoder_start_token_id)
        kwargs["decoder_input_ids"] = torch.cat([start, prompt], dim=1)
    delay = model.decoder.num_codebooks // model.config.decoder.audio_channels - 1
    model.audio_encoder.decode = capture
    try:
        with torch.no_grad():
            model.generate(**kwargs, do_sample=False, guidance_scale=cfg, max_new_tokens=n_new + delay)
    finally:
        model.audio_encoder.decode = original
    if len(captured) == 2:  # stereo: transformers decodes the left then the right codebooks
        left, right = captured[0][0, 0], captured[1][0, 0]
        return torch.stack([left, right], dim=1).reshape(-1, left.shape[-1])
    return captured[0][0, 0]


@pytest.mark.parametrize("backend", ["fast", "fast-static", "reference"])
@pytest.mark.parametrize("cfg", [3.0, 1.0])
@pytest.mark.parametrize("with_prompt", [False, True])
def test_greedy_tokens_equal_transformers_generate(loaded, cfg, with_prompt, backend):
    kind, model, tokenizer = loaded
    # fast-static: the fixed-shape step that CUDA graphs capture, run eagerly here
    engine = Engine(model, tokenizer, backend=backend.split("-")[0], precision="fp32",
                    static_step=backend == "fast-static")
    melody = torch.from_numpy(tone([440.0, 330.0], 3.0)) if kind == "melody" else None
    prompt = torch.randint(0, 2048, (engine.num_codebooks, 30), generator=torch.Generator().manual_seed(0)) if with_prompt else None
    n_new = 60
    ours = engine.generate_codes(TEXT, n_new, SamplingParams(temperature=0.0, cfg_scale=cfg), prompt_codes=prompt, melody_wav=melody)
    ref = reference_codes(model, tokenizer, n_new, cfg, prompt=prompt, melody=melody)
    assert ours.shape == ref.shape == (engine.num_codebooks, n_new + (30 if with_prompt else 0))
    assert torch.equal(ours, ref)
    assert len(torch.unique(ours)) > 4  # a real token stream, not one repeated token
    if with_prompt:
        assert torch.equal(ours[:, :30], prompt)


def test_window_plan_covers_long_durations(loaded):
    _, model, tokenizer = loaded
    engine = Engine(model, tokenizer, WindowSettings(window_s=2.0, stride_s=1.2))  # 100 frames, stride 60
    assert engine.plan(0, 100) == [(0, 100)]
    assert engine.plan(0, 160) == [(0, 100), (40, 60)]
    assert engine.plan(0, 340) == [(0, 100), (40, 60), (40, 60), (40, 60), (40, 60)]
    assert engine.plan(150, 30) == [(70, 30)]  # a long prompt keeps its most recent part


@pytest.mark.parametrize("seconds,windows", [(2, 1), (3, 2), (6, 5)])
def test_long_generation_is_exact_length_and_reproducible(loaded, seconds, windows, caplog):
    kind, model, tokenizer = loaded
    engine = Engine(model, tokenizer, WindowSettings(window_s=2.0, stride_s=1.2))
    melody = torch.from_numpy(tone([440.0, 330.0], 1.5)) if kind == "melody" else None
    params = SamplingParams(temperature=1.0, top_k=50)
    n_new = seconds * engine.frame_rate
    with caplog.at_level("INFO"):
        a = engine.generate_codes(TEXT, n_new, params, torch.Generator().manual_seed(7), melody_wav=melody)
    assert a.shape == (engine.num_codebooks, n_new)
    if windows > 1:
        assert f"window {windows}/{windows}" in caplog.text
    b = engine.generate_codes(TEXT, n_new, params, torch.Generator().manual_seed(7), melody_wav=melody)
    assert torch.equal(a, b)
    assert engine.decode(a).shape == (engine.channels, seconds * SR)


def test_chunked_decode_matches_shape_and_stays_close(loaded):
    _, model, tokenizer = loaded
    engine = Engine(model, tokenizer)
    codes = torch.randint(0, 2048, (engine.num_codebooks, 300), generator=torch.Generator().manual_seed(1))
    whole = engine.decode(codes, chunk_frames=1000)
    chunked = engine.decode(codes, chunk_frames=100, context_frames=50)
    assert whole.shape == chunked.shape == (engine.channels, 300 * engine.codec.hop)
    assert (whole - chunked).abs().max() < 0.05 * whole.abs().max()


def test_chunked_encode_matches_whole_encode_away_from_the_joins(loaded):
    _, model, tokenizer = loaded
    engine = Engine(model, tokenizer)
    wav = torch.from_numpy(tone([440.0, 330.0, 262.0, 392.0], 6.0))[None].expand(engine.channels, -1)
    whole = engine.encode(wav, chunk_frames=1000)
    chunked = engine.encode(wav, chunk_frames=100, context_frames=50)
    assert whole.shape == chunked.shape == (engine.num_codebooks, 300)
    assert (whole == chunked).float().mean() > 0.9


def test_encode_gives_codes_that_depend_on_the_audio(loaded):
    _, model, tokenizer = loaded
    engine = Engine(model, tokenizer)
    a = engine.encode(torch.from_numpy(tone([440.0], 1.0))[None])
    b = engine.encode(torch.from_numpy(tone([220.0], 1.0))[None])
    assert a.shape == b.shape == (engine.num_codebooks, engine.frame_rate)
    assert not torch.equal(a, b)


def test_each_window_is_prompted_with_the_last_tokens_of_the_previous_one(loaded):
    kind, model, tokenizer = loaded
    engine = Engine(model, tokenizer, WindowSettings(window_s=2.0, stride_s=1.2))  # 100 frames, 60 stride
    melody = torch.from_numpy(tone([440.0, 330.0, 262.0], 1.7)) if kind == "melody" else None
    prompt = torch.randint(0, 2048, (engine.num_codebooks, 25), generator=torch.Generator().manual_seed(3))
    events = []
    codes = engine.generate_codes(TEXT, 250, SamplingParams(top_k=50), torch.Generator().manual_seed(1),
                            prompt_codes=prompt, melody_wav=melody, on_window=events.append)
    assert codes.shape == (engine.num_codebooks, 25 + 250)
    assert torch.equal(codes[:, :25], prompt)
    # plan: (25 ctx, 75 new), then (40, 60), (40, 60), (40, 55)
    assert [e.index for e in events] == list(range(len(events))) and len(events) == events[0].count == 4
    assert [e.new.shape[1] for e in events] == [75, 60, 60, 55]
    assert torch.equal(events[0].context, prompt)  # the first window sees the whole (short) prompt
    produced = prompt
    for event in events:
        ctx = event.context.shape[1]
        # the window's prompt is exactly the last tokens produced so far, and starts where they start
        assert torch.equal(event.context, produced[:, produced.shape[1] - ctx :])
        assert event.start_frame == produced.shape[1] - ctx
        produced = torch.cat([produced, event.new], dim=1)
    assert torch.equal(produced, codes)
    # windows after the first are prompted with window - stride = 40 frames and advance by the stride
    assert [e.context.shape[1] for e in events[1:]] == [40] * 3
    assert [e.start_frame for e in events] == [0, 60, 120, 180]


def test_windowed_melody_is_read_at_each_windows_time(checkpoints):
    model, tokenizer = load(checkpoints["melody"], torch.device("cpu"))
    engine = Engine(model, tokenizer, WindowSettings(window_s=2.0, stride_s=1.2))
    # a melody whose pitch changes every 0.6 s: windows starting at different times see different chroma
    melody = torch.from_numpy(tone([262.0, 330.0, 392.0, 494.0, 587.0], 3.0))
    seen = [engine.melody_chroma(melody, start, engine.window_frames).argmax(1) for start in (0, 60, 120)]
    assert not torch.equal(seen[0], seen[1]) and not torch.equal(seen[1], seen[2])
    # and the window's chroma is the melody's own chroma from that offset (tiled past its end)
    from musicgen.engine.chroma import chroma as chroma_of

    offset = 60 * engine.codec.hop
    expected = chroma_of(torch.cat([melody, melody])[offset : offset + engine.window_frames * engine.codec.hop], SR)
    assert torch.equal(seen[1].float(), expected.argmax(1).float())


@pytest.mark.parametrize("precision", ["bf16", "int8", "int4"])
def test_reduced_precisions_generate_valid_tokens_and_mostly_agree(loaded, precision):
    _, model, tokenizer = loaded
    greedy = SamplingParams(temperature=0.0, cfg_scale=3.0)
    full = Engine(model, tokenizer, precision="fp32").generate_codes(TEXT, 50, greedy)
    reduced = Engine(model, tokenizer, precision=precision).generate_codes(TEXT, 50, greedy)
    assert reduced.shape == full.shape and reduced.dtype == torch.long
    assert int(reduced.min()) >= 0 and int(reduced.max()) < 2048
    assert (reduced == full).float().mean() > 0.5  # same model, small numeric differences only


@pytest.mark.parametrize("dynamic", [True, False])
def test_int8_kernels_dynamic_and_weight_only(loaded, monkeypatch, dynamic):
    from musicgen.engine import quant

    if dynamic and not quant.int8_dynamic_available():
        pytest.skip("this PyTorch build has no quantized engine")
    if not dynamic:  # what a machine without a quantized engine runs
        monkeypatch.setattr(quant, "int8_dynamic_available", lambda: False)
    _, model, tokenizer = loaded
    greedy = SamplingParams(temperature=0.0, cfg_scale=3.0)
    full = Engine(model, tokenizer, precision="fp32").generate_codes(TEXT, 50, greedy)
    engine = Engine(model, tokenizer, precision="int8")
    kinds = {layer.fc1.kind for layer in engine.backend.decoder.layers} | {engine.backend.decoder.heads_out.kind}
    assert kinds == {"int8-dynamic" if dynamic else "int8"}
    assert engine.backend.decoder.dtype == (torch.float32 if dynamic else quant.compute_dtype("int8", torch.device("cpu")))
    reduced = engine.generate_codes(TEXT, 50, greedy)
    assert reduced.shape == full.shape and (reduced == full).float().mean() > 0.5


def test_blockwise_int8_quantization_is_per_row_symmetric_over_the_concatenation(monkeypatch):
    from musicgen.engine import quant

    monkeypatch.setattr(quant, "QUANT_BLOCK", 3 * 64)  # blocks of 3 rows: parts end mid-block
    gen = torch.Generator().manual_seed(0)
    parts = [torch.randn(7, 64, generator=gen) * scale for scale in (0.1, 3.0, 1.0)] + [torch.zeros(2, 64)]
    q, scale = quant.quantize_int8(parts, torch.float32)
    whole = torch.cat(parts)
    expected_scale = whole.abs().amax(dim=1).clamp(min=1e-8) / 127
    assert torch.equal(scale, expected_scale)
    assert q.dtype == torch.int8 and torch.equal(q, torch.round(whole / expected_scale[:, None]).to(torch.int8))
    assert int(q.abs().amax(dim=1)[:21].min()) == 127  # every non-zero row uses the full range
    assert torch.allclose(q.float() * scale[:, None], whole, atol=float(scale.max()) / 2 + 1e-7)


def test_fast_decoder_logits_match_transformers_within_1e_4(loaded):
    _, model, tokenizer = loaded
    fast = Engine(model, tokenizer, backend="fast", precision="fp32")
    ref = Engine(model, tokenizer, backend="reference")
    with torch.inference_mode():
        cond = ref.conditioner.condition(ref.conditioner.encode_text(TEXT), None, 3.0)
        seq = torch.randint(0, 2048, (1, ref.num_codebooks, 40), generator=torch.Generator().manual_seed(5))
        seq[:, :, 0] = ref.start_id
        for engine in (fast, ref):
            engine.backend.start(cond, 64)
        logits = [(fast.backend.prefill(seq[:, :, :10].expand(cond.rows, -1, -1)),
                   ref.backend.prefill(seq[:, :, :10].expand(cond.rows, -1, -1)))]
        for s in range(10, 40):
            step = seq[:, :, s : s + 1].expand(cond.rows, -1, -1)
            logits.append((fast.backend.step(step), ref.backend.step(step)))
    for a, b in logits:
        assert torch.allclose(a, b, atol=1e-4, rtol=0)


def test_compiled_decode_step_gives_the_same_tokens(checkpoints):
    model, tokenizer = load(checkpoints["plain"], torch.device("cpu"))
    greedy = SamplingParams(temperature=0.0, cfg_scale=3.0)
    eager = Engine(model, tokenizer, precision="fp32").generate_codes(TEXT, 30, greedy)
    compiled = Engine(model, tokenizer, precision="fp32", compile=True).generate_codes(TEXT, 30, greedy)
    assert torch.equal(eager, compiled)


def test_static_step_windows_and_compile_match_the_dynamic_step(checkpoints):
    model, tokenizer = load(checkpoints["plain"], torch.device("cpu"))
    greedy = SamplingParams(temperature=0.0, cfg_scale=3.0)
    windows = WindowSettings(window_s=1.0, stride_s=0.6)  # three windows: the cache is reused and cleared
    frames = 120
    dynamic = Engine(model, tokenizer, windows, precision="fp32").generate_codes(TEXT, frames, greedy)
    static = Engine(model, tokenizer, windows, precision="fp32", static_step=True)
    assert torch.equal(static.generate_codes(TEXT, frames, greedy), dynamic)
    # cache length and text length are bucketed, so the compiled step keeps a few shapes
    graph = static.backend.graph
    assert graph.caches[0].shape[2] % 256 == 0
    assert graph.text[0].k.shape[2] % 64 == 0
    shape, storage = graph.caches[0].shape, graph.caches[0].k.data_ptr()
    static.generate_codes("a much longer prompt than before, about anything at all", 10, greedy)
    assert graph.caches[0].shape == shape  # any length: the one cache
    assert graph.caches[0].k.data_ptr() == storage  # and the same buffer (what a CUDA graph replays)
    compiled = Engine(model, tokenizer, windows, precision="fp32", compile=True, static_step=True)
    assert torch.equal(compiled.generate_codes(TEXT, frames, greedy), dynamic)


def test_a_failing_compiler_falls_back_to_the_eager_step(checkpoints, monkeypatch, caplog):
    from musicgen.serving.service import MusicGen

    def broken_compile(fn, **kwargs):  # what a compiler failure on some machine looks like to us
        def compiled(*args, **kw):
            raise RuntimeError("backend exploded")
        return compiled

    monkeypatch.setattr(torch, "compile", broken_compile)
    caplog.set_level("INFO")
    service = MusicGen.load(checkpoints["plain"], device="cpu", precision="fp32", compile=True)
    assert "the compiled decode step failed (RuntimeError: backend exploded)" in caplog.text
    # compiling takes the fixed-shape step, which the scheduler builds at setup: it says it stays eager
    assert re.search(r"decode step ready for \d+ slot\(s\): \d+ shapes, eager", caplog.text), caplog.text
    greedy = SamplingParams(temperature=0.0, cfg_scale=3.0)
    model, tokenizer = load(checkpoints["plain"], torch.device("cpu"))
    assert torch.equal(service.engine.generate_codes(TEXT, 20, greedy),
                       Engine(model, tokenizer, precision="fp32").generate_codes(TEXT, 20, greedy))


def test_a_compiled_step_failing_mid_request_finishes_eagerly_with_the_same_tokens(checkpoints, caplog):
    calls = [0]

    def fails_later(gm, example_inputs):  # compiles fine, then breaks on its 10th run
        def run(*args):
            calls[0] += 1
            if calls[0] == 10:
                raise RuntimeError("device lost")
            return gm.forward(*args)
        return run

    model, tokenizer = load(checkpoints["plain"], torch.device("cpu"))
    greedy = SamplingParams(temperature=0.0, cfg_scale=3.0)
    engine = Engine(model, tokenizer, precision="fp32", compile=True, static_step=True, compile_backend=fails_later)
    caplog.set_level("WARNING", logger="musicgen.engine.graphs")
    codes = engine.generate_codes(TEXT, 30, greedy)
    assert "the compiled decode step failed (RuntimeError: device lost)" in caplog.text
    assert not engine.backend.compiled and calls[0] == 10
    assert torch.equal(codes, Engine(model, tokenizer, precision="fp32").generate_codes(TEXT, 30, greedy))


def _counting_backend():
    torch._dynamo.reset()  # a step compiled by an earlier test would be served from dynamo's cache, uncounted
    compiled = []

    def backend(gm, example_inputs):
        compiled.append(example_inputs)
        return gm.forward
    return backend, compiled


@pytest.mark.parametrize("kind", ["plain", "melody"])
def test_one_compilation_serves_every_request_shape(checkpoints, kind):
    """The static (CUDA-graph) step compiles at its first use for any duration, window and text length
    within the text bucket, with and without guidance, and decodes the dynamic step's tokens."""
    model, tokenizer = load(checkpoints[kind], torch.device("cpu"))
    backend, compiled = _counting_backend()
    windows = WindowSettings(window_s=1.0, stride_s=0.6)
    static = Engine(model, tokenizer, windows, precision="bf16", compile=True, static_step=True, compile_backend=backend)
    dynamic = Engine(model, tokenizer, windows, precision="bf16")
    melody = torch.from_numpy(tone([440.0, 330.0], 2.0)) if kind == "melody" else None
    for text, frames, cfg in [("a", 20, 3.0), ("a much longer text prompt " * 3, 35, 3.0), ("b", 80, 3.0),
                              ("c", 20, 1.0), ("x " * 20, 20, 3.0), (None, 30, 3.0)]:
        params = SamplingParams(temperature=0.0, cfg_scale=cfg)
        assert torch.equal(static.generate_codes(text, frames, params, melody_wav=melody),
                           dynamic.generate_codes(text, frames, params, melody_wav=melody)), (text, frames, cfg)
        if len(compiled) and "first" not in locals():
            first = len(compiled)  # what recording the shapes compiled: at most two specializations
    assert 1 <= first <= 2 and len(compiled) == first


def test_the_static_step_reads_every_weight_in_place(checkpoints):
    """A CUDA graph copies every input that is not a static address on each replay: only the step's own
    column and position may be such inputs, never a weight, the cache, the tables or the text."""
    model, tokenizer = load(checkpoints["plain"], torch.device("cpu"))
    backend, compiled = _counting_backend()
    engine = Engine(model, tokenizer, precision="bf16", compile=True, static_step=True, compile_backend=backend)
    engine.generate_codes(TEXT, 10, SamplingParams(temperature=0.0))
    decoder = engine.backend.decoder
    assert compiled
    for inputs in compiled:  # each specialization of the one graph
        tensors = [t for t in inputs if isinstance(t, torch.Tensor)]
        moving = [t for t in tensors if getattr(t, "_dynamo_static_input_type", None) is None and t.dim()]
        # the rows' positions and the column (and 0-d float constants)
        assert sorted(tuple(t.shape) for t in moving) == [(2,), (2, engine.num_codebooks, 1)]
        weights = {t.data_ptr() for t in decoder.weights()}
        assert weights <= {t.data_ptr() for t in tensors if getattr(t, "_dynamo_static_input_type", None)}


@pytest.mark.parametrize("precision", ["fp32", "int8"])
@pytest.mark.parametrize("kind", ["plain", "melody"])
def test_sequences_decode_together_each_at_its_own_position(checkpoints, kind, precision):
    """What continuous batching runs: two sequences (each with its two guidance rows and its own text) in
    one decoder call, the second joining three steps after the first, each at its own positions and
    reading only its own keys, get the logits each gets alone — exactly in int8 (per-row activation
    scales, integer sums), to float rounding in fp32 (whose matmuls depend on the batch size)."""
    from musicgen.engine.decoder import FastDecoder, Segment

    model, tokenizer = load(checkpoints[kind], torch.device("cpu"))
    engine = Engine(model, tokenizer, precision="fp32")
    conds = [engine.conditioner.condition(engine.conditioner.encode_text(text), None, 3.0)
             for text in (TEXT, "a different and longer text about drums")]
    decoder = FastDecoder(model.decoder, precision)
    gen = torch.Generator().manual_seed(2)
    ids = [torch.randint(0, 2048, (2, engine.num_codebooks, 12), generator=gen) for _ in conds]
    ids[0][:, :, 0] = ids[1][:, :, 0] = engine.start_id
    leads = [0 if c.prefix is None else c.prefix.shape[1] for c in conds]

    def segment(j, rows, pos, kv_len):
        text = None if conds[j].text_states is None else decoder.text_kv(conds[j].text_states, conds[j].text_mask)
        return Segment(rows, torch.tensor(pos), kv_len, text)

    alone = []
    for j, cond in enumerate(conds):
        decoder.setup_caches(2, max(leads) + 16)
        lead = leads[j]
        logits = [decoder.prefill(ids[j][..., :1], segment(j, slice(0, 2), list(range(lead + 1)), lead + 1), cond.prefix)]
        for t in range(1, 12):
            logits.append(decoder.step(ids[j][..., t : t + 1], [segment(j, slice(0, 2), [lead + t], lead + t + 1)]))
        alone.append(logits)

    decoder.setup_caches(4, max(leads) + 16)  # sequence j in cache rows 2j, 2j + 1
    rows = [slice(0, 2), slice(2, 4)]
    together = {0: [], 1: []}
    for step in range(12 + 3):
        segments, columns = [], []
        for j, t in ((0, step), (1, step - 3)):
            if t < 0 or t >= 12:
                continue
            lead = leads[j]
            if t == 0:  # joins: its prefill, alone in its call
                together[j].append(decoder.prefill(ids[j][..., :1], segment(j, rows[j], list(range(lead + 1)), lead + 1),
                                                   conds[j].prefix))
                continue
            segments.append(segment(j, rows[j], [lead + t], lead + t + 1))
            columns.append((j, ids[j][..., t : t + 1]))
        if segments:
            logits = decoder.step(torch.cat([c for _, c in columns]), segments)
            for n, (j, _) in enumerate(columns):
                together[j].append(logits[2 * n : 2 * n + 2])
    for j in (0, 1):
        for t in range(12):
            if precision == "int8":
                assert torch.equal(together[j][t], alone[j][t]), (j, t)
            else:
                assert torch.allclose(together[j][t], alone[j][t], atol=1e-4, rtol=0), (j, t)


@pytest.mark.parametrize("kind", ["plain", "melody"])
def test_fp16_decoding_stays_finite_and_close_to_fp32(checkpoints, kind):
    """What a GPU without native bf16 runs: fp16 matmuls over a float32 residual stream, q scaled before
    q.k (as audiocraft's autocast does), so nothing overflows."""
    model, tokenizer = load(checkpoints[kind], torch.device("cpu"))
    fp16 = Engine(model, tokenizer, precision="fp16")
    decoder = fp16.backend.decoder
    assert decoder.dtype == torch.float16 and decoder.residual_dtype == torch.float32
    assert decoder.layers[0].qkv.weight.dtype == torch.float16 and decoder.layers[0].ln_self[0].dtype == torch.float32
    fp32 = Engine(model, tokenizer, precision="fp32")
    with torch.inference_mode():
        cond = fp32.conditioner.condition(fp32.conditioner.encode_text(TEXT), None, 3.0)
        seq = torch.randint(0, 2048, (1, fp32.num_codebooks, 30), generator=torch.Generator().manual_seed(5))
        seq[:, :, 0] = fp32.start_id
        for engine in (fp16, fp32):
            engine.backend.start(cond, 64)
        pairs = [(fp16.backend.prefill(seq[:, :, :5].expand(cond.rows, -1, -1)),
                  fp32.backend.prefill(seq[:, :, :5].expand(cond.rows, -1, -1)))]
        for s in range(5, 30):
            column = seq[:, :, s : s + 1].expand(cond.rows, -1, -1)
            pairs.append((fp16.backend.step(column), fp32.backend.step(column)))
    for half, full in pairs:
        assert torch.isfinite(half).all()
        assert (half - full).abs().max() < 2e-2 * full.abs().max()
    greedy = SamplingParams(temperature=0.0, cfg_scale=3.0)
    assert (fp16.generate_codes(TEXT, 40, greedy) == fp32.generate_codes(TEXT, 40, greedy)).float().mean() > 0.8


@pytest.mark.parametrize("static", [False, True])
def test_the_null_melody_prefix_is_computed_once_and_changes_nothing(checkpoints, static):
    """int8 (the CPU default): a melody checkpoint's null-melody positions (every request without a melody,
    every unconditional row) get their keys/values copied from one computation. A prefill gives exactly the
    logits and the cache it gives computing them (each row's int8 GEMM does not depend on the others), and
    whole generations the same tokens (several windows, with and without guidance, and with a real melody,
    which computes its own). fp32, the parity reference, computes every position."""
    from musicgen.engine.decoder import Segment

    model, tokenizer = load(checkpoints["melody"], torch.device("cpu"))
    windows = WindowSettings(window_s=1.0, stride_s=0.6)
    shared = Engine(model, tokenizer, windows, precision="int8", static_step=static)
    computed = Engine(model, tokenizer, windows, precision="int8", static_step=static)
    computed.backend.decoder.share_prefix(None)

    null = shared.conditioner.null_prefix()
    text = torch.randn(1, 5, null.shape[-1], generator=torch.Generator().manual_seed(0))
    prefix = torch.cat([torch.cat([null, text], 1), torch.cat([null, torch.zeros_like(text)], 1)])
    ids = torch.randint(0, 2048, (2, shared.num_codebooks, 3), generator=torch.Generator().manual_seed(1))
    length = prefix.shape[1] + ids.shape[-1]
    results = []
    for engine in (shared, computed):
        decoder = engine.backend.decoder
        decoder.setup_caches(2, length + 8)
        logits = decoder.prefill(ids, Segment(slice(0, 2), torch.arange(length), length), prefix)
        results.append((logits, [(c.k[:, :, :length].clone(), c.v[:, :, :length].clone()) for c in decoder.caches]))
    assert torch.equal(results[0][0], results[1][0])
    for (k0, v0), (k1, v1) in zip(results[0][1], results[1][1]):
        assert torch.equal(k0, k1) and torch.equal(v0, v1)
    assert shared.backend.decoder._shared_kv is not None and computed.backend.decoder._shared_kv is None

    melody = torch.from_numpy(tone([262.0, 330.0, 392.0], 3.0)).float()
    for cfg, melody_wav in ((3.0, None), (1.0, None), (3.0, melody)):
        params = SamplingParams(top_k=50, cfg_scale=cfg)
        codes = [engine.generate_codes(TEXT, 120, params, torch.Generator().manual_seed(5), melody_wav=melody_wav)
                 for engine in (shared, computed)]
        assert torch.equal(codes[0], codes[1]), (cfg, melody_wav is not None)

    reference = Engine(model, tokenizer, windows, precision="fp32", static_step=static)
    reference.generate_codes(TEXT, 10, SamplingParams(temperature=0.0))
    assert reference.backend.decoder._shared_kv is None


def test_the_compiled_step_launches_the_kernels_per_layer_the_docs_state(checkpoints):
    """One decoder layer of the served (compiled, fixed-shape) step, counted in inductor's program for
    musicgen-melody's layout: what docs/performance.md states ("Kernels per layer"), so a change that adds a
    launch to every layer shows here and in the docs."""
    from musicgen_dev.kernels import per_layer

    stated = re.search(r"melody layout, fp32 on a CPU: (\d+) kernels per layer \((\d+) generated \+ (\d+) extern\)",
                       (ROOT / "docs" / "performance.md").read_text())
    assert stated, "docs/performance.md states the melody layout's kernels per layer"
    counted = per_layer(lambda: load(checkpoints["melody"], torch.device("cpu")), "fp32", torch.device("cpu"))
    assert counted.fallback == 0  # nothing left uncompiled in a layer
    assert (counted.total, counted.generated, counted.extern) == tuple(int(n) for n in stated.groups())
