"""End to end: wall time from a request to a written file for 8 s of audio, ours vs transformers, in one
process on the same random-weight model with real MusicGen shapes.

Ours: ``MusicGen.predict`` (text encoding, decoding in the default precision, EnCodec decode, loudness
normalization, WAV write). Reference: tokenizer + transformers ``generate()`` (fp32, same sampling settings;
it decodes the audio itself) followed by the same normalization and writer.

    .venv/bin/python bench/e2e.py [--preset small] [--seconds 8]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import torch


from musicgen import GenerationRequest
from musicgen_dev.checkpoints import build_random_model
from musicgen.engine import Engine
from musicgen.normalize import normalize
from musicgen.output import write_audio
from musicgen.service import MusicGen
from musicgen.settings import default_precision

PROMPT = "lofi hip hop beat with mellow piano"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small", choices=["tiny", "small", "medium"])
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    logging.disable(logging.INFO)
    device = torch.device(args.device)
    model, tokenizer = build_random_model(preset=args.preset, seed=0)
    model = model.to(device)
    out_dir = Path(tempfile.mkdtemp(prefix="e2e-"))

    precision = default_precision(device)
    ours = MusicGen(Engine(model, tokenizer, precision=precision), f"random-{args.preset}")
    request = GenerationRequest(prompt=PROMPT, duration=args.seconds, seed=1)
    ours.predict(GenerationRequest(prompt=PROMPT, duration=1, seed=1), output_dir=out_dir)  # warm-up
    started = time.perf_counter()
    [path] = ours.predict(request, output_dir=out_dir).paths
    ours_s = time.perf_counter() - started

    frames = args.seconds * 50
    started = time.perf_counter()
    with torch.inference_mode():
        inputs = {k: v.to(device) for k, v in tokenizer([PROMPT], return_tensors="pt").items()}
        audio = model.generate(**inputs, do_sample=True, top_k=250, guidance_scale=3.0,
                               max_new_tokens=frames + model.decoder.num_codebooks - 1)
    wav = normalize(audio[0].float().cpu().numpy(), model.config.audio_encoder.sampling_rate, "loudness")
    ref_path = write_audio(wav, model.config.audio_encoder.sampling_rate, out_dir, "wav", stem="reference")
    ref_s = time.perf_counter() - started

    print(f"device={device} preset={args.preset} audio={args.seconds}s")
    print(f"transformers generate() fp32 + write: {ref_s:.1f} s ({ref_path.name})")
    print(f"ours ({precision}) request -> file: {ours_s:.1f} s ({path.name})")
    print(f"speedup={ref_s / ours_s:.2f} ours_s={ours_s:.1f} reference_s={ref_s:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
