"""Peak memory of long generation: 60 s vs 300 s on a tiny random-weight checkpoint (full 30 s windows,
18 s stride), each in its own process so that peak RSS is its own. Memory should be bounded by one window
(KV cache, codec chunk) plus the output audio itself.

    .venv/bin/python bench/long_memory.py [--durations 60 300]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from musicgen_dev import bench



def child(checkpoint: str, duration: int) -> None:
    import logging

    logging.disable(logging.INFO)
    from musicgen import GenerationRequest, MusicGen

    model = MusicGen.load(checkpoint)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.monotonic()
    [path] = model.predict(GenerationRequest(prompt="long piece", duration=duration, seed=1)).paths
    import soundfile as sf

    print(json.dumps({
        "duration": duration, "seconds": round(time.monotonic() - started, 1),
        "rss_after_load_mib": round(base, 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "output_seconds": sf.info(str(path)).frames / 32000,
    }))
    model.release_outputs()


def main() -> int:
    parser = bench.parser(__doc__)
    parser.add_argument("--durations", type=int, nargs="+", default=[60, 300])
    parser.add_argument("--child", nargs=2, metavar=("CHECKPOINT", "DURATION"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]))
        return 0
    from musicgen_dev.checkpoints import build_random_checkpoint

    ckpt = build_random_checkpoint(bench.work_dir("longmem-") / "plain")
    for duration in args.durations:
        out = subprocess.run([sys.executable, __file__, "--child", str(ckpt), str(duration)],
                             capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"duration={r['duration']}s output={r['output_seconds']:.0f}s wall={r['seconds']}s "
              f"rss_after_load={r['rss_after_load_mib']}MiB peak_rss={r['peak_rss_mib']}MiB "
              f"growth={r['peak_rss_mib'] - r['rss_after_load_mib']:.1f}MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
