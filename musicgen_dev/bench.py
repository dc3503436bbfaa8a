"""What every bench in ``bench/`` shares: its command line's help and its scratch directory."""

from __future__ import annotations

import argparse
import atexit
import shutil
import tempfile
from pathlib import Path


def parser(doc: str) -> argparse.ArgumentParser:
    """An argument parser whose ``--help`` shows the bench's whole docstring (what it measures, how to run
    it), as written."""
    return argparse.ArgumentParser(description=doc.strip(), formatter_class=argparse.RawDescriptionHelpFormatter)


def work_dir(prefix: str) -> Path:
    """A fresh temporary directory for the bench's checkpoints and files, removed when the bench exits,
    however it exits (an error or Ctrl-C included; not when the process is killed)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, path, True)
    return path


def predict_files(predictor, **inputs) -> list[Path]:
    """The files of one call of the Cog predictor's ``predict`` (an async generator: Cog iterates what it
    yields, the final file last), called as Cog calls it, outside a server."""
    import asyncio

    async def files() -> list[Path]:
        return [Path(path) async for path in predictor.predict(**inputs)]

    return asyncio.run(files())
