"""Every GPU check in one run, for a bare GPU machine: writes ``DIR/gpu_check.json`` (and each part's output to
``DIR/<part>.log``). Run it through ``bench/gpu_check.sh DIR`` (which installs nothing from the network).

Parts, each in its own process with its own time limit, so one failure or hang does not lose the others:

- ``env``: torch, CUDA, the card, its memory, the driver;
- ``tests``: ``tests/test_gpu.py`` (the fixed-shape step's tokens against the segments' step on CUDA, no host
  sync in a decode step, bf16 near fp32, CUDA graphs recorded once);
- ``decode-small`` / ``decode-melody``: ``bench/decode.py`` on musicgen-small and musicgen-melody shapes, ours
  in fp32/bf16/fp16 (CUDA graphs) against transformers' ``generate()`` in fp32 and fp16 (SDPA), same weights;
- ``throughput``: ``bench/throughput.py`` on musicgen-melody shapes with 1, 4 and 8 concurrent requests;
- ``e2e``: ``bench/e2e.py`` (30 s of music, request to WAV) on musicgen-melody shapes.

The JSON holds each part's exit status, seconds, the figures parsed from its output (``key=value`` pairs of
its last lines) and the peak GPU memory it reported.

    python bench/gpu_check.py DIR [--budget 450]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

ENV = r"""
import json, torch, transformers
info = {"torch": torch.__version__, "cuda": torch.version.cuda, "transformers": transformers.__version__,
        "python": __import__("sys").version.split()[0], "available": torch.cuda.is_available()}
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    free, total = torch.cuda.mem_get_info()
    info.update(name=p.name, capability=f"{p.major}.{p.minor}", memory_gib=round(total / 2**30, 1),
                free_gib=round(free / 2**30, 1), bf16=torch.cuda.is_bf16_supported(including_emulation=False))
print("ENV " + json.dumps(info))
"""

# (name, command, seconds allowed): in the order they run; the budget cuts what does not fit
PARTS = [
    ("env", [sys.executable, "-c", ENV], 60),
    ("tests", [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "tests/test_gpu.py"], 150),
    ("decode-small", [sys.executable, "bench/decode.py", "--preset", "small", "--head-scale", "10",
                      "--seconds", "4", "--compile"], 150),
    ("decode-melody", [sys.executable, "bench/decode.py", "--preset", "medium", "--melody", "--head-scale", "10",
                       "--seconds", "4"], 150),
    ("throughput", [sys.executable, "bench/throughput.py", "--preset", "medium", "--melody", "--seconds", "10",
                    "--clients", "1", "4", "8"], 150),
    ("e2e", [sys.executable, "bench/e2e.py", "--preset", "medium", "--melody", "--seconds", "30"], 120),
]


def figures(text: str) -> dict[str, str]:
    """``key=value`` pairs of the output's last 40 lines (later ones win), and the ENV line's JSON."""
    found: dict[str, str] = {}
    for line in text.splitlines()[-40:]:
        if line.startswith("ENV "):
            found.update(json.loads(line[4:]))
            continue
        for key, value in re.findall(r"([A-Za-z_][\w.]*)=([^\s,]+)", line):
            found[key] = value
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--budget", type=float, default=450.0, help="seconds for all parts together")
    parser.add_argument("--only", nargs="*", help="run only these parts")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "MUSICGEN_MELODY_STEMS": os.environ.get("MUSICGEN_MELODY_STEMS", "0"), "HF_HUB_OFFLINE": "1"}
    report: dict = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "parts": {}}
    deadline = time.monotonic() + args.budget
    for name, command, limit in PARTS:
        if args.only and name not in args.only:
            continue
        left = deadline - time.monotonic()
        if left < 20:
            report["parts"][name] = {"status": "skipped: out of time"}
            continue
        started = time.monotonic()
        log = args.out / f"{name}.log"
        try:
            done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                                  timeout=min(limit, left))
            output, status = done.stdout + done.stderr, done.returncode
        except subprocess.TimeoutExpired as exc:
            output = (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
            status = "timeout"
        log.write_text(output)
        report["parts"][name] = {"status": status, "seconds": round(time.monotonic() - started, 1),
                                 "figures": figures(output), "tail": output.splitlines()[-15:]}
        print(f"{name}: {status} in {time.monotonic() - started:.0f}s", flush=True)
        (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2))  # what is done survives a kill
    report["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2))
    return 0 if all(p.get("status") == 0 for p in report["parts"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
