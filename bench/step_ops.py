"""Sampling each request on the host after the step against sampling every slot inside the step: the operator calls
one decode step makes outside the decoder (each one a kernel the host launches on a GPU, unless it is part of the
CUDA graph), with 1 and with N requests, and the time each form of sampling takes on this device. Both run on the
same random checkpoint in one process: the fixed-shape step (musicgen/engine/graphs.py) with ``sampling`` off and
on, requests with top-k, top-p and temperature settings, CFG 3.

    .venv/bin/python bench/step_ops.py [--preset tiny|small|medium] [--melody] [--requests 4] [--device cpu]

Prints key=value lines: ``host.ops_1`` / ``host.ops_N`` and ``in_step.ops_1`` / ``in_step.ops_N`` (operator calls
per step outside the decoder's own), ``host.ms_1`` / ``host.ms_N`` and ``in_step.ms_1`` / ``in_step.ms_N`` (sampling
alone, milliseconds per step).
"""

from __future__ import annotations

import sys
import time

import torch

from musicgen_dev import bench
from musicgen_dev.checkpoints import build_random_model
from musicgen_dev.ops import Ops
from musicgen.engine.engine import Engine
from musicgen.engine.graphs import GraphStep
from musicgen.engine.sampling import SamplingParams, SlotSampling, apply_cfg, sample_next
from musicgen.engine.sequence import Sequence

SETTINGS = [SamplingParams(top_k=250), SamplingParams(top_k=0, top_p=0.9), SamplingParams(temperature=0.7),
            SamplingParams(top_k=50)]


def ops_per_step(engine: Engine, slots: int, requests: int, sampling: bool, steps: int = 10) -> float:
    """Operator calls per decode step beyond the decoder's own, ``requests`` requests in a ``slots``-slot step."""
    graph = GraphStep(engine.backend.decoder, slots, 512, 64, sampling=sampling)
    sequences = [Sequence(engine, engine.conditioner.encode_text("a prompt"), 100, SETTINGS[i % len(SETTINGS)],
                          torch.Generator(engine.device).manual_seed(i)) for i in range(requests)]
    with torch.inference_mode():
        filled = max(graph.begin(slot, seq)[0] for slot, seq in enumerate(sequences))
        with Ops() as decoder_only:
            graph._run(graph.bucket(slots, filled + 1, max(graph.text_lengths)))
        with Ops() as counted:
            for step in range(steps):
                if sampling:
                    graph.decode(slots, filled + 1 + step)
                    for seq in sequences:
                        seq.sampled()
                else:
                    for slot, seq in enumerate(sequences):
                        graph.set_column(slot, seq.window.step_ids())
                    logits = graph.decode(slots, filled + 1 + step)
                    for slot, seq in enumerate(sequences):
                        seq.consume(logits[graph.rows_of(slot, seq.window.rows)])
    return counted.count / steps - decoder_only.count


def sampling_ms(requests: int, vocab: int, codebooks: int, device: torch.device, repeat: int = 100) -> dict[str, float]:
    """Milliseconds per step of each form of sampling alone, for ``requests`` requests (CFG 3, top-k 250)."""
    logits = torch.randn(2 * requests, codebooks, vocab, device=device)
    params = SamplingParams(top_k=250)
    sampler = SlotSampling(requests, device)
    for slot in range(requests):
        sampler.set(slot, params, 2)
    noise = torch.empty(requests, codebooks, vocab, device=device)
    generators = [torch.Generator(device).manual_seed(i) for i in range(requests)]

    def in_step():
        for slot in range(requests):
            noise[slot].exponential_(1, generator=generators[slot])
        sampler.sample(logits[0::2], logits[1::2], noise)

    def host():
        for slot in range(requests):
            sample_next(apply_cfg(logits[2 * slot], logits[2 * slot + 1], params.cfg_scale), params, generators[slot])

    times = {}
    for name, run in (("in_step", in_step), ("host", host)):
        run()
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(repeat):
            run()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times[name] = (time.perf_counter() - started) / repeat * 1e3
    return times


def main() -> int:
    parser = bench.parser(__doc__)
    parser.add_argument("--preset", default="tiny", choices=["tiny", "small", "medium"])
    parser.add_argument("--melody", action="store_true", help="melody checkpoint layout")
    parser.add_argument("--requests", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    model, tokenizer = build_random_model(melody=args.melody, preset=args.preset)
    engine = Engine(model.to(device), tokenizer, precision="fp32", static_step=True)
    n = args.requests
    for form, sampling in (("host", False), ("in_step", True)):
        for requests in (1, n):
            print(f"{form}.ops_{requests}={ops_per_step(engine, n, requests, sampling):.0f}", flush=True)
    decoder = engine.backend.decoder
    for requests in (1, n):
        times = sampling_ms(requests, decoder.vocab_out, decoder.num_codebooks, device)
        for form in ("host", "in_step"):
            print(f"{form}.ms_{requests}={times[form]:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
