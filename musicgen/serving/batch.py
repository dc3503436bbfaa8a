"""Batch generation: a file of requests into a directory (or fsspec URL) of outputs, decoded concurrently
through the scheduler, resumable. :mod:`musicgen.serving.distributed` runs the same job over a Ray cluster.

The requests file is JSON Lines (one object per line with any of the 13 inputs, ``input_audio`` a path
relative to the file, and an optional ``name`` for the output file) or plain text (one prompt per line);
blank lines and ``#`` comments are skipped.
Each output is ``<name>.<format>`` (default name: the line number, ``0001``), written under a temporary name
and renamed (:mod:`musicgen.serving.store`), so it exists once and whole; outputs that exist are skipped, so an
interrupted job resumes where it stopped. ``results.jsonl`` in the output directory holds one line per request
of the file, rewritten whole (never appended to) however often the job runs: the request, its outcome, and
its file, seed and time, or its error sentence (a bad line fails alone).
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
from musicgen.inputs import SPECS, file_problem
from musicgen.request import GenerationRequest
from musicgen.serving.scheduler import Cancelled
from musicgen.serving import progress
from musicgen.serving.store import OutputStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchItem:
    """One request of the file: its output name, its inputs (``input_audio`` resolved to a path), its line, and
    the request as results.jsonl shows it (its inputs as written, the flags' defaults included; a line that
    is not a request: its text). ``error``: why the line cannot be generated, when it cannot."""

    name: str
    inputs: dict
    line: int
    request: dict | str = field(default_factory=dict)
    error: str | None = None


def read_requests(path: Path, defaults: dict | None = None) -> list[BatchItem]:
    """The requests of a JSONL or text file, one per line; blank lines and ``#`` comments are skipped. A line
    that cannot be a request becomes an item with its error (it fails alone)."""
    items: list[BatchItem] = []
    text = path.read_text()
    jsonl = path.suffix.lower() in (".jsonl", ".json") or text.lstrip().startswith("{")
    lines: dict[str, int] = {}  # output name -> the line that has it
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name = f"{number:04d}"
        if not jsonl:
            inputs = {**(defaults or {}), "prompt": line.strip()}
            items.append(BatchItem(name, inputs, number, _shown(inputs), _problem(inputs)))
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError("not an object")
        except ValueError as exc:
            items.append(BatchItem(name, {}, number, line, f"line {number}: not a JSON object ({exc})."))
            continue
        name = str(record.pop("name", name))
        given = {**(defaults or {}), **record}
        error = None
        unknown = sorted(set(record) - set(SPECS))
        if not name or "/" in name or name.startswith("."):
            error = f"line {number}: name {name!r} must be a plain file name."
            name = f"{number:04d}"
        elif name in lines:
            error = (f"line {number}: name {name!r} is already the name of line {lines[name]}; give each request "
                     "its own name.")
            name = f"{number:04d}"
        elif unknown:
            error = f"line {number}: unknown inputs {', '.join(unknown)}."
        elif isinstance(record.get("input_audio"), str):
            record["input_audio"] = (path.parent / record["input_audio"]).resolve()
            problem = file_problem(record["input_audio"], "batch", shown=given["input_audio"])
            if problem is not None:
                error = f"line {number}: {problem}"
        inputs = {**(defaults or {}), **record}
        lines.setdefault(name, number)
        items.append(BatchItem(name, inputs, number, _shown(given), error or _problem(inputs)))
    return items


def _problem(inputs: dict) -> str | None:
    """What is wrong with a request's inputs that can be seen without the model (so that it fails before any
    model loads), or None."""
    try:
        GenerationRequest(**inputs, surface="batch")
    except MusicGenError as exc:
        return str(exc)
    return None


def _shown(inputs: dict) -> dict:
    """A request's inputs as results.jsonl holds them (JSON: paths as text)."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in inputs.items()}


def output_name(item: BatchItem) -> str:
    return f"{item.name}.{item.inputs.get('output_format', SPECS['output_format'].default)}"


def entry(item: BatchItem, outcome: str, **details) -> dict:
    """The request's line of results.jsonl: its name, line and inputs, its outcome (``generated``, ``failed``,
    or ``pending`` while it waits), and the details (``file``, ``seed``, ``seconds``, ``error``)."""
    return {"name": item.name, "line": item.line, "request": item.request, "outcome": outcome, **details}


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


def plan(items: list[BatchItem], store: OutputStore, summary: Summary) -> list[BatchItem]:
    """The requests still to generate, each given its line of results.jsonl: a line that is not a request is
    recorded as failed, one whose output exists (an earlier run's) keeps its earlier line (or gets one
    saying so), the others are pending. Logs how many are done and to do."""
    earlier = {e.get("name"): e for e in store.results() if e.get("outcome", "generated") == "generated"}
    todo = []
    for item in items:
        if item.error is not None:
            summary.failed += 1
            store.record(entry(item, "failed", error=item.error))
        elif store.exists(output_name(item)):
            summary.skipped += 1
            kept = earlier.get(item.name, {})
            details = {k: kept[k] for k in ("seed", "seconds") if k in kept}
            store.record(entry(item, "generated", file=output_name(item), **details))
        else:
            todo.append(item)
            store.record(entry(item, "pending"))
    store.flush()
    log.info("batch: %d requests, %d already done, %d failed before generating, %d to generate", len(items),
             summary.skipped, summary.failed, len(todo))
    return todo


def generate(model, inputs: dict, scratch: Path, cancel: threading.Event | None = None) -> tuple[Path, int, int]:
    """One request of a batch with a loaded MusicGen: (the written file in ``scratch``, its seed, its
    length in seconds: ``duration``, a continuation's prompt included). Raises MusicGenError for a bad request."""
    request = GenerationRequest(**inputs, surface="batch")
    result = model.predict(request, output_dir=scratch, progress=lambda done, total: None, cancel=cancel)
    return result.paths[0], result.seed, request.duration


class Batch:
    """A batch job: the requests of ``requests_file`` not yet in ``output`` (a directory or fsspec URL), planned
    when it is made (so that a rerun says what is done before any model loads), generated by ``run``."""

    def __init__(self, requests_file: Path, output: str | Path, defaults: dict | None = None):
        self.output = output
        self.store = OutputStore(output)
        self.summary = Summary()
        self.todo = plan(read_requests(requests_file, defaults), self.store, self.summary)

    def run(self, model, workers: int | None = None) -> int:
        """Generate what is to do with ``model`` (a loaded MusicGen; unused when nothing is), ``workers`` at a
        time (default: its scheduler's slots). Returns how many failed. On Ctrl-C the requests in flight are
        cancelled, what is written stays (results.jsonl says which) and KeyboardInterrupt goes on."""
        store, summary = self.store, self.summary
        if not self.todo:
            store.close()
            return summary.failed
        todo: queue.SimpleQueue = queue.SimpleQueue()
        for item in self.todo:
            todo.put(item)
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
                    store.record(entry(item, "generated", file=output_name(item), seed=seed,
                                       seconds=round(time.monotonic() - started, 2)))
                    with lock:
                        summary.generated += 1
                        summary.audio_seconds += seconds
                except MusicGenError as exc:
                    store.record(entry(item, "failed", error=str(exc)))
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


def run_batch(model, requests_file: Path, output: str | Path, defaults: dict | None = None,
              workers: int | None = None) -> int:
    """Generate every request of ``requests_file`` not yet in ``output`` with ``model`` (``Batch``). Returns how
    many failed."""
    return Batch(requests_file, output, defaults).run(model, workers)
