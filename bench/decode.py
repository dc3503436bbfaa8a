"""Decode speed: transformers ``generate()`` vs our engine, side by side in one process, on the same
random-weight model with real MusicGen shapes (built from configs, nothing downloaded).

Both sides generate the same number of frames with text conditioning and CFG 3 (two batch rows), top-k 250
sampling; only token generation is timed (the EnCodec decode that transformers runs inside generate() is
skipped on both sides). Ours runs in each precision the device supports; greedy tokens of the reduced
precisions are compared with our fp32 tokens (agreement). The last line is
``ratio=<ours/transformers steps per second> steps_per_s=<ours>`` for our default precision.

    .venv/bin/python bench/decode.py [--preset small] [--melody] [--seconds 2] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import resource
import sys
import time

import torch


from musicgen_dev.checkpoints import build_random_model
from musicgen.engine import Engine
from musicgen.sampling import SamplingParams
from musicgen.settings import default_precision

TEXT = "80s pop track with bassy drums and synth"


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_reference(model, tokenizer, frames: int, delay: int, device) -> tuple[float, torch.Tensor]:
    inputs = {k: v.to(device) for k, v in tokenizer([TEXT], return_tensors="pt").items()}
    captured = []
    original = model.audio_encoder.decode
    model.audio_encoder.decode = lambda codes, *a, **k: captured.append(codes) or type("O", (), {"audio_values": torch.zeros(1, 1, 1)})()
    try:
        with torch.inference_mode():
            kwargs = dict(do_sample=True, top_k=250, guidance_scale=3.0, max_new_tokens=frames + delay)
            model.generate(**inputs, **dict(kwargs, max_new_tokens=8))  # warm-up
            sync(device)
            started = time.perf_counter()
            model.generate(**inputs, **kwargs)
            sync(device)
            elapsed = time.perf_counter() - started
    finally:
        model.audio_encoder.decode = original
    return (frames + delay) / elapsed, captured[-1]


def time_ours(engine: Engine, frames: int, device) -> float:
    params = SamplingParams(temperature=1.0, top_k=250, cfg_scale=3.0)
    engine.generate_codes(TEXT, 8, params, torch.Generator(device=device).manual_seed(0))  # warm-up
    sync(device)
    started = time.perf_counter()
    engine.generate_codes(TEXT, frames, params, torch.Generator(device=device).manual_seed(0))
    sync(device)
    return (frames + engine.max_delay) / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small", choices=["tiny", "small", "medium"])
    parser.add_argument("--melody", action="store_true", help="melody checkpoint layout (prefix conditioning)")
    parser.add_argument("--seconds", type=float, default=2.0, help="audio generated per timed run")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--compile", action="store_true",
                        help="also time the default precision with the decode step compiled (reports compile time)")
    args = parser.parse_args()
    device = torch.device(args.device)
    frames = int(args.seconds * 50)

    t = time.perf_counter()
    model, tokenizer = build_random_model(melody=args.melody, preset=args.preset, seed=0)
    model = model.to(device)
    print(f"device={device} threads={torch.get_num_threads()} preset={args.preset} melody={args.melody} "
          f"decoder_params={sum(p.numel() for p in model.decoder.parameters()) / 1e6:.0f}M "
          f"frames={frames} build_s={time.perf_counter() - t:.1f}")
    delay = model.decoder.num_codebooks - 1

    ref_sps, _ = time_reference(model, tokenizer, frames, delay, device)
    print(f"transformers generate() fp32: {ref_sps:.2f} steps/s ({1000 / ref_sps:.1f} ms/step, "
          f"{50 / ref_sps:.2f} s per s of audio) peak_rss={peak_rss_mib():.0f}MiB")

    precisions = ["fp32", "bf16", "int8", "int4"] if device.type == "cpu" else ["fp32", "bf16", "fp16"]
    default = default_precision(device)
    greedy = SamplingParams(temperature=0.0, cfg_scale=3.0)
    results, reference_tokens = {}, None
    for precision in precisions:
        t = time.perf_counter()
        engine = Engine(model, tokenizer, backend="fast", precision=precision)
        prep = time.perf_counter() - t
        sps = time_ours(engine, frames, device)
        tokens = engine.generate_codes(TEXT, frames, greedy)
        if reference_tokens is None:
            reference_tokens = tokens
        agreement = (tokens == reference_tokens).float().mean().item()
        results[precision] = sps
        print(f"ours {precision}: {sps:.2f} steps/s ({1000 / sps:.1f} ms/step, {50 / sps:.2f} s per s of audio) "
              f"x{sps / ref_sps:.2f} vs transformers, greedy agreement with fp32 {agreement * 100:.1f}%, "
              f"weight prep {prep:.1f}s, peak_rss={peak_rss_mib():.0f}MiB")
        del engine
    if args.compile:
        engine = Engine(model, tokenizer, backend="fast", precision=default, compile=True)
        t = time.perf_counter()
        engine.generate_codes(TEXT, 8, greedy)  # compiles
        compile_s = time.perf_counter() - t
        sps = time_ours(engine, frames, device)
        print(f"ours {default} + torch.compile: {sps:.2f} steps/s ({1000 / sps:.1f} ms/step) "
              f"x{sps / ref_sps:.2f} vs transformers, compile {compile_s:.0f}s")
    ours = results[default]
    print(f"default precision on {device.type}: {default} (not compiled)")
    print(f"ratio={ours / ref_sps:.2f} steps_per_s={ours:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
