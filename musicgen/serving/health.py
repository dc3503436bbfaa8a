"""Kubernetes probes for the Cog server (``python -m musicgen.serving.health startup|readiness|liveness|drain``).

Cog's ``GET /health-check`` answers 200 in every state, with the state in its JSON body, so an HTTP probe
cannot tell them apart; these exec probes read the body:

=============  ==========================================================================================
``startup``    passes once setup has finished (READY or BUSY); STARTING and SETUP_FAILED keep it failing,
               so the startup probe's budget covers loading the weights, and a failed setup ends in a
               restart.
``readiness``  passes on READY only: BUSY means every slot (``concurrency.max``) is taken, so the replica
               leaves the Service until one frees, and new requests go to the others.
``liveness``   fails on SETUP_FAILED, DEFUNCT, UNHEALTHY, no answer, and on a BUSY that has lasted longer
               than ``--max-busy`` seconds (a wedged server: readiness keeps new requests away from a BUSY
               replica, so a BUSY longer than the longest prediction does not drain); the time BUSY was
               first seen is kept in a file under ``--state-dir``.
``drain``      (a preStop hook) waits until no prediction is running (the model's metrics endpoint,
               ``MUSICGEN_METRICS_PORT``) or ``--timeout`` has passed, so Kubernetes sends SIGTERM only
               once running predictions have finished.
=============  ==========================================================================================

Exit status 0 passes, 1 fails. The server is ``--url`` (default ``MUSICGEN_HEALTH_URL``, else
``http://127.0.0.1:5000``). Only the standard library is imported: a probe starts in milliseconds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.request
from pathlib import Path

SETTLED = {"READY", "BUSY"}
BROKEN = {"SETUP_FAILED", "DEFUNCT", "UNHEALTHY"}


def health(url: str, timeout: float = 5.0) -> str:
    """The server's state (READY, BUSY, STARTING, SETUP_FAILED, ...), or UNREACHABLE."""
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/health-check", timeout=timeout) as reply:
            return str(json.load(reply).get("status", "UNKNOWN"))
    except (OSError, ValueError):
        return "UNREACHABLE"


def in_flight(metrics_url: str, timeout: float = 5.0) -> float | None:
    """Predictions running now, from the model's metrics endpoint (None when it does not answer)."""
    try:
        with urllib.request.urlopen(metrics_url, timeout=timeout) as reply:
            text = reply.read().decode()
    except (OSError, ValueError):
        return None
    for line in text.splitlines():
        if line.startswith("musicgen_requests_in_flight "):
            return float(line.split()[1])
    return None


def liveness(status: str, state_dir: Path, max_busy: float, now: float | None = None) -> bool:
    now = time.time() if now is None else now
    marker = state_dir / "busy-since"
    if status != "BUSY":
        marker.unlink(missing_ok=True)
        return status not in BROKEN and status != "UNREACHABLE"
    try:
        since = float(marker.read_text())
    except (OSError, ValueError):
        state_dir.mkdir(parents=True, exist_ok=True)
        marker.write_text(str(now))
        since = now
    return now - since <= max_busy


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m musicgen.serving.health", description=__doc__.splitlines()[0])
    p.add_argument("probe", choices=["startup", "readiness", "liveness", "drain"])
    p.add_argument("--url", default=os.environ.get("MUSICGEN_HEALTH_URL", "http://127.0.0.1:5000"))
    p.add_argument("--max-busy", type=float, default=1800.0,
                   help="liveness: seconds of uninterrupted BUSY taken as wedged (longer than the longest prediction)")
    p.add_argument("--state-dir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "musicgen-health")
    p.add_argument("--metrics-url", default=None,
                   help="drain: the metrics endpoint (default: 127.0.0.1 on MUSICGEN_METRICS_PORT)")
    p.add_argument("--timeout", type=float, default=1800.0, help="drain: the longest wait, in seconds")
    args = p.parse_args(argv)
    if args.probe == "drain":
        url = args.metrics_url or f"http://127.0.0.1:{os.environ.get('MUSICGEN_METRICS_PORT', '9090')}/metrics"
        deadline = time.monotonic() + args.timeout
        idle = 0  # two readings of nothing running, a second apart: a request Cog has just taken reaches
        while time.monotonic() < deadline:  # predict() (and the metric) a moment later
            running = in_flight(url)
            if running is None:
                return 0  # no metrics to wait on
            idle = idle + 1 if running == 0 else 0
            if idle >= 2:
                return 0
            time.sleep(1.0)
        return 1
    status = health(args.url)
    if args.probe == "startup":
        ok = status in SETTLED
    elif args.probe == "readiness":
        ok = status == "READY"
    else:
        ok = liveness(status, args.state_dir, args.max_busy)
    if not ok:
        print(f"{args.probe}: server is {status}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
