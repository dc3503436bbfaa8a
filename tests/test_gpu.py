"""What only a CUDA device can show (skipped elsewhere; ``bench/gpu_check.sh`` runs these on a GPU machine): the
fixed-shape step replayed from CUDA graphs decodes what the segments' step decodes, a decode step and its
sampling never synchronize with the host, bf16 stays near fp32, and serving records nothing new."""

from __future__ import annotations

import threading

import pytest
import torch

from musicgen.engine.engine import Engine, WindowSettings
from musicgen.engine.loading import load
from musicgen.engine.sampling import SamplingParams
from musicgen.serving.scheduler import Scheduler
from musicgen.engine.sequence import Sequence

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CUDA = torch.device("cuda")
WINDOWS = WindowSettings(window_s=1.0, stride_s=0.6)


def _engine(checkpoint, precision, static):
    model, tokenizer = load(checkpoint, CUDA)
    return Engine(model, tokenizer, WINDOWS, precision=precision, static_step=static)


def _sequence(engine, text, seconds, seed, cfg=3.0):
    return Sequence(engine, engine.conditioner.encode_text(text), seconds * engine.frame_rate,
                    SamplingParams(top_k=50, cfg_scale=cfg), torch.Generator(CUDA).manual_seed(seed))


@pytest.mark.parametrize("kind", ["plain", "melody"])
def test_cuda_graphs_decode_what_the_segments_step_decodes(checkpoints, kind):
    fixed, segments = _engine(checkpoints[kind], "fp32", True), _engine(checkpoints[kind], "fp32", False)
    greedy = SamplingParams(temperature=0.0, cfg_scale=3.0)
    for text, frames in (("lofi beat", 60), ("a longer prompt about a jazz trio", 120), (None, 30)):
        a = fixed.generate_codes(text, frames, greedy)
        b = segments.generate_codes(text, frames, greedy)
        assert (a == b).float().mean() > 0.95, (text, frames)
    assert fixed.backend.graph.graphs  # replayed from CUDA graphs, not run eagerly


def test_a_decode_step_and_its_sampling_never_wait_for_the_device(checkpoints):
    """Replays of the recorded step, which samples every request's next column itself, as the decode loop runs
    them: nothing waits for the device (CUDA's sync detector), and the requests' tokens change every step."""
    engine = _engine(checkpoints["plain"], "bf16", True)
    scheduler = Scheduler(engine, 4)  # records every shape (outside the check)
    graph = scheduler.graph
    try:
        assert graph.sampling and graph.graphs, graph.fallbacks
        sequences = [_sequence(engine, text, 1, i) for i, text in enumerate(("a", "drums", None, "strings"))]
        with torch.inference_mode():
            filled = max(graph.begin(slot, seq)[0] for slot, seq in enumerate(sequences))
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")
            try:
                for _ in range(20):
                    graph.decode(len(sequences), filled + 1)
                    filled += 1
                    for seq in sequences:
                        seq.sampled()
            finally:
                torch.cuda.set_sync_debug_mode(0)
        for seq in sequences:
            new = seq.window.seq[:, seq.window.first_free.max() : seq.window.s]
            assert new.numel() and len(torch.unique(new)) > 1  # fresh noise each replay
    finally:
        scheduler.close()


def test_sampling_inside_the_cuda_graph_gives_each_seed_the_tokens_sampled_on_the_host(checkpoints):
    """Each slot's generator registered with the graphs takes over its request's state: replays draw what the
    request's own generator draws on the host after each step, and the batched sampler divides by the
    temperature as CUDA divides by a Python number, so one request at a time (the same shapes either way) every
    seed and setting decodes exactly the host's codes. Together (other shapes: attention may sum in another
    order on CUDA) they stay close, and another seed gives other codes."""
    engine = _engine(checkpoints["plain"], "fp32", True)
    host, graphs = Scheduler(engine, 4, sample_in_step=False), Scheduler(engine, 4)
    settings = [SamplingParams(top_k=50, temperature=0.7), SamplingParams(top_k=0, top_p=0.9, cfg_scale=1.0),
                SamplingParams(top_k=250, temperature=1.3), SamplingParams(top_k=50)]

    def sequence(i, seed):
        text = ("lofi beat", "jazz trio", None, "lofi beat")[i]
        return Sequence(engine, engine.conditioner.encode_text(text), 50 * (1 + i % 2), settings[i],
                        torch.Generator(CUDA).manual_seed(seed))

    try:
        assert graphs.graph.sampling and graphs.graph.graphs, graphs.graph.fallbacks
        expected = [host.run(sequence(i, i)) for i in range(4)]
        assert all(torch.equal(graphs.run(sequence(i, i)), expected[i]) for i in range(4))
        together = [job.wait() for job in [graphs.submit(sequence(i, i)) for i in range(4)]]
        assert all((a == b).float().mean() > 0.9 for a, b in zip(together, expected))
        assert not torch.equal(graphs.run(sequence(0, 7)), expected[0])  # another seed, other codes
    finally:
        host.close()
        graphs.close()


def test_bf16_stays_near_fp32(checkpoints):
    """bf16 over a float32 residual stream and head output, fused attention with a float32 softmax."""
    full, half = _engine(checkpoints["plain"], "fp32", True), _engine(checkpoints["plain"], "bf16", True)
    greedy = SamplingParams(temperature=0.0, cfg_scale=3.0)
    a, b = full.generate_codes("lofi beat", 100, greedy), half.generate_codes("lofi beat", 100, greedy)
    assert (a == b).float().mean() > 0.8


def test_serving_records_every_shape_once(checkpoints):
    engine = _engine(checkpoints["melody"], "bf16", True)
    scheduler = Scheduler(engine, 8)
    try:
        recorded = dict(scheduler.graph.graphs)
        assert set(recorded) == set(scheduler.graph.buckets())
        results = [None] * 8

        def run(i):
            results[i] = scheduler.run(_sequence(engine, f"prompt {i}", 1 + i % 3, i, cfg=1.0 if i % 4 == 3 else 3.0))

        threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert all(r is not None and r.shape[1] == (1 + i % 3) * 50 for i, r in enumerate(results))
        assert scheduler.graph.graphs.keys() == recorded.keys()
        assert all(scheduler.graph.graphs[k][0] is recorded[k][0] for k in recorded)
    finally:
        scheduler.close()


def test_multiband_diffusion_on_cuda_is_audiocrafts(checkpoints):
    """MBD's parts on the GPU against the fixtures audiocraft recorded on the CPU (tests/data/mbd; TF32 off so the
    comparison is of float32 math), and a seeded decode on the GPU gives the same audio twice."""
    from pathlib import Path

    from safetensors.torch import load_file

    from musicgen.engine.mbd import MultiBandDiffusion

    data = Path(__file__).parent / "data" / "mbd"
    ref = {k: v.to(CUDA) for k, v in load_file(str(data / "reference.safetensors")).items()}
    mbd = MultiBandDiffusion.load(data, CUDA)
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.inference_mode():
            for band in range(4):
                out = mbd.bands[band].unet(ref["unet.x"], 517, ref["unet.condition"])
                assert (out - ref[f"unet.{band}.out"]).abs().max().item() <= 1e-4, band
            assert (mbd.re_eq(ref["re_eq.wav"], ref["re_eq.ref"]) - ref["re_eq.out"]).abs().max().item() <= 1e-4
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    runs = [mbd.decode(ref["decode.emb"], ref["decode.encodec"], torch.Generator(CUDA).manual_seed(7))
            for _ in range(2)]
    assert runs[0].shape == ref["decode.out"].shape and torch.isfinite(runs[0]).all()
    assert torch.equal(runs[0], runs[1])


def test_the_compiled_step_reads_each_rows_own_keys_and_decodes_what_the_dense_step_decodes(checkpoints):
    """The served form (compiled, CUDA graphs) attends through FlexAttention under the rows' block mask
    (musicgen/engine/row_attention.py): it compiles and captures without falling back, one graph per slot and
    text bucket (no key buckets), and requests decoding together at different positions get the greedy tokens
    of the eager dense step. Last in this file: it compiles, the slowest test here."""
    model, tokenizer = load(checkpoints["plain"], CUDA)
    served = Engine(model, tokenizer, WINDOWS, precision="fp32", static_step=True, compile=True)
    dense = _engine(checkpoints["plain"], "fp32", True)
    scheduler = Scheduler(served, 2)
    try:
        graph = scheduler.graph
        assert graph.compiled and graph.per_row and not graph.fallbacks, graph.fallbacks
        assert graph.key_buckets() == [graph.length] and set(graph.graphs) == set(graph.buckets())
        greedy = SamplingParams(temperature=0.0, cfg_scale=3.0)
        requests = [("a longer prompt about a jazz trio", 120), ("lofi beat", 40)]
        results = [None] * len(requests)

        def run(i):
            text, frames = requests[i]
            results[i] = scheduler.run(Sequence(served, served.conditioner.encode_text(text), frames, greedy))

        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(requests))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for (text, frames), codes in zip(requests, results):
            assert (codes == dense.generate_codes(text, frames, greedy)).float().mean() > 0.95, text
    finally:
        scheduler.close()
