"""Several command-line invocations in one subprocess: each is the command's own ``main(argv)`` (what
``python -m musicgen.hub`` and ``musicgen`` run), with its exit status, its stdout and its stderr, in a Python
started once for the session. The heavy imports (torch, transformers) are paid once instead of once per
invocation; between invocations a test may change files or the Hub stand-in.

Each invocation gets the environment of the session plus its own variables (MUSICGEN_*: read when a command
starts), file descriptors 1 and 2 of its own (log lines and progress bars included), and logging as a new
process has it (no handler, the root logger at WARNING), so that what it prints is what the command prints on
its own. HF_* variables are fixed for the session: huggingface_hub reads them once, at import.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# the subprocess: one JSON line per invocation in on stdin, one JSON line per outcome out on the stdout it began with
_CHILD = r"""
import importlib, json, logging, os, sys, tempfile, traceback
replies = os.fdopen(os.dup(1), "w")
os.dup2(os.open(os.devnull, os.O_WRONLY), 1)  # between invocations: nothing but replies reaches the pipe
for line in sys.stdin:
    step = json.loads(line)
    saved_env = dict(os.environ)
    os.environ.update(step["env"])
    for key in step["unset"]:
        os.environ.pop(key, None)
    logging.root.handlers.clear()
    logging.root.setLevel(logging.WARNING)
    logging.getLogger("musicgen").setLevel(logging.NOTSET)
    logging.disable(logging.NOTSET)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        kept = os.dup(1), os.dup(2)
        sys.stdout.flush(); sys.stderr.flush()
        os.dup2(out.fileno(), 1); os.dup2(err.fileno(), 2)
        try:
            code = importlib.import_module(step["module"]).main(step["argv"])
        except SystemExit as exc:
            code = exc.code
            if isinstance(code, str):
                print(code, file=sys.stderr)
                code = 1
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            sys.stdout.flush(); sys.stderr.flush()
            os.dup2(kept[0], 1); os.dup2(kept[1], 2)
            os.close(kept[0]); os.close(kept[1])
            os.environ.clear(); os.environ.update(saved_env)
        texts = []
        for f in (out, err):
            f.seek(0)
            texts.append(f.read().decode(errors="replace"))
    replies.write(json.dumps({"returncode": 0 if code is None else int(code), "stdout": texts[0],
                              "stderr": texts[1]}) + "\n")
    replies.flush()
"""


@dataclass
class Outcome:
    """What one invocation did, as ``subprocess.CompletedProcess`` has it."""

    returncode: int
    stdout: str
    stderr: str


class CliSession:
    """``with CliSession(env) as cli: cli.hub(*args)`` / ``cli.musicgen(*args)``: the ``python -m musicgen.hub``
    and ``musicgen`` commands, run in one subprocess started with ``env`` (cwd: the repository)."""

    def __init__(self, env: dict[str, str], timeout: float = 300):
        self.env, self.timeout = env, timeout
        self._log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen([sys.executable, "-c", _CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._log, text=True, env=env, cwd=ROOT)

    def __enter__(self) -> CliSession:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def hub(self, *args: str, **env: str | None) -> Outcome:
        """``python -m musicgen.hub ARGS`` with the variables ``env`` set (None: unset)."""
        return self.run("musicgen.hub", args, env)

    def musicgen(self, *args: str, **env: str | None) -> Outcome:
        """``musicgen ARGS`` with the variables ``env`` set (None: unset)."""
        return self.run("musicgen.cli", args, env)

    def run(self, module: str, args, env: dict[str, str | None]) -> Outcome:
        fixed = sorted(k for k in env if k.startswith("HF_"))
        assert not fixed, f"{fixed}: HF_* variables are read at import; start another CliSession for them"
        step = {"module": module, "argv": [str(a) for a in args],
                "env": {k: str(v) for k, v in env.items() if v is not None},
                "unset": [k for k, v in env.items() if v is None]}
        self.proc.stdin.write(json.dumps(step) + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], self.timeout)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            self.close()
            self._log.seek(0)
            raise RuntimeError(f"{module} {args}: no outcome (exit {self.proc.returncode}): "
                               f"{self._log.read().decode(errors='replace')[-3000:]}")
        return Outcome(**json.loads(line))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()
        self._log.close()
