"""Where a decode step's time goes, against the memory roofline: one steady-state step of our decoder on real
MusicGen shapes (random weights) taken apart into its parts, each timed on its own over every layer, with the
bytes it must read and the time those bytes take at the machine's measured read bandwidth.

Parts: the block GEMMs (q/k/v, attention output, cross-attention q and output on plain checkpoints, the MLP)
with their activation quantization timed apart from the int8 kernel; the stacked codebook heads; the codebook
embeddings; self-attention over the cache (the melody prefix plus the window so far); cross-attention over the
text; layer norms, GELU, residual adds and the cache write; sampling (guidance, top-k 250 over 2048, per
codebook); and what is left of the measured step (Python and dispatch). Parts timed alone run from warmer
caches than inside the step, so the remainder is a lower bound of the overhead.

    .venv/bin/python bench/profile_step.py [--preset medium] [--melody] [--precision int8] [--context 400]
"""

from __future__ import annotations

import sys
import time

import torch
import torch.nn.functional as F

from musicgen.engine.decoder import layer_norm
from musicgen.engine.engine import Engine
from musicgen.engine.quant import _RANGE_MARKERS
from musicgen.engine.sampling import SamplingParams, apply_cfg, sample_next
from musicgen.engine.sequence import Sequence
from musicgen.settings import default_precision
from musicgen_dev import bench
from musicgen_dev.checkpoints import build_random_model

TEXT = "80s pop track with bassy drums and synth"
BYTES_PER_WEIGHT = {"fp32": 4, "bf16": 2, "fp16": 2, "int8": 1, "int4": 0.5}


def timed(fn, repeat: int) -> float:
    """Seconds per call of ``fn`` (after one warm-up call)."""
    fn()
    started = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - started) / repeat


def read_bandwidth(device: torch.device) -> float:
    """Bytes per second the machine reads: sums over a 1 GiB buffer, best of three."""
    buffer = torch.ones(1 << 28, dtype=torch.float32, device=device)
    best = min(timed(lambda: buffer.sum(), 1) for _ in range(3))
    return buffer.nbytes / best


def main() -> int:
    parser = bench.parser(__doc__)
    parser.add_argument("--preset", default="medium", choices=["tiny", "small", "medium"])
    parser.add_argument("--melody", action="store_true", help="melody checkpoint layout (prefix conditioning)")
    parser.add_argument("--precision", default=None, help="default: the device's default precision")
    parser.add_argument("--context", type=int, default=400, help="frames generated before the measured steps")
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    device = torch.device("cpu")
    precision = args.precision or default_precision(device)
    torch.set_grad_enabled(False)
    torch.inference_mode().__enter__()

    model, tokenizer = build_random_model(melody=args.melody, preset=args.preset, seed=0)
    cfg = model.decoder.config
    engine = Engine(model, tokenizer, precision=precision)
    dec, backend = engine.backend.decoder, engine.backend
    params = SamplingParams(top_k=250, cfg_scale=3.0)
    window = Sequence(engine, engine.conditioner.encode_text(TEXT), args.context + args.repeat * 4, params,
                      torch.Generator().manual_seed(0)).next_window()
    backend.start(window.cond, window.length)
    window.consume(backend.prefill(window.prefill_ids()))
    while window.s < args.context:
        window.consume(backend.step(window.step_ids()))
    keys = backend.filled
    rows, hidden, ffn, layers = window.rows, cfg.hidden_size, cfg.ffn_dim, len(dec.layers)
    step_s = timed(lambda: window.consume(backend.step(window.step_ids())), args.repeat)

    bandwidth = read_bandwidth(device)
    state = torch.tensor([], dtype=dec.state_dtype).element_size()
    per_weight = BYTES_PER_WEIGHT[precision]
    cross = hasattr(dec.layers[0], "q_cross")
    linears = ["qkv", "out"] + (["q_cross", "out_cross"] if cross else []) + ["fc1", "fc2"]
    widths = {"qkv": (hidden, 3 * hidden), "out": (hidden, hidden), "q_cross": (hidden, hidden),
              "out_cross": (hidden, hidden), "fc1": (hidden, ffn), "fc2": (ffn, hidden)}
    inputs = {n: torch.randn(rows, 1, widths[n][0]).to(dec.dtype) for n in linears}
    parts = []  # (name, seconds, bytes)

    def gemms():
        for layer in dec.layers:
            for name in linears:
                getattr(layer, name)(inputs[name])

    gemm_bytes = layers * sum(widths[n][0] * widths[n][1] for n in linears) * per_weight
    whole = timed(gemms, 3)
    first = dec.layers[0].qkv
    if first.kind == "int8-dynamic":  # the kernel alone, on inputs already scaled to [-1, 1] with markers
        marked = {n: torch.cat([inputs[n].reshape(rows, -1) / inputs[n].abs().amax(),
                                torch.tensor(_RANGE_MARKERS).expand(rows, -1)], dim=1) for n in linears}

        def kernels():
            for layer in dec.layers:
                for name in linears:
                    lin = getattr(layer, name)
                    torch.ops.quantized.linear_dynamic(marked[name], lin.weight, lin.reduce_range)

        kernel = timed(kernels, 3)
        parts += [("block GEMMs (int8 kernel)", kernel, gemm_bytes),
                  ("activation quantization (per row)", whole - kernel, 0)]
    else:
        parts.append((f"block GEMMs ({first.kind})", whole, gemm_bytes))

    heads_in = torch.randn(rows, hidden).to(dec.dtype)
    parts.append(("codebook heads", timed(lambda: dec.heads_out(heads_in), args.repeat),
                  cfg.num_codebooks * hidden * dec.vocab_out * per_weight))
    ids = window.step_ids()
    parts.append(("codebook embeddings", timed(lambda: dec.embed(ids), args.repeat),
                  rows * cfg.num_codebooks * hidden * dec.embed_table.element_size()))

    att, caches = dec.attention, dec.caches
    q = torch.randn(rows, att.heads, 1, att.head_dim).to(dec.state_dtype)

    def self_attention():
        for cache in caches:
            att(q, cache.k[:, :, :keys], cache.v[:, :, :keys], None)

    parts.append((f"self-attention ({keys} keys, {dec.state_dtype})".replace("torch.", ""),
                  timed(self_attention, 3), 2 * layers * rows * att.heads * keys * att.head_dim * state))
    if cross:
        text = backend.text

        def cross_attention():
            for kv in text:
                att(q, kv.k, kv.v, kv.mask)

        parts.append((f"cross-attention ({text[0].k.shape[2]} text tokens)", timed(cross_attention, 3),
                      sum(kv.k.nbytes + kv.v.nbytes for kv in text)))

    x = torch.randn(rows, 1, hidden).to(dec.residual_dtype)
    h = torch.randn(rows, 1, ffn).to(dec.dtype)
    pos = torch.tensor([keys])
    kv = torch.randn(rows, att.heads, 1, att.head_dim).to(dec.state_dtype)
    norms = 3 if cross else 2

    def elementwise():
        for layer, cache in zip(dec.layers, caches):
            for _ in range(norms):
                layer_norm(x, layer.ln_self)
            F.gelu(h)
            for _ in range(norms + 1):
                x + x
            cache.update(pos, kv, kv)

    parts.append(("layer norms, GELU, residuals, cache write", timed(elementwise, 3), 0))
    logits = torch.randn(rows, cfg.num_codebooks, dec.vocab_out)
    generator = torch.Generator().manual_seed(0)
    parts.append(("sampling (guidance, top-k 250)", timed(
        lambda: sample_next(apply_cfg(logits[0], logits[1], 3.0), params, generator), args.repeat), 0))
    parts.append(("rest: Python, dispatch, slicing", step_s - sum(s for _, s, _ in parts), 0))

    print(f"preset={args.preset} melody={args.melody} precision={precision} rows={rows} layers={layers} "
          f"keys={keys} threads={torch.get_num_threads()} read bandwidth {bandwidth / 1e9:.1f} GB/s")
    print(f"{'part':44s} {'ms/step':>8s} {'share':>6s} {'MB read':>8s} {'GB/s':>6s} {'roofline ms':>11s}")
    for name, seconds, nbytes in parts:
        rate = f"{nbytes / seconds / 1e9:6.1f}" if nbytes and seconds > 0 else f"{'':6s}"
        roof = f"{nbytes / bandwidth * 1e3:11.2f}" if nbytes else f"{'':11s}"
        print(f"{name:44s} {seconds * 1e3:8.2f} {seconds / step_s * 100:5.0f}% {nbytes / 1e6:8.1f} {rate} {roof}")
    total_bytes = sum(b for _, _, b in parts)
    print(f"{'measured step':44s} {step_s * 1e3:8.2f}  100% {total_bytes / 1e6:8.1f} "
          f"{total_bytes / step_s / 1e9:6.1f} {total_bytes / bandwidth * 1e3:11.2f}")
    print(f"steps_per_s={1 / step_s:.2f} roofline_steps_per_s={bandwidth / total_bytes:.2f} "
          f"fraction_of_roofline={total_bytes / bandwidth / step_s:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
