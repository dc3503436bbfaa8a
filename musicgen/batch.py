"""Batch generation: a file of requests into a directory of outputs, decoded concurrently through the
scheduler, resumable.

The requests file is JSON Lines (one object per line with any of the 13 inputs, ``input_audio`` a path
relative to the file, and an optional ``name`` for the output file) or plain text (one prompt per line).
Each output is ``<name>.<format>`` (default name: the line number, ``0001``), written under a temporary name
and renamed, so it exists once and whole; outputs that exist are skipped, so an interrupted job resumes where
it stopped. ``results.jsonl`` in the output directory records every request's file, seed and time, or its
error sentence (a bad line fails alone).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import MusicGenError
from .inputs import SPECS
from .request import GenerationRequest
from .scheduler import Cancelled

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


class _Bar:
    """One progress line over the whole job, on stderr."""

    def __init__(self, total: int, width: int = 30):
        self.total, self.width, self.done, self.started = total, width, 0, time.monotonic()
        self.lock = threading.Lock()

    def advance(self) -> None:
        with self.lock:
            self.done += 1
            filled = self.width * self.done // max(1, self.total)
            elapsed = time.monotonic() - self.started
            eta = elapsed / self.done * (self.total - self.done)
            sys.stderr.write(f"\rbatch [{'#' * filled}{'.' * (self.width - filled)}] {self.done}/{self.total} "
                             f"requests, {elapsed:.0f} s, about {eta:.0f} s left")
            if self.done == self.total:
                sys.stderr.write("\n")
            sys.stderr.flush()


def run_batch(model, requests_file: Path, output_dir: Path, defaults: dict | None = None,
              workers: int | None = None) -> int:
    """Generate every request of ``requests_file`` not yet in ``output_dir`` with ``model`` (a loaded
    MusicGen), ``workers`` at a time (default: its scheduler's slots). Returns how many failed."""
    output_dir.mkdir(parents=True, exist_ok=True)
    items = read_requests(requests_file, defaults)
    results_path = output_dir / "results.jsonl"
    results_lock = threading.Lock()

    def record(entry: dict) -> None:
        with results_lock, open(results_path, "a") as f:
            f.write(json.dumps(entry) + "\n")

    failures = 0
    todo: queue.SimpleQueue = queue.SimpleQueue()
    pending = 0
    for item in items:
        if isinstance(item, MusicGenError):
            failures += 1
            record({"error": str(item)})
            continue
        fmt = item.inputs.get("output_format", SPECS["output_format"].default)
        if (output_dir / f"{item.name}.{fmt}").exists():
            continue  # done by an earlier run
        todo.put(item)
        pending += 1
    skipped = len(items) - pending - failures
    log.info("batch: %d requests, %d already done, %d to generate", len(items), skipped, pending)
    if not pending:
        return failures
    bar = _Bar(pending)
    failed = [0]
    scratch = Path(tempfile.mkdtemp(prefix=".musicgen-batch-", dir=output_dir))

    stop = threading.Event()

    def worker() -> None:
        while not stop.is_set():
            try:
                item = todo.get_nowait()
            except queue.Empty:
                return
            started = time.monotonic()
            try:
                request = GenerationRequest(**item.inputs)
                result = model.predict(request, output_dir=scratch, progress=lambda done, total: None, cancel=stop)
                target = output_dir / f"{item.name}.{request.output_format}"
                os.replace(result.paths[0], target)  # atomic: the output appears whole, once
                record({"name": item.name, "file": target.name, "seed": result.seed,
                        "seconds": round(time.monotonic() - started, 2)})
            except MusicGenError as exc:
                failed[0] += 1
                record({"name": item.name, "line": item.line, "error": str(exc)})
            except Cancelled:
                return
            bar.advance()

    threads = [threading.Thread(target=worker, name=f"musicgen-batch-{i}") for i in range(workers or model.scheduler.slots)]
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
        shutil.rmtree(scratch, ignore_errors=True)
    return failures + failed[0]
