"""Batch generation on Ray against the single-process batch: clips per minute for the same job file with
the single-process ``musicgen batch`` and with ``--ray`` on a local cluster of 1 and 2 workers, and the
scheduling overhead per job (Ray's wall time once its worker has loaded the model, minus the single-process
one, per job, at one worker with the same cores). Random weights with real shapes, written as a checkpoint the workers load like real weights.

    .venv/bin/python bench/distributed.py [--preset small] [--jobs 8] [--seconds 4]
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from musicgen_dev import bench


def main() -> int:
    parser = bench.parser(__doc__)
    parser.add_argument("--preset", default="small", choices=["tiny", "small", "medium"])
    parser.add_argument("--melody", action="store_true")
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--seconds", type=int, default=4, help="audio per job")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import ray

    from musicgen.serving.batch import run_batch
    from musicgen.serving.distributed import RayBatch
    from musicgen.serving.service import MusicGen
    from musicgen_dev.checkpoints import build_random_checkpoint

    root = bench.work_dir("bench-distributed-")
    checkpoint = build_random_checkpoint(root / "model", melody=args.melody, preset=args.preset, seed=0)
    jobs = root / "jobs.jsonl"
    jobs.write_text("\n".join(json.dumps({"prompt": f"lofi beat {i}", "duration": args.seconds, "seed": i})
                              for i in range(args.jobs)))
    cores = os.cpu_count() or 1
    print(f"preset={args.preset} melody={args.melody} jobs={args.jobs} audio={args.seconds}s cores={cores} "
          f"device=cpu", flush=True)

    started = time.perf_counter()
    model = MusicGen.load(checkpoint, device="cpu")
    load_s = time.perf_counter() - started
    started = time.perf_counter()
    assert run_batch(model, jobs, root / "single") == 0
    single_s = time.perf_counter() - started
    slots = model.scheduler.slots
    del model
    print(f"single process ({slots} slots, {cores} cores): {60 * args.jobs / single_s:.1f} clips/min "
          f"({single_s:.1f} s, model load {load_s:.1f} s not counted)", flush=True)

    ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False)
    figures = {}
    try:
        for actors in (1, 2):
            per = max(1, cores // actors)
            batch = RayBatch(jobs, root / f"ray-{actors}", weights=checkpoint, device="cpu", actors=actors,
                             cpus_per_actor=per)
            started = time.perf_counter()
            assert batch.run() == 0
            wall = time.perf_counter() - started
            figures[actors] = (wall, batch.startup_s)
            same = sum((root / f"ray-{actors}" / p.name).read_bytes() == p.read_bytes()
                       for p in (root / "single").glob("*.wav"))
            print(f"ray, {actors} worker(s) x {per} core(s): {60 * args.jobs / wall:.1f} clips/min ({wall:.1f} s, "
                  f"of which {batch.startup_s:.1f} s starting the workers and loading the model in each; "
                  f"{60 * args.jobs / (wall - batch.startup_s):.1f} clips/min once loaded); files identical to the "
                  f"single process's: {same}/{args.jobs}", flush=True)
    finally:
        ray.shutdown()
    wall, startup = figures[1]
    overhead = (wall - startup - single_s) / args.jobs
    print(f"scheduling overhead per job (ray with 1 worker once loaded, minus single process, per job): "
          f"{overhead * 1e3:+.0f} ms")
    print(f"clips_per_min_1={60 * args.jobs / figures[1][0]:.1f} clips_per_min_2={60 * args.jobs / figures[2][0]:.1f} "
          f"single={60 * args.jobs / single_s:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
