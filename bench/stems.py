"""Melody stem separation: how long HTDemucs takes for 30 s of melody (what one melody request of up to 30 s
separates), and how much of a rendered mix's chroma follows its melody with and without stems.

The mix: a melody (one note per 0.5 s) over a bass line and noise drums, the accompaniment 0, +3 and +6 dB
louder than the melody. Agreement is the share of chroma frames whose pitch class is the melody's own.
Without real weights (``--stems-weights``, e.g. weights/htdemucs from ``make weights``) the separator is a
random-weight HTDemucs with the real shapes: its time is real, its separation is noise, so its agreement
figure says nothing about quality (the raw-mix figures do not depend on it).

    .venv/bin/python bench/stems.py [--seconds 30] [--device cpu|cuda] [--stems-weights DIR]
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch

from musicgen.engine.chroma import chroma
from musicgen.engine.stems import StemSeparator
from musicgen_dev import bench

SR = 32000
NOTES = [261.63, 293.66, 329.63, 349.23, 392.0, 440.0, 493.88, 523.25]


def render(seconds: float, accompaniment_db: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(mix, melody alone), mono at 32 kHz."""
    t = np.arange(int(seconds * SR)) / SR
    note = np.array(NOTES)[(t // 0.5).astype(int) % len(NOTES)]
    melody = 0.2 * np.sin(2 * np.pi * note * t)
    bass_note = np.array([65.41, 87.31, 98.0, 82.41])[(t // 2.0).astype(int) % 4]
    bass = np.sin(2 * np.pi * bass_note * t) + 0.5 * np.sin(4 * np.pi * bass_note * t)
    hits = (t % 0.25) < 0.03
    drums = np.random.default_rng(0).uniform(-1, 1, t.size) * hits
    accompaniment = bass + drums
    gain = np.sqrt(np.mean(melody**2) / np.mean(accompaniment**2)) * 10 ** (accompaniment_db / 20)
    mix = melody + gain * accompaniment
    return torch.from_numpy(mix.astype(np.float32)), torch.from_numpy(melody.astype(np.float32))


def agreement(wav: torch.Tensor, melody: torch.Tensor) -> float:
    return float((chroma(wav, SR).argmax(1) == chroma(melody, SR).argmax(1)).float().mean())


def main() -> int:
    parser = bench.parser(__doc__)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--stems-weights", type=Path, default=None, help="a real HTDemucs bag (htdemucs.yaml + safetensors)")
    args = parser.parse_args()
    logging.disable(logging.INFO)
    device = torch.device(args.device)
    if args.stems_weights is None:
        from musicgen_dev.separation import build_random_stems

        directory, kind = build_random_stems(bench.work_dir("stems-") / "htdemucs", preset="full"), "random weights"
    else:
        directory, kind = args.stems_weights, "real weights"
    separator = StemSeparator.load(directory, device)
    params = sum(p.numel() for p in separator.model.parameters())
    print(f"device={device} threads={torch.get_num_threads()} separator=htdemucs ({kind}, {params / 1e6:.1f}M params)")

    mix, melody = render(args.seconds, 0.0)
    separator.melody(mix[None, : SR * 2], SR)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    separator.melody(mix[None], SR)
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - started
    print(f"separation of {args.seconds:.0f} s of melody: {elapsed:.2f} s ({args.seconds / elapsed:.1f}x real time)")
    started = time.perf_counter()
    separator.melody(mix[None], SR)
    print(f"the same melody again (cache): {1000 * (time.perf_counter() - started):.1f} ms")

    for db in (0.0, 3.0, 6.0):
        mix, melody = render(args.seconds, db)
        stems = separator.melody(mix[None], SR)
        print(f"accompaniment {db:+.0f} dB: chroma on the melody's pitch class: raw mix {agreement(mix, melody):.1%}, "
              f"vocals + other stems {agreement(stems, melody):.1%} ({kind})")
    print(f"separation_s={elapsed:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
