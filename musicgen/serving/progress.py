"""Progress bars on stderr, drawn by tqdm: redrawn in place on a terminal; in a log (stderr not a terminal)
plain ASCII, at most one update every few seconds, so that a captured log stays short. A bar is shown only
while info lines are (``musicgen --quiet`` turns both off)."""

from __future__ import annotations

import logging
import sys

from tqdm import tqdm


def bar(total: float, desc: str, unit: str, bar_format: str | None = None) -> tqdm:
    """A bar over ``total`` ``unit``s; call ``update(n)`` as they complete and ``close()`` at the end."""
    terminal = sys.stderr.isatty()
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, ascii=not terminal, bar_format=bar_format,
                dynamic_ncols=terminal, ncols=None if terminal else 80, mininterval=0.1 if terminal else 5.0,
                disable=not logging.getLogger("musicgen").isEnabledFor(logging.INFO))


class MusicBar:
    """A prediction's ``progress`` callback (seconds of music generated, seconds to generate) as a bar that
    counts seconds of music."""

    FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total:.1f} s of music [{elapsed}<{remaining}]"

    def __init__(self, desc: str = "generating"):
        self.desc = desc
        self.bar: tqdm | None = None

    def __call__(self, done: float, total: float) -> None:
        if self.bar is None:
            self.bar = bar(total, self.desc, "s", self.FORMAT)
        self.bar.update(done - self.bar.n)
        if done >= total:
            self.bar.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
