"""Every GPU check in one run, most valuable first: writes DIR/gpu_check.json and DIR/gpu_check.log (every part's output).

Run it through ``bench/gpu_check.sh DIR``, which installs the wheels the lent machine lacks (docs/development.md, "The
GPU check"). Each part runs in its own process under its own time limit, within one budget for all, so a failure or
a hang loses only that part, and what is done is written to the report at once:

1. ``env``: the card, driver, torch, transformers, and the card's measured copy bandwidth (the roofline's bound);
2. ``served``: ``bench/served.py``, the configuration the image serves (cog.yaml's settings, compiled step, CUDA
   graphs, the memory plan's slots) on musicgen-melody shapes: setup split into load / warm-up (compilation) /
   capture, then 1, 4 and 8 concurrent requests, then 30 s of music end to end;
3. ``decode``: ``bench/decode.py``, one request's decoding against transformers' ``generate()`` (fp32 and fp16,
   SDPA) on the same weights, each precision's agreement with fp32;
4. ``stream``: ``bench/stream.py`` on musicgen-small shapes, 1, 4 and 8 requests streaming at once: time to first
   audio, real-time factor, the largest playback stall;
5. ``mbd``: ``bench/mbd.py``, MultiBand Diffusion against EnCodec decoding, 8 s and 30 s clips (random U-Nets of
   the size its docstring gives), seconds of audio per second and peak GPU memory;
6. ``tests``: ``tests/test_gpu.py`` (graphs decode what the segments' step decodes, no host sync, bf16 near fp32,
   MultiBand Diffusion's parts equal to audiocraft's on the GPU).

Every figure is a ``key=value`` line of a part's output; the report holds them per part, with each part's exit
status, seconds and the keys it should have printed but did not (``missing``). The exit status is 0 only when
every part exited 0 and printed every key. ``--smoke`` runs the same parts on tiny shapes on whatever device there
is (CI runs it on the CPU, in a simulation of the GPU machine's Python).

    python bench/gpu_check.py DIR [--smoke] [--budget 450] [--only env served ...]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

ENV = r"""
import shutil, subprocess, sys, torch, transformers
from musicgen_dev.roofline import copy_bandwidth
def say(k, v): print(f"{k}={v}", flush=True)
say("python", sys.version.split()[0]); say("torch", torch.__version__); say("cuda", torch.version.cuda)
say("transformers", transformers.__version__); say("cuda_available", torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    free, total = torch.cuda.mem_get_info()
    say("card", p.name.replace(" ", "_")); say("capability", f"{p.major}.{p.minor}"); say("sms", p.multi_processor_count)
    say("memory_gib", round(total / 2**30, 1)); say("free_gib", round(free / 2**30, 1))
    say("bf16", torch.cuda.is_bf16_supported(including_emulation=False))
    smi = shutil.which("nvidia-smi")
    driver = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                            text=True).stdout.strip() if smi else "unknown"
    say("driver", driver or "unknown")
    device = torch.device("cuda")
else:
    say("card", "cpu"); say("driver", "none")
    device = torch.device("cpu")
say("copy_gb_per_s", round(copy_bandwidth(device, (1 << 30) if device.type == "cuda" else (1 << 26)) / 1e9, 1))
"""

SERVED_KEYS = ["device", "setup_s", "load_s", "warm_up_s", "capture_s", "compiled", "graphs", "shapes", "fallbacks",
               "per_row", "sampling_in_step", "slots", "precision", "copy_gb_per_s", "weight_gb", "setup.peak_gpu_gib",
               "e2e_s", "e2e.peak_gpu_gib"]
for _n in (1, 4, 8):
    SERVED_KEYS += [f"c{_n}.{k}" for k in ("audio_s_per_s", "vs_one_client", "p50_s", "p95_s", "steps_per_s",
                                           "gb_per_s", "roofline", "peak_gpu_gib")]


@dataclass
class Part:
    name: str
    command: list[str]
    limit: float  # seconds
    keys: list[str]  # the figures it must print
    env: dict[str, str] = field(default_factory=dict)


def parts(smoke: bool) -> list[Part]:
    """The parts in the order they run (the budget cuts the last ones first)."""
    py = sys.executable
    if smoke:  # tiny shapes; the CUDA default step form, eager (compiling it takes minutes on a CPU)
        served_args = ["--preset", "tiny", "--melody", "--seconds", "1", "--e2e-seconds", "2"]
        served_env = {"MUSICGEN_DEVICE": os.environ.get("MUSICGEN_DEVICE", "cpu"), "MUSICGEN_STEP": "fixed",
                      "MUSICGEN_COMPILE": "0"}
        decode_args = ["--preset", "tiny", "--seconds", "0.2", "--precisions", "fp32"]
        stream_args = ["--preset", "tiny", "--seconds", "2", "--device", os.environ.get("MUSICGEN_DEVICE", "cpu")]
        mbd_args = ["--codec", "tiny", "--hidden", "4", "--depth", "1", "--passes", "1", "--device",
                    os.environ.get("MUSICGEN_DEVICE", "cpu")]
    else:
        served_args = ["--preset", "medium", "--melody", "--seconds", "10", "--e2e-seconds", "30"]
        served_env = {}
        decode_args = ["--preset", "medium", "--melody", "--head-scale", "10", "--seconds", "4"]
        stream_args = ["--preset", "small", "--seconds", "10"]
        mbd_args = []
    return [
        Part("env", [py, "-c", ENV], 90, ["torch", "cuda", "transformers", "card", "driver", "copy_gb_per_s"]),
        Part("served", [py, "bench/served.py", *served_args, "--clients", "1", "4", "8"], 300, SERVED_KEYS,
             served_env),
        Part("decode", [py, "bench/decode.py", *decode_args], 150,
             ["peer_fp32.steps_per_s", "peer_fast.steps_per_s", "ours.steps_per_s", "ours.precision",
              "ours.gb_per_s", "ours.roofline", "ratio", "peak_gpu_gib"]),
        Part("stream", [py, "bench/stream.py", *stream_args, "--clients", "1", "4", "8"], 90,
             [f"c{n}.{key}" for n in (1, 8) for key in ("ttfa_s", "rtf", "stall_s")]),
        Part("mbd", [py, "bench/mbd.py", "--seconds", "8", "30", *mbd_args], 60,
             [f"{d}.{s}.rtf" for d in ("encodec", "mbd") for s in (8, 30)] + ["mbd.30.peak_mb"]),
        Part("tests", [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_gpu.py"], 120, []),
    ]


def figures(text: str) -> dict[str, str]:
    """The output's ``key=value`` lines (a later one wins)."""
    return dict(re.findall(r"^([A-Za-z_][\w.]*)=(\S+)$", text, flags=re.MULTILINE))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, any device (the plumbing, in CI)")
    parser.add_argument("--budget", type=float, default=450.0, help="seconds for all parts together")
    parser.add_argument("--only", nargs="*", help="run only these parts")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    base_env = {**os.environ, "HF_HUB_OFFLINE": "1", "MUSICGEN_MELODY_STEMS": "0", "PYTHONUNBUFFERED": "1",
                "PYTHONPATH": os.pathsep.join(p for p in (os.environ.get("PYTHONPATH", ""), str(ROOT)) if p)}
    report: dict = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "smoke": args.smoke,
                    "budget_s": args.budget, "parts": {}}
    log = (args.out / "gpu_check.log").open("w")
    deadline = time.monotonic() + args.budget
    for part in parts(args.smoke):
        if args.only and part.name not in args.only:
            continue
        left = deadline - time.monotonic()
        if left < 20:
            report["parts"][part.name] = {"status": "skipped: out of time", "missing": part.keys}
            continue
        started = time.monotonic()
        try:
            done = subprocess.run(part.command, cwd=ROOT, env={**base_env, **part.env}, capture_output=True,
                                  text=True, timeout=min(part.limit, left))
            output, status = done.stdout + done.stderr, done.returncode
        except subprocess.TimeoutExpired as exc:
            output = "".join(x.decode(errors="replace") if isinstance(x, bytes) else x
                             for x in (exc.stdout, exc.stderr) if x)
            status = "timeout"
        seconds = time.monotonic() - started
        found = figures(output)
        log.write(f"===== {part.name}: {status} in {seconds:.0f} s\n{output}\n")
        log.flush()
        report["parts"][part.name] = {"status": status, "seconds": round(seconds, 1), "figures": found,
                                      "missing": [k for k in part.keys if k not in found],
                                      "tail": output.splitlines()[-12:]}
        print(f"{part.name}: {status} in {seconds:.0f} s, {len(found)} figures", flush=True)
        (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2))  # what is done survives a kill
    report["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2))
    log.close()
    ok = all(p.get("status") == 0 and not p.get("missing") for p in report["parts"].values())
    print("gpu check: " + ("every part passed" if ok else "some parts failed or lack figures (gpu_check.json)"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
