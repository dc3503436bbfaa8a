"""Kernels per layer of the served decode step, compiled: the fixed-shape step through torch.compile (inductor),
as the image serves it on a GPU, with one and with two decoder layers of a random checkpoint; the launches in
each compiled program are counted and their difference is one layer's (musicgen_dev/kernels.py). On a CPU
inductor writes C++ kernels, on a GPU Triton ones, so each device gives its own figure.

    .venv/bin/python bench/kernels.py [--preset tiny|small|medium] [--melody] [--device cuda] [--precision bf16]

Prints key=value lines: generated (inductor's fused kernels), extern (GEMMs and attention from the vendor
libraries), fallback (ATen ops left as they are) and kernels_per_layer (their sum).
"""

from __future__ import annotations

import sys

import torch

from musicgen_dev import bench
from musicgen_dev.checkpoints import build_random_model
from musicgen_dev.kernels import per_layer


def main() -> int:
    parser = bench.parser(__doc__)
    parser.add_argument("--preset", default="tiny", choices=["tiny", "small", "medium"])
    parser.add_argument("--melody", action="store_true", help="melody checkpoint layout (no cross-attention)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default=None, help="default: bf16 on CUDA, fp32 on a CPU")
    args = parser.parse_args()
    device = torch.device(args.device)
    precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    counted = per_layer(lambda: build_random_model(melody=args.melody, preset=args.preset), precision, device)
    print(f"checkpoint={args.preset}{'-melody' if args.melody else ''} device={device.type} precision={precision}")
    for key in ("generated", "extern", "fallback"):
        print(f"{key}={getattr(counted, key)}")
    print(f"kernels_per_layer={counted.total}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
