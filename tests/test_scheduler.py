"""The scheduler (continuous batching) through the library: many requests decoded together give exactly the
codes each gives alone, in fp32 and in the CPU default (int8), whenever they join; cancellation frees a slot."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from conftest import tone
from musicgen.engine.engine import Engine, WindowSettings
from musicgen.engine.loading import load
from musicgen.engine.sampling import SamplingParams
from musicgen.engine.sequence import Sequence
from musicgen.serving.scheduler import Cancelled, Scheduler
from musicgen_dev.ops import Ops


def _requests(engine):
    melody = torch.from_numpy(tone([262.0, 392.0], 2.0)) if engine.is_melody else None
    prompt = torch.randint(0, 2048, (engine.num_codebooks, 40), generator=torch.Generator().manual_seed(9))
    return [  # (text, seconds, params, seed, melody, prompt codes)
        ("lofi beat", 3, SamplingParams(top_k=50), 1, None, None),  # three windows
        ("a longer description of a jazz trio", 1, SamplingParams(top_p=0.9, cfg_scale=1.0), 2, None, None),
        (None, 2, SamplingParams(temperature=0.6), 3, melody, None),
        ("rock", 1, SamplingParams(top_k=0, cfg_scale=5.0), 4, None, prompt),
    ]


def _sequence(engine, request):
    text, seconds, params, seed, melody, prompt = request
    from musicgen.engine.sequence import Sequence

    melody_source = engine.melody_source(melody) if melody is not None else None
    return Sequence(engine, engine.conditioner.encode_text(text), seconds * engine.frame_rate, params,
                    torch.Generator().manual_seed(seed), prompt, melody_source)


@pytest.mark.parametrize("precision,step", [("fp32", "segments"), ("int8", "segments"), ("fp32", "fixed"),
                                            ("bf16", "fixed")])
@pytest.mark.parametrize("kind", ["plain", "melody"])
def test_requests_decoded_together_give_exactly_their_codes_alone(checkpoints, kind, precision, step):
    """Both forms of the shared step; the fixed-shape one is what CUDA graphs replay on a GPU."""
    model, tokenizer = load(checkpoints[kind], torch.device("cpu"))
    engine = Engine(model, tokenizer, WindowSettings(window_s=1.0, stride_s=0.6), precision=precision,
                    static_step=step == "fixed")
    scheduler = Scheduler(engine, 4)
    try:
        requests = _requests(engine)
        alone = [scheduler.run(_sequence(engine, r)) for r in requests]
        together = [None] * len(requests)

        def run(i, delay):
            time.sleep(delay)  # the later ones join while the first is mid-window
            together[i] = scheduler.run(_sequence(engine, requests[i]))

        threads = [threading.Thread(target=run, args=(i, 0.02 * i)) for i in range(len(requests))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert all(torch.equal(a, b) for a, b in zip(alone, together))
        assert all(a.shape[1] == r[1] * 50 + (0 if r[5] is None else 40) for a, r in zip(alone, requests))
    finally:
        scheduler.close()


def test_a_cancelled_request_leaves_at_once_and_the_others_finish(checkpoints):
    model, tokenizer = load(checkpoints["plain"], torch.device("cpu"))
    engine = Engine(model, tokenizer, precision="int8")
    scheduler = Scheduler(engine, 2)
    try:
        requests = _requests(engine)
        expected = scheduler.run(_sequence(engine, requests[0]))
        endless = _sequence(engine, ("endless", 300, SamplingParams(), 5, None, None))
        job = scheduler.submit(endless)
        cancel = threading.Event()
        errors = []

        def wait():
            try:
                job.wait(cancel)
            except Cancelled as exc:
                errors.append(exc)

        waiter = threading.Thread(target=wait)
        waiter.start()
        other = scheduler.submit(_sequence(engine, requests[0]))
        time.sleep(0.3)
        cancel.set()
        waiter.join(timeout=30)
        assert errors and not waiter.is_alive()
        assert torch.equal(other.wait(), expected)
        assert 0 < endless.steps < endless.total_steps // 10  # it stopped long before its end
        assert scheduler.active == [None, None] and not scheduler.waiting
    finally:
        scheduler.close()


def test_a_backend_that_cannot_batch_serves_requests_one_after_another(checkpoints):
    """transformers' modules decode one request at a time through the same loop."""
    model, tokenizer = load(checkpoints["plain"], torch.device("cpu"))
    engine = Engine(model, tokenizer, backend="reference")
    scheduler = Scheduler(engine, 4)
    try:
        assert not scheduler.batching and scheduler.slots == 1
        requests = _requests(engine)[:2]
        alone = [engine.run(_sequence(engine, r)) for r in requests]
        jobs = [scheduler.submit(_sequence(engine, r)) for r in requests]
        assert all(torch.equal(job.wait(), a) for job, a in zip(jobs, alone))
        endless = scheduler.submit(_sequence(engine, ("endless", 300, SamplingParams(), 5, None, None)))
        endless.cancel()
        with pytest.raises(Cancelled):
            endless.wait()
    finally:
        scheduler.close()


def _counting_backend():
    compiled = []

    def backend(gm, example_inputs):
        compiled.append(len(example_inputs))
        return gm.forward
    return backend, compiled


@pytest.mark.parametrize("kind", ["plain", "melody"])
def test_the_compiled_fixed_step_serves_every_request_shape_without_compiling_again(checkpoints, kind, caplog):
    """What the GPU runs, compiled on the CPU: every bucket compiled (and on CUDA recorded) at setup, in one
    graph with no break (a host sync in the step would be one: ``fullgraph``), then 12 requests of different
    lengths, windows, texts, guidance, melody and prompts, joining at different times, compile nothing
    more, run only recorded shapes, and decode the eager fixed step's tokens. (A text past its bucket, or a
    melody prefix past the cache, grows the buffers and records every shape again: a setup event.)"""
    torch._dynamo.reset()  # count this test's compilations only: earlier tests' compiled frames and
    # recompile counts live in the same process (past the recompile limit dynamo would run eagerly, silently)
    model, tokenizer = load(checkpoints[kind], torch.device("cpu"))
    windows = WindowSettings(window_s=1.0, stride_s=0.6)
    backend, compiled = _counting_backend()
    engine = Engine(model, tokenizer, windows, precision="fp32", static_step=True, compile=True,
                    compile_backend=backend)
    eager = Engine(model, tokenizer, windows, precision="fp32", static_step=True)
    caplog.set_level("WARNING", logger="musicgen.engine.graphs")
    scheduler, reference = Scheduler(engine, 4), Scheduler(eager, 4)
    try:
        at_setup = len(compiled)  # one graph; specialized at most on whether a read covers the whole cache
        assert 1 <= at_setup <= 2 and scheduler.graph.compiled
        melody = torch.from_numpy(tone([262.0, 392.0], 2.0)) if engine.is_melody else None
        gen = torch.Generator().manual_seed(4)
        requests = []
        for i in range(12):  # every text length below; no text, a prompt, guidance 1, melody: each at least once
            prompt = torch.randint(0, 2048, (engine.num_codebooks, 10 + 7 * i), generator=gen) if i % 5 == 4 else None
            text = None if i % 7 == 6 else "word " * (1 + 2 * (i % 12))  # within a text bucket
            params = SamplingParams(top_k=50, cfg_scale=1.0 if i % 3 == 2 else 3.0)
            requests.append((text, 1 + i % 3, params, i, melody if i % 2 else None, prompt))
        expected = [reference.run(_sequence(eager, r)) for r in requests]
        results = [None] * len(requests)

        def run(i):
            time.sleep(0.01 * (i % 4))
            results[i] = scheduler.run(_sequence(engine, requests[i]))

        for batch in range(0, len(requests), 4):
            threads = [threading.Thread(target=run, args=(i,)) for i in range(batch, batch + 4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        assert all(torch.equal(a, b) for a, b in zip(results, expected))
        assert len(compiled) == at_setup, "a request shape compiled the step again"
        assert scheduler.graph.compiled and "failed" not in caplog.text
        assert scheduler.graph.shapes <= set(scheduler.graph.buckets())
        assert len({r.shape[1] for r in results}) >= 5
        if kind == "plain":  # short prompts cross-attend their own bucket of the text, not the whole buffer
            read = {text for *_, text in scheduler.graph.shapes}
            assert 64 in read and max(read) < max(scheduler.graph.text_buckets()), read
            segments = Engine(model, tokenizer, windows, precision="fp32")  # exact text lengths, unpadded
            assert all(torch.equal(segments.run(_sequence(segments, requests[i])), expected[i]) for i in (0, 5, 11))
    finally:
        scheduler.close()
        reference.close()


def test_the_shared_step_failing_for_lack_of_memory_decodes_each_request_alone(checkpoints, caplog):
    """An out-of-memory error in a shared step fails nobody: each request's column is decoded alone, and
    every request ends with the codes it gets alone; one whose own step fails is the only one to fail."""
    model, tokenizer = load(checkpoints["plain"], torch.device("cpu"))
    engine = Engine(model, tokenizer, WindowSettings(window_s=1.0, stride_s=0.6), precision="int8")
    scheduler = Scheduler(engine, 4)
    decoder = scheduler.decoder
    step = decoder.step
    poisoned = []

    def limited(ids, segments, caches=None):  # a card that holds two requests' activations, not three
        if len(segments) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        if any(segment.rows.start in poisoned for segment in segments):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")
        return step(ids, segments, caches)

    try:
        requests = _requests(engine)
        alone = [scheduler.run(_sequence(engine, r)) for r in requests]
        decoder.step = limited
        caplog.set_level("WARNING", logger="musicgen.serving.scheduler")
        jobs = [scheduler.submit(_sequence(engine, r)) for r in requests]
        assert all(torch.equal(job.wait(), a) for job, a in zip(jobs, alone))
        assert "the shared decode step of 4 request(s) failed (OutOfMemoryError" in caplog.text
        poisoned.append(2)  # the request in slot 1: its own step fails too
        sequences = [_sequence(engine, r) for r in requests]
        with scheduler.wake:  # all four queued before the loop admits any: request i takes slot i (else the
            jobs = [scheduler.submit(s) for s in sequences]  # failed one's slot could go to a later request)
        with pytest.raises(torch.OutOfMemoryError):
            jobs[1].wait()
        assert all(torch.equal(jobs[i].wait(), alone[i]) for i in (0, 2, 3))
    finally:
        scheduler.close()


# what reads a value back to the host (on a GPU, each waits for the device), or decides a shape from values
HOST_READS = {"_local_scalar_dense", "item", "equal", "nonzero", "masked_select", "multinomial", "unique",
              "_unique2", "repeat_interleave"}


def _attached(engine, graph, params, texts):
    """One request per slot with ``params``, its window begun in the step as the decode loop begins it (opened,
    its first column sampled, attached). Returns their sequences and the longest filled length."""
    sequences = [_sequence(engine, (text, 1, p, i, None, None)) for i, (text, p) in enumerate(zip(texts, params))]
    return sequences, max(graph.begin(slot, seq)[0] for slot, seq in enumerate(sequences))


@pytest.mark.parametrize("kind", ["plain", "melody"])
def test_a_fixed_step_its_sampling_and_its_bookkeeping_never_read_the_device(checkpoints, kind):
    """Decode steps of four requests in the fixed-shape step, as the decode loop runs them (one call that
    decodes, applies each request's guidance, draws its top-k/top-p token, writes it into its window and feeds it
    back; the positions and columns advanced): no operator that reads a value back to the host runs, and the
    host's share of a step is the same few operator calls for one request as for four, plus one noise draw per
    sampling request. (tests/test_gpu.py checks the same with CUDA's sync detector.)"""
    model, tokenizer = load(checkpoints[kind], torch.device("cpu"))
    engine = Engine(model, tokenizer, precision="fp32", static_step=True)
    scheduler = Scheduler(engine, 4, sample_in_step=True)  # as under CUDA graphs
    graph = scheduler.graph
    try:
        params = [SamplingParams(top_k=50), SamplingParams(top_p=0.9), SamplingParams(cfg_scale=1.0),
                  SamplingParams(temperature=0.7)]
        calls = {}
        with torch.inference_mode():
            for n in (4, 1):
                sequences, filled = _attached(engine, graph, params[:n], ("a", "drums", None, "strings")[:n])
                with Ops() as recorded:
                    for step in range(10):
                        graph.decode(graph.slots, filled + 1 + step)  # every slot's shape: only requests vary
                        for seq in sequences:
                            seq.sampled()
                calls[n] = recorded.count / 10
                assert "scatter_" in recorded.ops  # the step did sample under the recorder
                assert not recorded.ops & HOST_READS, recorded.ops & HOST_READS
                assert all(seq.steps == 11 for seq in sequences)
                for slot in range(n):
                    graph.leave(slot)
        assert calls[4] == calls[1] + 2 * 3, calls  # per request: its noise (its row of the buffer, the draw)
    finally:
        scheduler.close()


@pytest.mark.parametrize("kind", ["plain", "melody"])
def test_sampling_inside_the_step_gives_each_seed_the_tokens_sampled_on_the_host(checkpoints, kind):
    """The fixed-shape step that samples every request itself decodes, for every seed and setting (top-k,
    top-p, plain, greedy, low temperature, guidance 1 and 5, prompts, melody, several windows), exactly the
    codes sampled request by request on the host after the step, alone and beside each other."""
    model, tokenizer = load(checkpoints[kind], torch.device("cpu"))
    engine = Engine(model, tokenizer, WindowSettings(window_s=1.0, stride_s=0.6), precision="fp32",
                    static_step=True)
    requests = _requests(engine) + [
        ("greedy", 1, SamplingParams(temperature=0.0), 5, None, None),
        (None, 2, SamplingParams(top_k=0, top_p=0.5, temperature=1.5), 6, None, None),
    ]
    host, device = Scheduler(engine, 4), Scheduler(engine, 4, sample_in_step=True)  # on a CPU: host by default
    try:
        assert device.graph.sampling and not host.graph.sampling
        expected = [host.run(_sequence(engine, r)) for r in requests]
        jobs = [device.submit(_sequence(engine, r)) for r in requests]
        assert all(torch.equal(job.wait(), e) for job, e in zip(jobs, expected))
        assert all(torch.equal(device.run(_sequence(engine, r)), e) for r, e in zip(requests[:2], expected))
    finally:
        host.close()
        device.close()


def _staggered_step(checkpoint, prompts: list[int], **options):
    """A fixed-shape step (``options``: GraphStep's) whose slots hold requests at very different positions
    (prompts of ``prompts`` frames, prefilled), each with its next column set."""
    from musicgen.engine.graphs import GraphStep

    model, tokenizer = load(checkpoint, torch.device("cpu"))
    engine = Engine(model, tokenizer, precision="fp32", static_step=True)
    graph = GraphStep(engine.backend.decoder, len(prompts), max(prompts) + 64, 64, **options)
    gen = torch.Generator().manual_seed(5)
    for slot, frames in enumerate(prompts):
        prompt = torch.randint(0, 2048, (engine.num_codebooks, frames), generator=gen)
        seq = Sequence(engine, engine.conditioner.encode_text("word " * (1 + 3 * slot)), 20,
                       SamplingParams(top_k=50), torch.Generator().manual_seed(slot), prompt)
        logits, _, _ = graph.open_window(slot, seq.next_window())
        seq.consume(logits)
        graph.set_column(slot, seq.window.step_ids())
    return engine.backend.decoder, graph


def test_per_row_attention_reads_only_each_rows_keys_and_decodes_the_same_step(checkpoints):
    """The step with per-row key reads (FlexAttention under a block mask built from the rows' positions: what
    the compiled step runs on CUDA), run eagerly: with four requests 5 to 700 frames in, every row's logits are
    the dense step's (which reads every row up to the longest one), the mask covers each row's own keys and at
    most one block more, and building it reads nothing back from the device."""
    from musicgen.engine import row_attention

    decoder, graph = _staggered_step(checkpoints["plain"], [5, 140, 300, 700])
    rows = 2 * graph.slots
    with torch.inference_mode():
        dense = decoder.fixed_step(graph.ids, graph.pos, rows, graph.caches, graph.text,
                                   graph.bucket(graph.slots, int(graph.pos.max()) + 1)[1], 64).clone()
        per_row = decoder.fixed_step(graph.ids, graph.pos, rows, graph.caches, graph.text, graph.length, 64,
                                     per_row=True)
        with Ops() as recorded:  # the mask is all the per-row step adds to the host's side of a step
            mask = row_attention.row_blocks(graph.pos[:rows], graph.length)
    difference = (per_row[:rows] - dense[:rows]).abs().max()
    assert difference < 1e-5, difference
    assert recorded.ops and not recorded.ops & HOST_READS, recorded.ops
    need = graph.pos[:rows] + 1  # keys each row attends: its positions so far, its own included
    read = row_attention.positions_read(mask)
    assert bool((read >= need).all()) and bool((read - need < row_attention.KEY_BLOCK).all()), (read, need)
    assert int(need.max()) > 700 and int(need.min()) < 200  # really staggered


def test_per_row_reads_of_staggered_requests_stay_within_a_tenth_of_their_keys():
    """Eight musicgen-melody requests of 10 to 30 s at different points of their decode (the prefix: 235 chroma
    frames and a 20-token text): the block mask reads at most 1.1x the keys the rows need, where reading every
    row up to the longest one, rounded to its bucket, reads 1.5x or more."""
    from musicgen.engine import row_attention
    from musicgen.engine.graphs import LENGTH_BUCKET, round_up

    prefix, rate, delays = 235 + 20, 50, 4
    positions = []
    for i in range(8):
        seconds, progress = 10 + 20 * i / 7, (i + 0.5) / 8
        at = prefix + int(progress * (seconds * rate + delays))
        positions += [at, at]  # the conditional and the unconditional row
    pos = torch.tensor(positions)
    cache = round_up(prefix + 30 * rate + delays + 1, LENGTH_BUCKET)
    need = int((pos + 1).sum())
    read = int(row_attention.positions_read(row_attention.row_blocks(pos, cache)).sum())
    dense = pos.numel() * round_up(int(pos.max()) + 1, LENGTH_BUCKET)
    assert read <= 1.1 * need, read / need
    assert dense >= 1.5 * need, dense / need  # what the per-row read removes


def test_per_row_attention_that_fails_to_compile_falls_back_to_the_dense_read_still_compiled(checkpoints, caplog):
    """Where FlexAttention does not compile (this CPU's inductor, an old driver), the step says so once and
    keeps compiling the dense read, one graph per key bucket, decoding what the eager step decodes."""
    from musicgen.engine.graphs import LENGTH_BUCKET, GraphStep

    compiled = []

    def no_flex(gm, example_inputs):  # a compiler that cannot lower FlexAttention
        if any("flex_attention" in str(node.target) for node in gm.graph.nodes):
            raise RuntimeError("flex_attention is not supported here")
        compiled.append(gm)
        return gm.forward

    torch._dynamo.reset()
    decoder, step = _staggered_step(checkpoints["plain"], [5, 300], compile=True, compile_backend=no_flex,
                                    per_row=True)
    assert step.per_row and step.key_buckets() == [step.length]  # one key extent: the mask bounds the reads
    caplog.set_level("WARNING", logger="musicgen.engine.graphs")
    with torch.inference_mode():
        step.record()
        assert step.compiled and not step.per_row and compiled
        assert "the per-row attention (FlexAttention) step failed (RuntimeError: flex_attention is not" in caplog.text
        assert step.key_buckets() == list(range(LENGTH_BUCKET, step.length + 1, LENGTH_BUCKET))
        longest = int(step.pos.max()) + 1
        keys = step.bucket(2, longest)[1]
        eager = decoder.fixed_step(step.ids, step.pos, 4, step.caches, step.text, keys, 64).clone()
        assert torch.equal(step.decode(2, longest)[:4], eager[:4])


def test_slot_generators_take_over_each_requests_random_state_and_hand_it_back(checkpoints):
    """Under CUDA graphs each slot draws from a generator of its own (the one registered with the graphs), which
    takes over its request's generator state while the request decodes and hands it back after. Run here with
    CPU generators: a top-k, a top-p and a greedy request get the tokens sampled on the host, and each request's
    generator ends in the state host sampling leaves it in (where MultiBand Diffusion's noise continues)."""
    from musicgen.engine.graphs import GraphStep

    model, tokenizer = load(checkpoints["plain"], torch.device("cpu"))
    engine = Engine(model, tokenizer, precision="fp32", static_step=True)
    params = [SamplingParams(top_k=50), SamplingParams(top_p=0.8, cfg_scale=1.0), SamplingParams(temperature=0.0)]

    def run(**options):
        graph = GraphStep(engine.backend.decoder, 3, 256, 64, **options)
        sequences, filled = [], 0
        with torch.inference_mode():
            for slot, p in enumerate(params):
                sequences.append(_sequence(engine, (f"prompt {slot}", 1, p, slot, None, None)))
                filled = max(filled, graph.begin(slot, sequences[-1])[0])  # attached when the step samples
            for step in range(12):
                if graph.sampling:
                    graph.decode(3, filled + 1 + step)
                    for seq in sequences:
                        seq.sampled()
                else:
                    for slot, seq in enumerate(sequences):
                        graph.set_column(slot, seq.window.step_ids())
                    logits = graph.decode(3, filled + 1 + step)
                    for slot, seq in enumerate(sequences):
                        seq.consume(logits[graph.rows_of(slot, seq.window.rows)])
            for slot in range(len(params)):
                if graph.sampling:
                    graph.detach(slot)
        return [seq.window.seq.clone() for seq in sequences], [seq.generator.get_state() for seq in sequences]

    host_tokens, host_states = run()
    for options in ({"sampling": True, "slot_generators": True}, {"sampling": True}):
        tokens, states = run(**options)
        assert all(torch.equal(a, b) for a, b in zip(tokens, host_tokens)), options
        assert all(torch.equal(a, b) for a, b in zip(states, host_states)), options
