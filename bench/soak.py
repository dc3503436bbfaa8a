"""Resource soak: 200 sequential predictions on a tiny random-weight checkpoint, mixing text, melody and
continuation, through the Cog predictor (melody requests separate their stems with a random-weight HTDemucs
bag, built here like the checkpoint). Prints RSS at the start, after the warm-up and at the end, and the
files left in the temp directory. Fails (exit 1) when RSS grows by 5 % or more after the warm-up (the
first 50 predictions, or the first quarter of a shorter run: over the last 150 of 200), or when any file is
left behind.

    .venv/bin/python bench/soak.py [--count 200]
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parent.parent

from musicgen_dev import bench  # noqa: E402
WARMUP = 50  # predictions before the RSS that growth is measured from (a quarter of a shorter run)


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def leftovers(tmp: Path, before: set[str]) -> list[Path]:
    return [p for p in tmp.iterdir() if p.name not in before and p.name.startswith("musicgen-")]


def main() -> int:
    parser = bench.parser(__doc__)
    parser.add_argument("--count", type=int, default=200, help="predictions to run (default: 200)")
    args = parser.parse_args()
    if args.count < 2:
        parser.error("--count must be 2 or more: growth is measured after a warm-up")
    warmup = min(WARMUP, max(1, args.count // 4))
    logging.disable(logging.INFO)  # per-step progress lines would drown the report

    from cog import Path as CogPath

    from musicgen.inputs import DEFAULTS
    from musicgen_dev.checkpoints import build_random_checkpoint
    from musicgen_dev.separation import build_random_stems

    work = bench.work_dir("soak-")
    ckpt = build_random_checkpoint(work / "melody", melody=True, seed=3)
    t = np.arange(3 * 32000) / 32000
    clip = work / "clip.wav"
    sf.write(clip, (0.4 * np.sin(2 * np.pi * 330 * t)).astype(np.float32), 32000)

    os.environ["MUSICGEN_WEIGHTS"] = str(ckpt)
    os.environ["MUSICGEN_STEMS_WEIGHTS"] = str(build_random_stems(work / "htdemucs"))
    spec = importlib.util.spec_from_file_location("predict", ROOT / "predict.py")  # as Cog loads it
    predict = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(predict)
    Predictor = predict.Predictor

    predictor = Predictor()
    predictor.setup()
    tmp = Path(tempfile.gettempdir())
    before = {p.name for p in tmp.iterdir()}
    base = {**DEFAULTS, "prompt": "soak test", "duration": 1}
    kinds = [
        dict(),
        dict(input_audio=CogPath(clip), output_format="mp3"),
        # duration is the whole output, the continued second included: 1 s of the clip and 1 s new
        dict(input_audio=CogPath(clip), continuation=True, continuation_start=1, continuation_end=2, duration=2,
             normalization_strategy="peak"),
    ]
    rss = {"start": rss_mib()}
    started = time.monotonic()
    for i in range(args.count):
        out = bench.predict_files(predictor, **{**base, **kinds[i % len(kinds)], "seed": i})
        assert Path(out[0]).is_file()
        if i + 1 == warmup:
            rss["warm"] = rss_mib()
    rss["end"] = rss_mib()
    predictor.musicgen.release_outputs()
    left = leftovers(tmp, before)
    growth = (rss["end"] - rss["warm"]) / rss["warm"] * 100
    print(f"predictions={args.count} seconds={time.monotonic() - started:.1f}")
    print(f"rss_start_mib={rss['start']:.1f} rss_after_{warmup}_mib={rss['warm']:.1f} rss_end_mib={rss['end']:.1f}")
    print(f"rss_growth_last_{args.count - warmup}_pct={growth:.2f} files_left={len(left)}")
    ok = growth < 5.0 and not left
    print("soak: OK" if ok else "soak: FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
