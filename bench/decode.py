"""Decode speed and quality: our engine in each precision against transformers' MusicGen as it comes (fp32)
and with the one-line speed-up a user would pick on the device (CPU: PyTorch's dynamic int8 quantization of
the decoder's linears; GPU: fp16), side by side in one process, on one random-weight model with real
MusicGen shapes (built from configs, nothing downloaded).

Speed: every side generates the same number of frames with text conditioning and CFG 3 (two batch rows),
top-k 250 sampling; only token generation is timed (the EnCodec decode that transformers runs inside
generate() is skipped), prefill included.

Quality: along our fp32 greedy trajectory (fp32 is transformers' logits, see the parity tests), each
precision is fed the same tokens and its next-token distribution (after guidance) compared with fp32's at
every generated cell: mean KL(fp32 || precision) in nats and top-1 agreement. The int8 peer is measured the
same way.

Against the roofline (musicgen_dev/roofline.py): the bytes a step of our default precision must read (its
weights as stored, and the keys and values its two rows attend, on average over the run) times its steps per
second, against this device's measured copy bandwidth.

The figures end as ``key=value`` lines (``bench/gpu_check.py`` collects them): ``ours.*`` for our default
precision, ``peer_fp32.*`` and ``peer_fast.*`` for transformers, ``ratio`` (ours / the fastest peer).

    .venv/bin/python bench/decode.py [--preset small|medium] [--melody] [--seconds 2] [--device cpu|cuda]
                                     [--head-scale 1] [--compile]
"""

from __future__ import annotations

import resource
import sys
import time

import torch

from musicgen.engine.engine import Engine
from musicgen.engine.sampling import SamplingParams, apply_cfg
from musicgen.engine.sequence import Sequence
from musicgen.settings import default_precision
from musicgen_dev import bench, roofline
from musicgen_dev.checkpoints import build_random_model
from musicgen_dev.peers import make_peer, peer_names

TEXT = "80s pop track with bassy drums and synth"
CFG = 3.0


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def say(key: str, value) -> None:
    print(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}", flush=True)


def step_bytes(engine: Engine, frames: int) -> int:
    """What one step of ``engine`` reads on average over ``frames`` frames of TEXT (roofline.request_bytes)."""
    decoder = engine.backend.decoder
    weights = sum(t.numel() * t.element_size() for t in decoder.weights())
    per_position = roofline.kv_bytes_per_position(len(decoder.layers), decoder.hidden, decoder.state_dtype.itemsize)
    text = len(engine.conditioner.tokenizer(TEXT).input_ids)
    prefix = engine.model.config.chroma_length + text if engine.is_melody else 0
    steps = frames + engine.max_delay
    return weights + roofline.request_bytes(per_position, steps, prefix, 0 if engine.is_melody else text) // steps


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_transformers(model, tokenizer, frames: int, device) -> float:
    """Steps per second of transformers' generate() (the EnCodec decode inside it skipped)."""
    delay = model.decoder.num_codebooks - 1
    inputs = {k: v.to(device) for k, v in tokenizer([TEXT], return_tensors="pt").items()}
    original = model.audio_encoder.decode
    model.audio_encoder.decode = lambda codes, *a, **k: type("O", (), {"audio_values": torch.zeros(1, 1, 1)})()
    try:
        with torch.inference_mode():
            kwargs = dict(do_sample=True, top_k=250, guidance_scale=CFG, max_new_tokens=frames + delay)
            model.generate(**inputs, **dict(kwargs, max_new_tokens=8))  # warm-up
            sync(device)
            started = time.perf_counter()
            model.generate(**inputs, **kwargs)
            sync(device)
            elapsed = time.perf_counter() - started
    finally:
        model.audio_encoder.decode = original
    return (frames + delay) / elapsed


def time_ours(engine: Engine, frames: int, device) -> float:
    params = SamplingParams(temperature=1.0, top_k=250, cfg_scale=CFG)
    engine.generate_codes(TEXT, 8, params, torch.Generator(device=device).manual_seed(0))  # warm-up
    sync(device)
    started = time.perf_counter()
    engine.generate_codes(TEXT, frames, params, torch.Generator(device=device).manual_seed(0))
    sync(device)
    return (frames + engine.max_delay) / (time.perf_counter() - started)


@torch.inference_mode()
def trajectory(engine: Engine, frames: int, forced: list[torch.Tensor] | None = None):
    """Greedy decoding of ``frames`` frames on ``engine`` — or, with ``forced``, the decode inputs of another
    run fed instead of its own choices. Returns the inputs fed after the prefill and, per call, the guided
    log-probabilities (K, vocab) with the codebooks whose cell is generated there (K,) bool."""
    greedy = SamplingParams(temperature=0.0, cfg_scale=CFG)
    window = Sequence(engine, engine.conditioner.encode_text(TEXT), frames, greedy).next_window()
    engine.backend.start(window.cond, window.length)
    logits = engine.backend.prefill(window.prefill_ids())
    fed, steps = [], []
    while True:
        generated = (window.s >= window.first_free) & (window.s < window.last_free)
        steps.append((torch.log_softmax(apply_cfg(logits[0], logits[1], CFG).float(), dim=-1).cpu(), generated.cpu()))
        window.consume(logits)
        if window.done:
            return fed, steps
        ids = window.step_ids().clone() if forced is None else forced[len(fed)]
        fed.append(ids)
        logits = engine.backend.step(ids)


def divergence(reference, other) -> tuple[float, float]:
    """Mean KL(reference || other) over the generated cells, and how often their most likely tokens agree."""
    kl, agree, cells = 0.0, 0, 0
    for (ref, mask), (out, _) in zip(reference, other):
        ref, out = ref[mask], out[mask]
        kl += (ref.exp() * (ref - out)).sum().item()
        agree += (ref.argmax(-1) == out.argmax(-1)).sum().item()
        cells += int(mask.sum())
    return kl / cells, agree / cells


def entropy(steps) -> float:
    """Mean entropy of the distributions at the generated cells, in nats."""
    total = sum(-(lp[m].exp() * lp[m]).sum().item() for lp, m in steps)
    return total / sum(int(m.sum()) for _, m in steps)


def main() -> int:
    parser = bench.parser(__doc__)
    parser.add_argument("--preset", default="small", choices=["tiny", "small", "medium"])
    parser.add_argument("--melody", action="store_true", help="melody checkpoint layout (prefix conditioning)")
    parser.add_argument("--seconds", type=float, default=2.0, help="audio generated per timed run")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precisions", nargs="+", help="ours in these precisions only (fp32, the reference, and "
                        "the device's default are always run)")
    parser.add_argument("--compile", action="store_true",
                        help="also time the default precision with the decode step compiled (reports compile time)")
    parser.add_argument("--head-scale", type=float, default=1.0,
                        help="multiply the codebook heads' random weights by this: sharper distributions, nearer a "
                             "trained model's entropy (random weights give near-uniform ones)")
    args = parser.parse_args()
    device = torch.device(args.device)
    frames = int(args.seconds * 50)

    t = time.perf_counter()
    model, tokenizer = build_random_model(melody=args.melody, preset=args.preset, seed=0)
    with torch.no_grad():
        for head in model.decoder.lm_heads:
            head.weight.mul_(args.head_scale)
    model = model.to(device)
    print(f"device={device} threads={torch.get_num_threads()} preset={args.preset} melody={args.melody} "
          f"head_scale={args.head_scale:g} "
          f"decoder_params={sum(p.numel() for p in model.decoder.parameters()) / 1e6:.0f}M "
          f"frames={frames} build_s={time.perf_counter() - t:.1f}", flush=True)
    fp32_peer, fast_peer = peer_names(device)
    peers = {fp32_peer: time_transformers(model, tokenizer, frames, device)}
    print(f"transformers {fp32_peer}: {peers[fp32_peer]:.2f} steps/s ({1000 / peers[fp32_peer]:.1f} ms/step) "
          f"peak_rss={peak_rss_mib():.0f}MiB", flush=True)

    precisions = ["fp32", "bf16", "int8", "int4"] if device.type == "cpu" else ["fp32", "bf16", "fp16"]
    default = default_precision(device)
    if args.precisions:
        precisions = [p for p in precisions if p in ("fp32", default, *args.precisions)]
    results, reference, forced = {}, None, None
    for precision in precisions:
        t = time.perf_counter()
        engine = Engine(model, tokenizer, backend="fast", precision=precision)
        prep = time.perf_counter() - t
        sps = time_ours(engine, frames, device)
        fed, steps = trajectory(engine, frames, forced)
        if reference is None:
            reference, forced = steps, fed
            print(f"fp32 greedy trajectory: {len(fed) + 1} calls, mean entropy of the guided next-token "
                  f"distribution {entropy(reference):.2f} nats (uniform over the codebook: "
                  f"{torch.log(torch.tensor(float(steps[0][0].shape[-1]))).item():.2f}; random weights are "
                  f"flatter than a trained model's)", flush=True)
        kl, top1 = divergence(reference, steps)
        results[precision] = sps
        if precision == default:
            default_bytes = step_bytes(engine, frames)
        print(f"ours {precision}: {sps:.2f} steps/s ({1000 / sps:.1f} ms/step, {50 / sps:.2f} s per s of audio) "
              f"x{sps / peers[fp32_peer]:.2f} vs transformers fp32, KL from fp32 {kl:.2e} nats, "
              f"top-1 agreement {top1 * 100:.1f}%, weight prep {prep:.1f}s, peak_rss={peak_rss_mib():.0f}MiB",
              flush=True)
        del engine
    if args.compile:
        engine = Engine(model, tokenizer, backend="fast", precision=default, compile=True)
        t = time.perf_counter()
        engine.generate_codes(TEXT, 8, SamplingParams(temperature=0.0, cfg_scale=CFG))  # compiles
        compile_s = time.perf_counter() - t
        sps = time_ours(engine, frames, device)
        form = "+ torch.compile" if engine.backend.decoder.compiled else "(torch.compile fell back to eager)"
        print(f"ours {default} {form}: {sps:.2f} steps/s ({1000 / sps:.1f} ms/step) "
              f"x{sps / peers[fp32_peer]:.2f} vs transformers fp32, compile {compile_s:.0f}s", flush=True)
        say("compiled.steps_per_s", sps)
        say("compiled.compiled", engine.backend.decoder.compiled)
        del engine

    model = make_peer(model, fast_peer)
    peers[fast_peer] = time_transformers(model, tokenizer, frames, device)
    _, steps = trajectory(Engine(model, tokenizer, backend="reference"), frames, forced)
    kl, top1 = divergence(reference, steps)
    print(f"transformers {fast_peer}: {peers[fast_peer]:.2f} steps/s ({1000 / peers[fast_peer]:.1f} ms/step), "
          f"KL from fp32 {kl:.2e} nats, top-1 agreement {top1 * 100:.1f}%", flush=True)

    best = max(peers, key=peers.get)
    ours = results[default]
    print(f"default precision on {device.type}: {default} (not compiled); fastest peer: transformers {best} "
          f"({peers[best]:.2f} steps/s); ours x{ours / peers[fp32_peer]:.2f} vs transformers fp32")
    bandwidth = roofline.copy_bandwidth(device, (1 << 30) if device.type == "cuda" else (1 << 26))
    say("copy_gb_per_s", bandwidth / 1e9)
    say("peer_fp32.steps_per_s", peers[fp32_peer])
    say("peer_fast.steps_per_s", peers[fast_peer])
    say("peer_fast.name", fast_peer.replace(" ", "_"))
    say("ours.precision", default)
    say("ours.steps_per_s", ours)
    say("ours.gb_per_s", default_bytes * ours / 1e9)
    say("ours.roofline", roofline.fraction(default_bytes * ours, 1.0, bandwidth))
    say("peak_gpu_gib", torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else "na")
    say("ratio", ours / peers[best])
    return 0


if __name__ == "__main__":
    sys.exit(main())
