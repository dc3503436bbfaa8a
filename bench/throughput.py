"""Throughput of concurrent requests: seconds of audio produced per wall-clock second with 1, 2, 4 and 8
clients, and each request's latency (p50/p95), through the library (``MusicGen.predict`` from as many
threads, decoded together by the scheduler) and, with ``--http``, through Cog's HTTP server. Random weights
with real shapes; every client sends the same kind of request (a text prompt, CFG 3, top-k 250).

    .venv/bin/python bench/throughput.py [--preset small] [--melody] [--seconds 4] [--clients 1 2 4 8] [--http]
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

from musicgen_dev import bench  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def run_clients(call, clients: int, per_client: int) -> tuple[float, list[float]]:
    """Wall time for ``clients`` threads each making ``per_client`` calls, and every call's latency."""
    latencies: list[float] = []
    lock = threading.Lock()

    def client(index: int) -> None:
        for n in range(per_client):
            started = time.perf_counter()
            call(index * 1000 + n)
            with lock:
                latencies.append(time.perf_counter() - started)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - started, latencies


def report(kind: str, clients: int, wall: float, latencies: list[float], seconds: int, base: float | None) -> float:
    audio_per_s = len(latencies) * seconds / wall
    ratio = f" = {audio_per_s / base:.2f}x one client" if base else ""
    print(f"{kind} clients={clients}: {audio_per_s:.2f} s of audio per s{ratio}; latency p50 "
          f"{statistics.median(latencies):.1f} s, p95 {percentile(latencies, 0.95):.1f} s ({len(latencies)} requests)",
          flush=True)
    return audio_per_s


def library(checkpoint: Path, clients_list: list[int], seconds: int, device: str | None) -> None:
    from musicgen import GenerationRequest, MusicGen

    base = None
    for clients in clients_list:
        model = MusicGen.load(checkpoint, device=device, concurrency=clients)
        model.predict(GenerationRequest(prompt="warm up", duration=1, seed=0))
        wall, latencies = run_clients(
            lambda seed: model.predict(GenerationRequest(prompt="lofi hip hop beat", duration=seconds, seed=seed)),
            clients, 2)
        speed = report("library", clients, wall, latencies, seconds, base)
        base = base or speed
        model.scheduler.close()


def http(checkpoint: Path, clients_list: list[int], seconds: int) -> None:
    base = None
    for clients in clients_list:
        port = 5400 + clients
        env = {**os.environ, "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""),
               "COG_PREDICT_TYPE_STUB": "predict.py:Predictor", "PORT": str(port), "MUSICGEN_WEIGHTS": str(checkpoint),
               "HF_HUB_OFFLINE": "1", "COG_MAX_CONCURRENCY": str(clients), "MUSICGEN_CONCURRENCY": str(clients)}
        server = subprocess.Popen([sys.executable, "-m", "cog.server.http", "--host", "127.0.0.1"], cwd=ROOT, env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        try:
            for _ in range(600):
                try:
                    with urllib.request.urlopen(url + "/health-check", timeout=5) as r:
                        if json.loads(r.read())["status"] == "READY":
                            break
                except OSError:
                    pass
                time.sleep(0.5)

            def call(seed: int) -> None:
                body = json.dumps({"input": {"prompt": "lofi hip hop beat", "duration": seconds, "seed": seed}}).encode()
                request = urllib.request.Request(url + "/predictions", body, {"Content-Type": "application/json"})
                for _ in range(100):  # Cog answers 409 for a moment right after a prediction ends
                    try:
                        with urllib.request.urlopen(request, timeout=3600) as r:
                            assert json.loads(r.read())["status"] == "succeeded"
                            return
                    except urllib.error.HTTPError as err:
                        if err.code != 409:
                            raise
                        time.sleep(0.05)

            call(0)  # warm-up
            wall, latencies = run_clients(call, clients, 2)
            speed = report("http", clients, wall, latencies, seconds, base)
            base = base or speed
        finally:
            server.terminate()
            server.wait()


def main() -> int:
    parser = bench.parser(__doc__)
    parser.add_argument("--preset", default="small", choices=["tiny", "small", "medium"])
    parser.add_argument("--melody", action="store_true")
    parser.add_argument("--seconds", type=int, default=4)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--http", action="store_true", help="also through Cog's HTTP server")
    parser.add_argument("--device", help="cpu or cuda (default: MUSICGEN_DEVICE, else a GPU when there is one)")
    args = parser.parse_args()
    logging.disable(logging.INFO)
    os.environ.setdefault("MUSICGEN_MELODY_STEMS", "0")  # text requests only: no separator needed
    from musicgen_dev.checkpoints import build_random_checkpoint

    work = bench.work_dir("throughput-")
    checkpoint = build_random_checkpoint(work / f"musicgen-{args.preset}", melody=args.melody, preset=args.preset)
    print(f"preset={args.preset} melody={args.melody} audio per request={args.seconds}s threads={os.cpu_count()}")
    library(checkpoint, args.clients, args.seconds, args.device)
    if args.http:
        http(checkpoint, args.clients, args.seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
