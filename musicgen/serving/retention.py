"""How long a prediction's output directory outlives the prediction.

The library writes each prediction without an ``output_dir`` into a fresh temporary directory; Cog reads the
file after ``predict`` returns (it uploads it, or inlines it as a data: URI) and never says when it is done.
So a directory is only ever considered once its prediction has returned, and removed only when both:

- ``keep`` later predictions have returned since, where ``keep`` is the server's concurrency (its
  configured maximum, ``COG_MAX_CONCURRENCY``, and at least the most predictions ever seen in flight at
  once): while a returned file is still being sent its prediction holds one of the server's places, so the
  other places would all have to cycle through whole predictions first;
- and ``grace_s`` seconds have passed since its prediction returned.

Pruning happens when a prediction returns, never when one starts, so no prediction loses its directory
while it writes. What is left is removed when the model is collected or at exit (``weakref.finalize``,
without keeping the model alive).
"""

from __future__ import annotations

import contextlib
import shutil
import threading
import time
import weakref
from collections import deque
from collections.abc import Iterator
from pathlib import Path


class OutputRetention:
    def __init__(self, owner: object, configured: int | None = None, grace_s: float = 60.0):
        """``owner``: the object whose collection removes what is left; ``configured``: the server's
        configured concurrency, if known."""
        self._owner = owner
        self.configured = configured or 1
        self.grace_s = grace_s
        self._lock = threading.Lock()
        self._returned: deque[tuple[float, weakref.finalize]] = deque()
        self.in_flight = 0
        self.peak = 0

    @property
    def keep(self) -> int:
        """Returned predictions whose files are kept at least (besides the grace period)."""
        return max(self.configured, self.peak)

    @contextlib.contextmanager
    def prediction(self) -> Iterator[None]:
        """Count one prediction in flight while it runs."""
        with self._lock:
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
        try:
            yield
        finally:
            with self._lock:
                self.in_flight -= 1

    def returned(self, directory: Path) -> None:
        """A prediction is returning the files in ``directory``: keep it as long as described above, and
        remove what that rule lets go of now."""
        remove = weakref.finalize(self._owner, shutil.rmtree, directory, True)
        now = time.monotonic()
        with self._lock:
            self._returned.append((now, remove))
            while len(self._returned) > self.keep and now - self._returned[0][0] >= self.grace_s:
                self._returned.popleft()[1]()

    def release(self) -> None:
        """Remove every returned directory now."""
        with self._lock:
            while self._returned:
                self._returned.popleft()[1]()
