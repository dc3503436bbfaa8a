"""A batch job over a Ray cluster (``musicgen batch --ray``, ``--ray-address ADDRESS``): the single-process batch
(:mod:`musicgen.serving.batch`) with one long-lived worker per device slot.

Each worker is a Ray actor holding a loaded model and its scheduler (one per GPU; on CPU, one per
``cpus_per_actor`` cores), taking as many requests at once as its scheduler decodes together. The driver
(this process) reads the requests file, skips what the output already holds, and keeps every worker exactly
full (back-pressure: a request leaves the driver's queue only when a worker has a free slot). Workers send
each finished file back; the driver writes it atomically into the output directory or fsspec URL, so each
output exists once, whole, and a rerun resumes. A request whose inputs are bad fails alone, with its
sentence in results.jsonl. A worker whose process dies (killed, out of memory) is replaced by a fresh one
(``restarts`` per slot) and the requests it held go back to the queue, preferring another worker; a request
that was on a failed worker ``max_attempts`` times fails with that reason. Same seeds give the same bytes as
the single-process batch: the worker runs the same ``MusicGen.predict``.

Ray is an optional extra: ``pip install '.[ray]'`` (the pinned ``ray`` package).
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from musicgen.audio.audio_io import MAX_UPLOAD_BYTES
from musicgen.serving import progress
from musicgen.serving.batch import BatchItem, Summary, entry, generate, output_name, plan, read_requests
from musicgen.errors import MusicGenError
from musicgen.serving.store import OutputStore

log = logging.getLogger(__name__)

RAY_MISSING = ("--ray needs Ray, which is an optional extra of musicgen-cog: install it with "
               "`pip install '.[ray]'` in the project (or `pip install ray==2.60.0`).")


def import_ray():
    """The ray module, or a MusicGenError saying how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise MusicGenError(RAY_MISSING) from exc
    return ray


class Worker:
    """What runs inside each Ray actor: a loaded model taking requests from the driver."""

    def __init__(self, weights: str | None, device: str, precision: str | None, concurrency: int | None,
                 threads: int | None, decoder: str | None = None):
        logging.basicConfig(level=logging.INFO, format="%(message)s")
        import torch

        if threads:
            torch.set_num_threads(threads)
        from musicgen.serving.service import MusicGen

        self.model = MusicGen.load(weights, device=device, precision=precision, concurrency=concurrency,
                                   decoder=decoder)
        self.scratch = Path(tempfile.mkdtemp(prefix="musicgen-worker-"))

    def info(self) -> dict:
        return {"pid": os.getpid(), "node": socket.gethostname(), "slots": self.model.scheduler.slots}

    def generate(self, inputs: dict, audio: tuple[str, bytes] | None) -> dict:
        """One request: ``{"data", "seed", "seconds"}``, or ``{"error"}`` with its sentence."""
        workdir = Path(tempfile.mkdtemp(dir=self.scratch))
        try:
            if audio is not None:  # the driver's input file, sent along (the worker may be on another node)
                suffix, data = audio
                path = workdir / f"input_audio{suffix}"
                path.write_bytes(data)
                inputs = {**inputs, "input_audio": path}
            path, seed, seconds = generate(self.model, inputs, workdir)
            return {"data": path.read_bytes(), "seed": seed, "seconds": seconds}
        except MusicGenError as exc:
            return {"error": str(exc)}
        finally:
            shutil.rmtree(workdir, ignore_errors=True)


@dataclass
class _Job:
    item: BatchItem
    attempts: int = 0
    failed_on: set = field(default_factory=set)  # slots whose worker failed while holding it
    started: float = 0.0


@dataclass
class _Slot:
    index: int
    actor: object = None
    generation: int = 0
    restarts_left: int = 0
    load: int = 0
    capacity: int = 1
    info: dict | None = None
    info_ref: object = None
    dead: bool = False


def _reason(exc: BaseException) -> str:
    """The last meaningful line of a Ray error (its cause's sentence)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in reversed(lines):
        if "error" in line.split(":")[0].lower():
            return line
    return lines[-1] if lines else type(exc).__name__


def _audio_payload(inputs: dict) -> tuple[dict, tuple[str, bytes] | None]:
    """The request's inputs with input_audio's bytes taken along, when it is a readable file within the
    upload limit (otherwise the path goes as it is, and the worker gives the single-process sentence)."""
    path = inputs.get("input_audio")
    if not isinstance(path, (str, Path)):
        return inputs, None
    path = Path(path)
    try:
        if not path.is_file() or path.stat().st_size > MAX_UPLOAD_BYTES:
            return inputs, None
        data = path.read_bytes()
    except OSError:
        return inputs, None
    return {k: v for k, v in inputs.items() if k != "input_audio"}, (path.suffix, data)


class RayBatch:
    """A batch job on Ray. ``address``: a cluster to join (``auto``, ``ray://host:10001``, ``host:6379``);
    None starts a local cluster, unless this process is already connected to one (then that one is used).
    ``actors``: workers (default: one per GPU, else one per ``cpus_per_actor`` CPUs of the cluster)."""

    def __init__(self, requests_file: Path, output: str | Path, defaults: dict | None = None, *,
                 weights: str | Path | None = None, device: str | None = None, precision: str | None = None,
                 concurrency: int | None = None, actors: int | None = None, cpus_per_actor: int | None = None,
                 address: str | None = None, max_attempts: int = 3, restarts: int = 3, decoder: str | None = None):
        self.requests_file, self.output, self.defaults = Path(requests_file), output, defaults
        self.weights = str(weights) if weights is not None else None
        self.device, self.precision, self.concurrency, self.decoder = device, precision, concurrency, decoder
        self.actors, self.cpus_per_actor, self.address = actors, cpus_per_actor, address
        self.max_attempts, self.restarts = max_attempts, restarts
        self.summary = Summary()
        self.startup_s = 0.0
        self._slots: list[_Slot] = []
        self._lock = threading.Lock()
        self._ray = None

    # ---------------------------------------------------------------- cluster and workers
    def _connect(self) -> bool:
        """Connect to Ray; True when this call started the cluster (and so shuts it down)."""
        ray = self._ray = import_ray()
        if ray.is_initialized():
            return False
        env = {k: v for k, v in os.environ.items() if k.startswith(("MUSICGEN_", "HF_"))}
        ray.init(address=self.address, log_to_driver=False, logging_level=logging.WARNING,
                 runtime_env={"env_vars": env} if env else None)
        return self.address is None

    def _layout(self, pending: int) -> tuple[str, int, dict]:
        """(worker device, number of workers, what each gets: Ray resources, torch threads, scheduler slots)."""
        resources = self._ray.cluster_resources()
        gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 1))
        device = self.device if self.device not in (None, "auto") else ("cuda" if gpus else "cpu")
        if device.startswith("cuda"):
            if not gpus:
                raise MusicGenError("--device cuda, but the Ray cluster has no GPU; use --device cpu.")
            count, options = self.actors or gpus, {"num_gpus": 1, "num_cpus": 1}
            threads = None
        else:
            per = max(1, self.cpus_per_actor or min(4, cpus))
            count, options = self.actors or max(1, cpus // per), {"num_cpus": per}
            threads = per
        import torch

        from musicgen.settings import Settings

        options["threads"] = threads
        options["slots"] = Settings.from_env(device=device, concurrency=self.concurrency).slots(torch.device(device))
        return device, max(1, min(count, pending)), options

    def _start(self, slot: _Slot, device: str, options: dict) -> None:
        remote = self._ray.remote(Worker).options(
            num_cpus=options["num_cpus"], num_gpus=options.get("num_gpus", 0),
            max_concurrency=options["slots"] + 1, max_restarts=0, max_task_retries=0)
        slot.actor = remote.remote(self.weights, device, self.precision, self.concurrency, options["threads"],
                                   self.decoder)
        slot.generation += 1
        slot.capacity, slot.info = options["slots"], None
        slot.info_ref = slot.actor.info.remote()

    def pids(self) -> list[int]:
        """The process ids of the workers that have loaded their model (for operators and tests)."""
        with self._lock:
            return [s.info["pid"] for s in self._slots if s.info is not None and not s.dead]

    # ---------------------------------------------------------------- the job
    def run(self) -> int:
        """Generate every request not yet in the output. Returns how many failed."""
        store = OutputStore(self.output)
        summary = self.summary
        todo = plan(read_requests(self.requests_file, self.defaults), store, summary)
        if not todo:
            store.close()
            return summary.failed
        began = time.monotonic()
        started_cluster = self._connect()
        ray = self._ray
        scratch = store.scratch()
        try:
            device, count, options = self._layout(len(todo))
            log.info("batch on Ray: %d worker(s) on %s (%s each)", count, device,
                     f"{options['num_cpus']} CPU" if device == "cpu" else "1 GPU")
            self._slots = [_Slot(i, restarts_left=self.restarts) for i in range(count)]
            for slot in self._slots:
                self._start(slot, device, options)
            self._wait_ready()
            self.startup_s = time.monotonic() - began  # connecting, starting workers, loading the model
            self._loop(deque(_Job(item) for item in todo), store, scratch, device, options)
        finally:
            for slot in self._slots:
                if slot.actor is not None:
                    ray.kill(slot.actor, no_restart=True)
            shutil.rmtree(scratch, ignore_errors=True)
            store.close()
            if started_cluster:
                ray.shutdown()
        workers = f"{len(self._slots)} Ray worker(s)"
        log.info(summary.line(workers))
        return summary.failed

    def _wait_ready(self) -> None:
        """Wait for the first workers to load their model; a load that fails stops the job with its reason."""
        ray = self._ray
        for slot in self._slots:
            try:
                slot.info = ray.get(slot.info_ref)
            except ray.exceptions.RayError as exc:
                raise MusicGenError(f"a Ray worker could not load the model: {_reason(exc)}") from None
            slot.info_ref = None
            log.info("worker %d ready: pid %d on %s, %d slot(s)", slot.index, slot.info["pid"], slot.info["node"],
                     slot.info["slots"])

    def _pick(self, pending: deque, slot: _Slot) -> _Job | None:
        """The next job for ``slot``: the first that has not failed there, else (every job has) the first."""
        for i, job in enumerate(pending):
            if slot.index not in job.failed_on:
                del pending[i]
                return job
        others_free = any(s is not slot and not s.dead and s.load < s.capacity for s in self._slots)
        return None if others_free else pending.popleft()

    def _loop(self, pending: deque, store: OutputStore, scratch: Path, device: str, options: dict) -> None:
        ray = self._ray
        summary = self.summary
        bar = progress.bar(len(pending), "batch", "request")
        inflight: dict = {}  # ObjectRef -> (job, slot, generation)
        try:
            while pending or inflight:
                for slot in self._slots:
                    while not slot.dead and slot.load < slot.capacity and pending:
                        job = self._pick(pending, slot)
                        if job is None:
                            break
                        inputs, audio = _audio_payload(job.item.inputs)
                        job.started = time.monotonic()
                        inflight[slot.actor.generate.remote(inputs, audio)] = (job, slot, slot.generation)
                        slot.load += 1
                if not inflight:
                    raise MusicGenError(f"every Ray worker failed; {len(pending)} request(s) were not generated "
                                        "(run the same command again to generate them).")
                self._note_ready_workers()
                done, _ = ray.wait(list(inflight), num_returns=1, timeout=1.0)
                for ref in done:
                    job, slot, generation = inflight.pop(ref)
                    if slot.generation == generation:
                        slot.load -= 1
                    try:
                        reply = ray.get(ref)
                    except ray.exceptions.RayActorError as exc:
                        self._worker_failed(slot, generation, exc, device, options)
                        self._retry(job, slot, _reason(exc), pending, store, bar)
                        continue
                    except ray.exceptions.RayError as exc:  # the worker lives, the request raised (e.g. GPU OOM)
                        self._retry(job, slot, _reason(exc), pending, store, bar)
                        continue
                    self._finish(job, reply, store, scratch)
                    bar.update()
        finally:
            bar.close()

    def _note_ready_workers(self) -> None:
        ray = self._ray
        for slot in self._slots:
            if slot.info_ref is not None and not slot.dead:
                ready, _ = ray.wait([slot.info_ref], timeout=0)
                if ready:
                    try:
                        info = ray.get(slot.info_ref)
                    except ray.exceptions.RayError:
                        info = None  # its requests fail too and replace it
                    with self._lock:
                        slot.info, slot.info_ref = info, None

    def _worker_failed(self, slot: _Slot, generation: int, exc: BaseException, device: str, options: dict) -> None:
        """Replace ``slot``'s worker once per failure (each of its requests reports the same death)."""
        if slot.generation != generation or slot.dead:
            return
        self.summary.worker_failures += 1
        ray = self._ray
        try:
            ray.kill(slot.actor, no_restart=True)
        except Exception:  # already gone
            pass
        with self._lock:
            slot.load, slot.info = 0, None
            if slot.restarts_left <= 0:
                slot.dead, slot.actor = True, None
                log.warning("worker %d failed (%s); no restarts left for it", slot.index, _reason(exc))
                return
            slot.restarts_left -= 1
        log.warning("worker %d failed (%s); starting a new one", slot.index, _reason(exc))
        self._start(slot, device, options)

    def _retry(self, job: _Job, slot: _Slot, reason: str, pending: deque, store: OutputStore,
               bar: progress.tqdm) -> None:
        job.attempts += 1
        job.failed_on.add(slot.index)
        if job.attempts >= self.max_attempts:
            store.record(entry(job.item, "failed",
                               error=f"gave up after {job.attempts} attempts; the last one failed with: {reason}"))
            self.summary.failed += 1
            bar.update()
            return
        self.summary.retried += 1
        pending.appendleft(job)

    def _finish(self, job: _Job, reply: dict, store: OutputStore, scratch: Path) -> None:
        summary = self.summary
        if "error" in reply:
            store.record(entry(job.item, "failed", error=reply["error"]))
            summary.failed += 1
            return
        name = output_name(job.item)
        store.put_bytes(reply["data"], name, scratch)
        details = {"file": name, "seed": reply["seed"], "seconds": round(time.monotonic() - job.started, 2)}
        if job.attempts:
            details["attempts"] = job.attempts + 1
        store.record(entry(job.item, "generated", **details))
        summary.generated += 1
        summary.audio_seconds += reply["seconds"]
