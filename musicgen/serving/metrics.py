"""Prometheus metrics of a serving process (``MUSICGEN_METRICS_PORT``): what an autoscaler needs.

Cog's own ``/health-check`` says only READY or BUSY; scaling on load needs how many predictions are running,
so the predictor serves, on its own port (``GET /metrics``, Prometheus' text format, ``prometheus-client``;
on 127.0.0.1 unless ``MUSICGEN_METRICS_HOST`` says otherwise):

- ``musicgen_requests_in_flight`` — predictions running now (decoding, or waiting for a slot);
- ``musicgen_slots`` — requests the model decodes at once;
- ``musicgen_requests_total{outcome}`` — finished predictions: ``succeeded``, ``failed`` (a bad input, refused
  before or while it runs, or an error), ``canceled``; requests that Cog's server refuses itself (422, 409)
  or fails before predict() runs (an ``input_audio`` it cannot download) are not counted;
- ``musicgen_audio_seconds_total`` — seconds of music generated;
- on a GPU, the memory plan the slots come from (``musicgen.serving.memory``): ``musicgen_memory_bytes{part}``
  (``free`` to this process, weights included; ``weights``, ``kv_cache``, ``headroom``) and
  ``musicgen_request_workers`` (request-side works at once).

The Kubernetes HorizontalPodAutoscaler in ``deploy/kubernetes/`` keeps the average of
``musicgen_requests_in_flight`` per replica at cog.yaml's ``concurrency.default_target``.
"""

from __future__ import annotations

import contextlib
import logging
import threading

from prometheus_client import Counter, Gauge
from prometheus_client import start_http_server

log = logging.getLogger(__name__)

IN_FLIGHT = Gauge("musicgen_requests_in_flight", "Predictions running now (decoding, or waiting for a slot).")
SLOTS = Gauge("musicgen_slots", "Requests the model decodes at once.")
REQUESTS = Counter("musicgen_requests", "Finished predictions, by outcome.", ["outcome"])
AUDIO_SECONDS = Counter("musicgen_audio_seconds", "Seconds of music generated.")
MEMORY = Gauge("musicgen_memory_bytes",
               "The GPU memory plan: free to this process (weights included), weights, KV cache, headroom.", ["part"])
REQUEST_WORKERS = Gauge("musicgen_request_workers", "Request-side GPU works (text encoder, codec, stems) at once.")
for _outcome in ("succeeded", "failed", "canceled"):
    REQUESTS.labels(_outcome)  # every series exists from the start, at 0

_served: dict[int, object] = {}
_lock = threading.Lock()


@contextlib.contextmanager
def track():
    """Count one prediction while it runs; the caller reports its audio with :func:`generated`."""
    from musicgen.serving.scheduler import Cancelled

    IN_FLIGHT.inc()
    outcome = "failed"
    try:
        yield
        outcome = "succeeded"
    except Cancelled:
        outcome = "canceled"
        raise
    finally:
        IN_FLIGHT.dec()
        REQUESTS.labels(outcome).inc()


def generated(seconds: float) -> None:
    AUDIO_SECONDS.inc(seconds)


def refused() -> None:
    """Count a prediction whose inputs were refused before it could start (a ``failed`` outcome, as a refusal
    while it runs is)."""
    REQUESTS.labels("failed").inc()


def serve(port: int, slots: int, plan=None, host: str = "127.0.0.1") -> None:
    """Serve /metrics on ``host``:``port`` (once per process; a second call for the same port does nothing),
    with the slots and, on a GPU, the memory ``plan`` (``musicgen.serving.memory.MemoryPlan``) they come
    from. ``host`` is loopback unless told otherwise (MUSICGEN_METRICS_HOST; 0.0.0.0 for a scraper on
    another machine, as in deploy/kubernetes)."""
    SLOTS.set(slots)
    if plan is not None:
        for part in ("free", "weights", "kv_cache", "headroom"):
            MEMORY.labels(part).set(getattr(plan, part))
        REQUEST_WORKERS.set(plan.request_workers)
    with _lock:
        if port in _served:
            return
        server, _thread = start_http_server(port, addr=host)
        _served[port] = server
    log.info("metrics on http://%s:%d/metrics", host, port)
