"""The memory plan against a real card: load a random-weight checkpoint of real shapes on CUDA, print the plan
setup made, then run as many requests at once as it has slots (plus as many waiting), each a full 30 s window
with a long prompt (melody: with a melody), and print the device's peak next to what the plan allowed.

    .venv/bin/python bench/gpu_plan.py [--preset medium] [--melody] [--seconds 30]

On a CPU it says so and stops (the plan is made on CUDA only).
"""

from __future__ import annotations

import logging
import sys
import threading

import numpy as np
import soundfile as sf
import torch
from musicgen_dev import bench


def main() -> None:
    parser = bench.parser(__doc__)
    parser.add_argument("--preset", default="medium", choices=["tiny", "small", "medium"])
    parser.add_argument("--melody", action="store_true")
    parser.add_argument("--seconds", type=int, default=30)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA GPU: the memory plan is made on CUDA only")
        return
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
    from musicgen import GenerationRequest
    from musicgen.serving.service import MusicGen
    from musicgen_dev.checkpoints import build_random_checkpoint

    work = bench.work_dir("gpu-plan-")
    checkpoint = build_random_checkpoint(work / f"musicgen-{args.preset}", melody=args.melody, preset=args.preset)
    if args.melody:
        from musicgen_dev.separation import build_random_stems
        import os

        os.environ["MUSICGEN_STEMS_WEIGHTS"] = str(build_random_stems(work / "htdemucs", preset="full"))
    model = MusicGen.load(checkpoint, device="cuda")
    plan = model.memory_plan
    print("plan:", plan.describe())
    melody = None
    if args.melody:
        melody = work / "melody.wav"
        t = np.arange(32000 * args.seconds) / 32000
        sf.write(melody, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 32000)
    torch.cuda.reset_peak_memory_stats()
    requests = [GenerationRequest(prompt="lofi beat with piano " * 20, duration=args.seconds, seed=i,
                                  input_audio=melody) for i in range(2 * plan.slots)]
    errors = []

    def one(req):
        try:
            model.predict(req)
        except Exception as exc:  # noqa: BLE001  (reported below)
            errors.append(repr(exc))

    threads = [threading.Thread(target=one, args=(r,)) for r in requests]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    peak = torch.cuda.max_memory_allocated()
    print(f"requests {len(requests)}, failed {len(errors)} {errors[:2]}")
    print(f"device peak {peak / 1e9:.2f} GB; plan: weights + KV cache + headroom = "
          f"{(plan.weights + plan.kv_cache + plan.headroom) / 1e9:.2f} GB of {plan.free / 1e9:.2f} GB usable")


if __name__ == "__main__":
    main()
