"""Where a batch job's outputs go: a local directory or an fsspec URL (``s3://bucket/run``, ``gs://…``,
``memory://…``; the protocol's own package, such as s3fs, installed separately).

Every output appears whole and once: it is written under a temporary name beside its final one and then
renamed (a local ``os.replace``; on object stores a copy of a complete object, which readers never see
half-written). ``results.jsonl`` holds one line per request (keyed by its line in the requests file, so a
rerun replaces its lines instead of adding to them): rewritten whole, again through a temporary name, at
most every few seconds and at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import time
import uuid
from pathlib import Path

RESULTS = "results.jsonl"


def is_url(location: str | Path) -> bool:
    return isinstance(location, str) and "://" in location and not location.startswith("file://")


class OutputStore:
    """A batch's output directory or URL."""

    def __init__(self, location: str | Path, flush_every: float = 5.0):
        self.location = str(location)
        self._lock = threading.Lock()
        self._flush_every, self._flushed = flush_every, 0.0
        self._entries: dict[int, dict] = {}  # results.jsonl as it will be written: line number -> entry
        if is_url(location):
            try:
                import fsspec
            except ImportError as exc:  # a dependency of the runtime (requirements.txt); a broken install
                raise RuntimeError("writing to a URL needs fsspec (pip install fsspec)") from exc
            self.fs, self.root = fsspec.core.url_to_fs(self.location)
            self.fs.makedirs(self.root, exist_ok=True)
            self.local = None
        else:
            self.fs = None
            self.local = Path(str(location).removeprefix("file://"))
            self.local.mkdir(parents=True, exist_ok=True)

    def _path(self, name: str) -> str:
        return f"{self.root.rstrip('/')}/{name}"

    def results(self) -> list[dict]:
        """The entries of results.jsonl as written (before a run's first flush: the earlier run's; lines that
        are not JSON objects skipped)."""
        if self.local is not None:
            path = self.local / RESULTS
            text = path.read_text() if path.exists() else ""
        else:
            path = self._path(RESULTS)
            text = self.fs.cat_file(path).decode() if self.fs.exists(path) else ""
        entries = []
        for line in text.splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict):
                entries.append(entry)
        return entries

    def exists(self, name: str) -> bool:
        return (self.local / name).exists() if self.local is not None else self.fs.exists(self._path(name))

    def scratch(self) -> Path:
        """A private local directory for files on their way into the store (inside the output directory
        when it is local, so that the final rename stays on one file system)."""
        return Path(tempfile.mkdtemp(prefix=".musicgen-batch-", dir=self.local))

    def put_file(self, source: Path, name: str) -> None:
        """Move a complete local file into the store under ``name``, atomically."""
        if self.local is not None:
            target = self.local / name
            try:
                os.replace(source, target)
            except OSError:  # another file system: copy beside the target first, then rename
                partial = self.local / f".{name}.{uuid.uuid4().hex[:8]}.partial"
                shutil.copyfile(source, partial)
                os.replace(partial, target)
                source.unlink()
            return
        partial = self._path(f".{name}.{uuid.uuid4().hex[:8]}.partial")
        self.fs.put_file(str(source), partial)
        self.fs.mv(partial, self._path(name))
        source.unlink()

    def put_bytes(self, data: bytes, name: str, scratch: Path) -> None:
        """Write ``data`` into the store under ``name``, atomically (through a file in ``scratch``)."""
        source = scratch / f".{name}.{uuid.uuid4().hex[:8]}"
        source.write_bytes(data)
        self.put_file(source, name)

    def record(self, entry: dict) -> None:
        """Set the line of results.jsonl of the request on ``entry["line"]`` (written at most every few
        seconds, and by ``flush`` and ``close``)."""
        with self._lock:
            self._entries[entry["line"]] = entry
            if time.monotonic() - self._flushed >= self._flush_every:
                self._flush()

    def flush(self) -> None:
        """Write results.jsonl now."""
        with self._lock:
            self._flush()

    def _flush(self) -> None:
        data = "".join(json.dumps(self._entries[line]) + "\n" for line in sorted(self._entries)).encode()
        if self.local is not None:
            partial = self.local / f".{RESULTS}.{uuid.uuid4().hex[:8]}.partial"
            partial.write_bytes(data)
            os.replace(partial, self.local / RESULTS)
        else:
            partial = self._path(f".{RESULTS}.{uuid.uuid4().hex[:8]}.partial")
            self.fs.pipe_file(partial, data)
            self.fs.mv(partial, self._path(RESULTS))
        self._flushed = time.monotonic()

    def close(self) -> None:
        """Write what is pending (results.jsonl)."""
        self.flush()

    def __str__(self) -> str:
        return self.location
