"""End to end: wall time from a request to a written file for 8 s of audio, ours against transformers'
MusicGen as it comes (fp32) and with the one-line speed-up a user would pick on the device (CPU: dynamic int8
quantization of the decoder; GPU: fp16), in one process on the same random-weight model with real MusicGen
shapes (``--preset medium --melody`` is the default checkpoint, musicgen-melody).

Ours: ``MusicGen.predict`` (text encoding, decoding in the default precision, EnCodec decode, loudness
normalization, WAV write). Peers: tokenizer + transformers ``generate()`` (same sampling settings; it decodes
the audio itself) followed by the same normalization and writer.

    .venv/bin/python bench/e2e.py [--preset small|medium] [--melody] [--seconds 8]
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import torch

from musicgen import GenerationRequest
from musicgen.engine.engine import Engine
from musicgen.audio.normalize import normalize
from musicgen.audio.output import write_audio
from musicgen.serving.service import MusicGen
from musicgen.settings import default_precision
from musicgen_dev import bench
from musicgen_dev.checkpoints import build_random_model
from musicgen_dev.peers import make_peer, peer_names

PROMPT = "lofi hip hop beat with mellow piano"


def peer_request(model, tokenizer, seconds: int, device, out_dir: Path, stem: str) -> float:
    """Seconds from the prompt to a written WAV with transformers' generate()."""
    started = time.perf_counter()
    with torch.inference_mode():
        inputs = {k: v.to(device) for k, v in tokenizer([PROMPT], return_tensors="pt").items()}
        audio = model.generate(**inputs, do_sample=True, top_k=250, guidance_scale=3.0,
                               max_new_tokens=seconds * 50 + model.decoder.num_codebooks - 1)
    rate = model.config.audio_encoder.sampling_rate
    write_audio(normalize(audio[0].float().cpu().numpy(), rate, "loudness"), rate, out_dir, "wav", stem=stem)
    return time.perf_counter() - started


def main() -> int:
    parser = bench.parser(__doc__)
    parser.add_argument("--preset", default="small", choices=["tiny", "small", "medium"])
    parser.add_argument("--melody", action="store_true", help="melody checkpoint layout (the default checkpoint)")
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    logging.disable(logging.INFO)
    device = torch.device(args.device)
    model, tokenizer = build_random_model(preset=args.preset, melody=args.melody, seed=0)
    model = model.to(device)
    out_dir = bench.work_dir("e2e-")
    print(f"device={device} preset={args.preset} melody={args.melody} audio={args.seconds}s", flush=True)

    precision = default_precision(device)
    ours = MusicGen(Engine(model, tokenizer, precision=precision), f"random-{args.preset}")
    ours.predict(GenerationRequest(prompt=PROMPT, duration=1, seed=1), output_dir=out_dir)  # warm-up
    started = time.perf_counter()
    ours.predict(GenerationRequest(prompt=PROMPT, duration=args.seconds, seed=1), output_dir=out_dir)
    ours_s = time.perf_counter() - started
    print(f"ours ({precision}) request -> WAV: {ours_s:.1f} s", flush=True)
    del ours

    peers = {}
    for name in peer_names(device):
        model = make_peer(model, name)
        peer_request(model, tokenizer, 1, device, out_dir, "warm-up")
        peers[name] = peer_request(model, tokenizer, args.seconds, device, out_dir, name.replace(" ", "-"))
        print(f"transformers {name} generate() + WAV: {peers[name]:.1f} s (x{peers[name] / ours_s:.2f} ours)",
              flush=True)
    best = min(peers, key=peers.get)
    print(f"speedup={peers[best] / ours_s:.2f} ours_s={ours_s:.1f} best_peer_s={peers[best]:.1f} "
          f"(transformers {best})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
