"""Streaming, measured: how soon a person hears the first note and whether playback would stall, with 1, 4 and 8
requests streaming at once through ``MusicGen.stream`` (ours only: no peer streams MusicGen from a batched engine).

Each client asks for ``--seconds`` of music from a text prompt (random-weight checkpoint with real shapes:
``--preset small`` is musicgen-small's, ``--preset medium --melody`` musicgen-melody's) and takes its chunks
(``--chunk`` seconds each) as they come. Printed, one ``key=value`` per line, for each client count N:

- ``cN.ttfa_s`` (median) and ``cN.ttfa_max_s``: time to first audio, from the request to its first chunk;
- ``cN.rtf``: the median request's seconds of audio per second of wall time (above 1: faster than real time);
- ``cN.stall_s``: the largest lateness of a chunk against playback that starts with the first chunk and plays
  at real time (0: a player would never have run dry; a positive figure is the longest gap it would hear).

    python bench/stream.py [--preset small] [--melody] [--seconds 10] [--clients 1 4 8] [--chunk 1.0] [--device cpu]
"""

from __future__ import annotations

import logging
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from musicgen import GenerationRequest  # noqa: E402
from musicgen_dev import bench  # noqa: E402
from musicgen_dev.checkpoints import build_random_checkpoint  # noqa: E402

PROMPT = "lofi hip hop beat with mellow piano and soft drums"


def say(key: str, value) -> None:
    print(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}", flush=True)


def listen(model, seconds: int, seed: int, chunk: float) -> dict[str, float]:
    """One streamed request: its time to first audio, real-time factor and largest stall."""
    begun = time.perf_counter()
    arrivals = []
    with model.stream(GenerationRequest(prompt=PROMPT, duration=seconds, seed=seed), chunk_seconds=chunk) as stream:
        for piece in stream:
            arrivals.append((time.perf_counter() - begun, piece.start))
    wall = time.perf_counter() - begun
    first = arrivals[0][0]
    # playback starts with the first chunk; a chunk is due when the audio before it has played
    stall = max(0.0, *(arrived - (first + start) for arrived, start in arrivals))
    return {"ttfa": first, "rtf": seconds / wall, "stall": stall}


def main() -> int:
    parser = bench.parser(__doc__)
    parser.add_argument("--preset", default="small", choices=["tiny", "small", "medium"])
    parser.add_argument("--melody", action="store_true", help="melody checkpoint layout (prefix conditioning)")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--chunk", type=float, default=1.0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from musicgen import MusicGen

    work = bench.work_dir("stream-")
    checkpoint = build_random_checkpoint(work / "checkpoint", melody=args.melody, preset=args.preset)
    model = MusicGen.load(checkpoint, device=args.device, concurrency=max(args.clients))
    say("checkpoint", f"{args.preset}{'-melody' if args.melody else ''}")
    say("device", args.device)
    say("slots", model.scheduler.slots)
    listen(model, 1, 0, args.chunk)  # lazily built pieces (text encoder kernels, codec) outside the figures
    for clients in args.clients:
        results: list[dict[str, float]] = []
        lock = threading.Lock()

        def client(index: int) -> None:
            result = listen(model, args.seconds, 100 * clients + index, args.chunk)
            with lock:
                results.append(result)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        say(f"c{clients}.ttfa_s", statistics.median(r["ttfa"] for r in results))
        say(f"c{clients}.ttfa_max_s", max(r["ttfa"] for r in results))
        say(f"c{clients}.rtf", statistics.median(r["rtf"] for r in results))
        say(f"c{clients}.stall_s", max(r["stall"] for r in results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
