"""Cog's real HTTP server (coglet) with predict.py on 127.0.0.1, configured as the image runs it (what
``make serve`` / scripts/serve.sh start; a development tool).

- Predictions at once: ``COG_MAX_CONCURRENCY``, else cog.yaml's ``concurrency.max`` (8), as the image bakes
  it in. The model decodes ``MUSICGEN_CONCURRENCY`` of them together, else the device's default (up to 8 on a
  GPU, as many as its memory holds; 2 on a CPU, whose KV cache is float32): the others wait their turn, and
  one past ``COG_MAX_CONCURRENCY`` gets 409. (``MUSICGEN_CONCURRENCY=auto`` is how the device's default is
  asked for here: in the image the model's slots follow ``COG_MAX_CONCURRENCY`` unless it is set.)
- Logs: one readable line per event (coglet's ``LOG_FORMAT=console``: time, level, source, message, then
  fields such as ``prediction_id=…``; coloured on a terminal only); ``LOG_FORMAT=json`` gives the JSON lines
  the image writes, for machines.

Arguments go to the server (``--upload-url URL``); ``HOST`` and ``PORT`` choose where it listens.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def image_concurrency() -> int:
    """cog.yaml's ``concurrency.max``: the predictions the image runs at once."""
    return int(yaml.safe_load((ROOT / "cog.yaml").read_text())["concurrency"]["max"])


def server_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment the server runs with: ``environ`` with the defaults above filled in."""
    env = dict(environ)
    # coglet starts its worker with the first `python` on PATH: it must be this one
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["COG_PREDICT_TYPE_STUB"] = "predict.py:Predictor"
    env.setdefault("PORT", "5000")
    env["COG_MAX_CONCURRENCY"] = env.get("COG_MAX_CONCURRENCY") or str(image_concurrency())
    env["MUSICGEN_CONCURRENCY"] = env.get("MUSICGEN_CONCURRENCY") or "auto"
    env["LOG_FORMAT"] = env.get("LOG_FORMAT") or "console"
    if not sys.stderr.isatty():  # colours only on a terminal, plain text in a file or a pipe
        env.setdefault("NO_COLOR", "1")
    return env


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    env = server_env(os.environ)
    print(f"Cog's server on http://{env.get('HOST') or '127.0.0.1'}:{env['PORT']}: up to "
          f"{env['COG_MAX_CONCURRENCY']} predictions at once (COG_MAX_CONCURRENCY), readable logs "
          f"(LOG_FORMAT={env['LOG_FORMAT']}; LOG_FORMAT=json for JSON lines)", file=sys.stderr, flush=True)
    os.chdir(ROOT)
    os.execvpe(sys.executable, [sys.executable, "-m", "cog.server.http", "--host",
                                env.get("HOST") or "127.0.0.1", *args], env)


if __name__ == "__main__":
    main()
