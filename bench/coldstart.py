"""Cold start: time of ``MusicGen.load`` (what Cog's setup() runs) next to the time to just read the
checkpoint's files, for musicgen-small shapes saved locally with random weights.

On CPU the safetensors files are memory-mapped: setup pages in the decoder (which the fast decoder copies
or quantizes), while the text encoder and the codec are paged in by the first generation. So the bench
also times a first and a second one-second generation after each setup: their difference is the rest of
the page-in that setup did not pay.

    .venv/bin/python bench/coldstart.py [--preset small]

The file reads come first, so both measurements see the same (warm) page cache; run it with a cold cache
(after a reboot, or `echo 3 > /proc/sys/vm/drop_caches` as root) to see disk-bound figures.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def read_all(directory: Path) -> tuple[float, int]:
    started, total = time.perf_counter(), 0
    for path in sorted(directory.iterdir()):
        with open(path, "rb") as f:
            while block := f.read(64 << 20):
                total += len(block)
    return time.perf_counter() - started, total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small", choices=["tiny", "small", "medium"])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "auto"])
    args = parser.parse_args()
    logging.disable(logging.INFO)
    from musicgen.checkpoints import build_random_checkpoint
    from musicgen.sampling import SamplingParams
    from musicgen.service import MusicGen

    work = Path(tempfile.mkdtemp(prefix="coldstart-"))
    try:
        started = time.perf_counter()
        ckpt = build_random_checkpoint(work / f"musicgen-{args.preset}", preset=args.preset)
        print(f"built {ckpt.name} in {time.perf_counter() - started:.1f}s")
        read_all(ckpt)  # warm the page cache for both sides
        raw_s, size = read_all(ckpt)
        print(f"raw read: {size / 2**30:.2f} GiB in {raw_s:.2f}s ({size / 2**30 / raw_s:.2f} GiB/s)")
        for precision in args.precisions:
            started = time.perf_counter()
            model = MusicGen.load(ckpt, device="cpu", precision=None if precision == "auto" else precision)
            load_s = time.perf_counter() - started
            import resource

            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
            print(f"setup ({model.engine.precision}): {load_s:.2f}s = {load_s / raw_s:.2f}x the raw read "
                  f"(peak RSS so far {peak:.2f} GiB)")
            firsts = []
            for _ in range(2):
                started = time.perf_counter()
                model.engine.generate("warm up", model.engine.frame_rate, SamplingParams(temperature=0.0))
                firsts.append(time.perf_counter() - started)
            print(f"  first 1 s generation {firsts[0]:.2f}s, second {firsts[1]:.2f}s")
            del model
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
