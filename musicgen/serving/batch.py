"""Batch generation: a file of requests into a directory (or fsspec URL) of outputs, decoded concurrently
through the scheduler, resumable. :mod:`musicgen.serving.distributed` runs the same job over a Ray cluster.

The requests file is JSON Lines (one object per line with any of the 13 inputs, ``input_audio`` a path
relative to the file, and an optional ``name`` for the output file) or plain text (one prompt per line).
Each output is ``<name>.<format>`` (default name: the line number, ``0001``), written under a temporary name
and renamed (:mod:`musicgen.serving.store`), so it exists once and whole; outputs that exist are skipped, so an interrupted job resumes where
it stopped. ``results.jsonl`` in the output directory records every request's file, seed and time, or its
error sentence (a bad line fails alone).
"""

from __future__ import annotations

import json
import logging
import queue
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from musicgen.errors import MusicGenError
from musicgen.inputs import SPECS
from musicgen.request import GenerationRequest
from musicgen.serving.scheduler import Cancelled
from musicgen.serving import progress
from musicgen.serving.store import OutputStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchItem:
    name: str
    inputs: dict  # the request's inputs as given (input_audio resolved to a path)
    line: int


def read_requests(path: Path, defaults: dict | None = None) -> list[BatchItem | MusicGenError]:
    """The requests of a JSONL or text file (a line that cannot be a request becomes its error)."""
    items: list[BatchItem | MusicGenError] = []
    text = path.read_text()
    jsonl = path.suffix.lower() in (".jsonl", ".json") or text.lstrip().startswith("{")
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        name = f"{number:04d}"
        if not jsonl:
            items.append(BatchItem(name, {**(defaults or {}), "prompt": line.strip()}, number))
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError("not an object")
        except ValueError as exc:
            items.append(MusicGenError(f"line {number}: not a JSON object ({exc})."))
            continue
        name = str(record.pop("name", name))
        if not name or "/" in name or name.startswith("."):
            items.append(MusicGenError(f"line {number}: name {name!r} must be a plain file name."))
            continue
        unknown = sorted(set(record) - set(SPECS))
        if unknown:
            items.append(MusicGenError(f"line {number}: unknown inputs {', '.join(unknown)}."))
            continue
        if isinstance(record.get("input_audio"), str):
            record["input_audio"] = (path.parent / record["input_audio"]).resolve()
        items.append(BatchItem(name, {**(defaults or {}), **record}, number))
    return items


def output_name(item: BatchItem) -> str:
    return f"{item.name}.{item.inputs.get('output_format', SPECS['output_format'].default)}"


@dataclass
class Summary:
    """What a batch run did, for its closing log line."""

    skipped: int = 0
    generated: int = 0
    failed: int = 0
    audio_seconds: float = 0.0
    retried: int = 0  # jobs sent again after their worker failed
    worker_failures: int = 0
    started: float = field(default_factory=time.monotonic)

    def line(self, workers: str) -> str:
        elapsed = time.monotonic() - self.started
        rate = 60 * self.generated / elapsed if elapsed > 0 else 0.0
        text = (f"batch done: {self.generated} generated ({self.audio_seconds:.0f} s of audio) in {elapsed:.1f} s "
                f"on {workers}, {rate:.1f} clips/min; {self.skipped} already done, {self.failed} failed")
        if self.worker_failures or self.retried:
            text += f"; {self.worker_failures} worker failure(s), {self.retried} job(s) retried"
        return text


def plan(items: list[BatchItem | MusicGenError], store: OutputStore, summary: Summary) -> list[BatchItem]:
    """The requests still to generate: a line that is not a request is recorded as failed, one whose output
    exists (an earlier run's) is skipped."""
    todo = []
    for item in items:
        if isinstance(item, MusicGenError):
            summary.failed += 1
            store.record({"error": str(item)})
        elif store.exists(output_name(item)):
            summary.skipped += 1
        else:
            todo.append(item)
    log.info("batch: %d requests, %d already done, %d to generate", len(items), summary.skipped, len(todo))
    return todo


def generate(model, inputs: dict, scratch: Path, cancel: threading.Event | None = None) -> tuple[Path, int, int]:
    """One request of a batch with a loaded MusicGen: (the written file in ``scratch``, its seed, its
    length in seconds: ``duration``, a continuation's prompt included). Raises MusicGenError for a bad request."""
    request = GenerationRequest(**inputs)
    result = model.predict(request, output_dir=scratch, progress=lambda done, total: None, cancel=cancel)
    return result.paths[0], result.seed, request.duration


def run_batch(model, requests_file: Path, output: str | Path, defaults: dict | None = None,
              workers: int | None = None) -> int:
    """Generate every request of ``requests_file`` not yet in ``output`` (a directory or fsspec URL) with
    ``model`` (a loaded MusicGen), ``workers`` at a time (default: its scheduler's slots). Returns how many
    failed."""
    store = OutputStore(output)
    summary = Summary()
    todo: queue.SimpleQueue = queue.SimpleQueue()
    for item in plan(read_requests(requests_file, defaults), store, summary):
        todo.put(item)
    if todo.empty():
        store.close()
        return summary.failed
    bar = progress.bar(todo.qsize(), "batch", "request")
    scratch = store.scratch()
    lock = threading.Lock()
    stop = threading.Event()

    def worker() -> None:
        while not stop.is_set():
            try:
                item = todo.get_nowait()
            except queue.Empty:
                return
            started = time.monotonic()
            try:
                path, seed, seconds = generate(model, item.inputs, scratch, stop)
                store.put_file(path, output_name(item))  # atomic: the output appears whole, once
                store.record({"name": item.name, "file": output_name(item), "seed": seed,
                              "seconds": round(time.monotonic() - started, 2)})
                with lock:
                    summary.generated += 1
                    summary.audio_seconds += seconds
            except MusicGenError as exc:
                store.record({"name": item.name, "line": item.line, "error": str(exc)})
                with lock:
                    summary.failed += 1
            except Cancelled:
                return
            with lock:
                bar.update()

    count = workers or model.scheduler.slots
    threads = [threading.Thread(target=worker, name=f"musicgen-batch-{i}") for i in range(count)]
    for t in threads:
        t.start()
    try:
        for t in threads:
            while t.is_alive():
                t.join(timeout=0.2)
    except KeyboardInterrupt:  # stop: the requests in flight are cancelled, what is written stays
        stop.set()
        for t in threads:
            t.join()
        raise
    finally:
        bar.close()
        shutil.rmtree(scratch, ignore_errors=True)
        store.close()
    log.info(summary.line(f"{count} slot(s) of one process"))
    return summary.failed
