"""Cold start: time of ``MusicGen.load`` (what Cog's setup() runs) next to the time to just read the
checkpoint's files, for musicgen-small shapes saved locally with random weights.

    .venv/bin/python bench/coldstart.py [--preset small] [--precisions fp32 auto] [--device cpu|cuda]

Each setup runs in a fresh Python process, as a container's would; the time to import the libraries
is printed apart. The file reads come first, so every measurement sees the same (warm) page cache; run
it with a cold cache (after a reboot, or `echo 3 > /proc/sys/vm/drop_caches` as root) for disk-bound
figures. After each setup the process also times a first and a second one-second generation: parts of
the checkpoint that setup leaves mapped are read by the first one.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

from musicgen_dev import bench  # noqa: E402


def read_all(directory: Path) -> tuple[float, int]:
    started, total = time.perf_counter(), 0
    for path in sorted(directory.iterdir()):
        with open(path, "rb") as f:
            while block := f.read(64 << 20):
                total += len(block)
    return time.perf_counter() - started, total


def measure(checkpoint: str, precision: str, device: str) -> None:
    """In a fresh process: import, load, generate twice; print one JSON line (on CUDA with the bytes the
    load placed on the device: at its peak and once loaded)."""
    import logging
    import resource

    started = time.perf_counter()
    from transformers import (  # noqa: F401  (imported here so that setup_s is the load alone)
        AutoTokenizer, MusicgenForConditionalGeneration, MusicgenMelodyForConditionalGeneration)

    from musicgen.engine.sampling import SamplingParams
    from musicgen.serving.service import MusicGen

    imported = time.perf_counter()
    logging.disable(logging.INFO)
    import torch

    model = MusicGen.load(checkpoint, device=device, precision=None if precision == "auto" else precision)
    loaded = time.perf_counter()
    device_memory = {}
    if device == "cuda":
        device_memory = {"device_peak_gib": torch.cuda.max_memory_allocated() / 2**30,
                         "device_loaded_gib": torch.cuda.memory_allocated() / 2**30}
    firsts = []
    for _ in range(2):
        t = time.perf_counter()
        model.engine.generate_codes("warm up", model.engine.frame_rate, SamplingParams(temperature=0.0))
        firsts.append(time.perf_counter() - t)
    print(json.dumps({"precision": model.engine.precision, "import_s": imported - started,
                      "setup_s": loaded - imported, "first_s": firsts[0], "second_s": firsts[1],
                      "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, **device_memory}))


def main() -> int:
    parser = bench.parser(__doc__)
    parser.add_argument("--preset", default="small", choices=["tiny", "small", "medium"])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "auto"])
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    parser.add_argument("--measure", nargs=3, metavar=("CHECKPOINT", "PRECISION", "DEVICE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        measure(*args.measure)
        return 0
    import torch

    from musicgen_dev.checkpoints import build_random_checkpoint

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    work = bench.work_dir("coldstart-")
    started = time.perf_counter()
    ckpt = build_random_checkpoint(work / f"musicgen-{args.preset}", preset=args.preset)
    print(f"built {ckpt.name} in {time.perf_counter() - started:.1f}s")
    for precision in args.precisions:
        read_all(ckpt)  # warm the page cache
        raw_s, size = read_all(ckpt)
        done = subprocess.run([sys.executable, __file__, "--measure", str(ckpt), precision, device],
                              capture_output=True, text=True, check=True)
        r = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"raw read: {size / 2**30:.2f} GiB in {raw_s:.2f}s; setup ({r['precision']}): "
              f"{r['setup_s']:.2f}s = {r['setup_s'] / raw_s:.2f}x the raw read (imports before it "
              f"{r['import_s']:.1f}s); first 1 s generation {r['first_s']:.2f}s, second "
              f"{r['second_s']:.2f}s; peak RSS {r['peak_rss_gib']:.2f} GiB"
              + (f"; on the GPU: peak {r['device_peak_gib']:.2f} GiB during setup, {r['device_loaded_gib']:.2f} "
                 "GiB once loaded" if "device_peak_gib" in r else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
