"""Progress bars on stderr, drawn by tqdm: redrawn in place on a terminal; in a log (stderr not a terminal)
plain ASCII, at most one update every few seconds, so that a captured log stays short."""

from __future__ import annotations

import sys

from tqdm import tqdm


def bar(total: int, desc: str, unit: str) -> tqdm:
    """A bar over ``total`` ``unit``s; call ``update(n)`` as they complete and ``close()`` at the end."""
    terminal = sys.stderr.isatty()
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, ascii=not terminal,
                dynamic_ncols=terminal, ncols=None if terminal else 80, mininterval=0.1 if terminal else 5.0)


class StepBar:
    """A request's ``progress`` callback (steps done, steps in total) shown as a bar."""

    def __init__(self, desc: str = "generating"):
        self.desc = desc
        self.bar: tqdm | None = None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            self.bar = bar(total, self.desc, "step")
        self.bar.update(done - self.bar.n)
        if done >= total:
            self.bar.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
