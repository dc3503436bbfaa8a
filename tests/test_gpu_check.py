"""The GPU check (``bench/gpu_check.sh``) runs on the lent GPU machine as it is: proven here, on the CPU, in a simulation
of that machine's Python (``musicgen_dev.gpu_image``: only its image's packages, and the wheels that travel with the
tree), end to end on tiny shapes. A new import anywhere in the check's path that the image lacks turns this red."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from musicgen_dev import gpu_image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
import gpu_check  # noqa: E402  (bench/gpu_check.py: the parts and the keys each must print)


def _wheels(directory: Path, python: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "bench/gpu_wheels.sh", "--python", python, str(directory)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    """(the simulation's folder for PYTHONPATH, the wheels for this interpreter's Python)."""
    base = tmp_path_factory.mktemp("gpu-image")
    gpu_image.install(base / "hook")
    wheels = base / "wheels"
    made = _wheels(wheels, f"{sys.version_info.major}.{sys.version_info.minor}")
    assert made.returncode == 0, made.stdout + made.stderr
    return base / "hook", wheels


def _python(code: str, pythonpath: list[Path]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, pythonpath))}
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_the_simulated_image_lacks_what_the_gpu_machine_lacks(image, tmp_path):
    hook, wheels = image
    for module in ("soundfile", "cffi", "av", "julius", "demucs", "cog", "pyloudnorm", "jsonschema"):
        done = _python(f"import {module}", [hook, ROOT])
        assert done.returncode != 0 and f"No module named '{module}'" in done.stderr, (module, done.stderr)
    # what the image has, and the project itself, import as they do there
    done = _python("import torch, transformers, numpy, scipy, yaml, tqdm, pytest; import musicgen.serving.service",
                   [hook, ROOT])
    assert done.returncode == 0, done.stderr
    # the wheels bring what they bring, and nothing else
    site = tmp_path / "site"
    installed = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--target",
                                str(site), *map(str, wheels.glob("*.whl"))], capture_output=True, text=True)
    assert installed.returncode == 0, installed.stderr
    assert _python("import soundfile; print(soundfile.__libsndfile_version__)", [site, hook, ROOT]).returncode == 0
    assert _python("import av", [site, hook, ROOT]).returncode != 0


def test_the_wheels_for_the_gpu_machine_fit_what_travels(tmp_path):
    made = _wheels(tmp_path / "wheelhouse", "3.12")  # the lent machine's Python
    assert made.returncode == 0, made.stdout + made.stderr
    assert sum(f.stat().st_size for f in (tmp_path / "wheelhouse").iterdir()) <= 8 * 2**20
    names = sorted(f.name.split("-")[0].lower() for f in (tmp_path / "wheelhouse").glob("*.whl"))
    assert names == ["cffi", "pycparser", "soundfile"]
    # the pins agree with what the project installs
    pins = dict(line.split("==") for line in (ROOT / "requirements.txt").read_text().splitlines() if "==" in line)
    for line in (ROOT / "bench/gpu_wheels.txt").read_text().splitlines():
        if "==" in line and line.split("==")[0] in pins:
            assert pins[line.split("==")[0]] == line.split("==")[1], line


def test_the_gpu_check_runs_end_to_end_on_the_simulated_image(image, tmp_path):
    hook, wheels = image
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable, "GPU_WHEELS": str(wheels), "PYTHONPATH": str(hook),
           "BUDGET": "900"}
    done = subprocess.run(["bash", "bench/gpu_check.sh", "--smoke", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1200)
    log = (out / "gpu_check.log").read_text() if (out / "gpu_check.log").exists() else ""
    assert done.returncode == 0, done.stdout + done.stderr + log[-4000:]
    report = json.loads((out / "gpu_check.json").read_text())
    real = {part.name: part.keys for part in gpu_check.parts(smoke=False)}
    assert list(report["parts"]) == list(real)  # every part ran, in the real run's order
    for name, keys in real.items():
        part = report["parts"][name]
        assert part["status"] == 0, (name, part["tail"])
        assert not [k for k in keys if k not in part["figures"]], (name, part["figures"])
    figures = report["parts"]["served"]["figures"]
    assert figures["step"] == "fixed" and int(figures["shapes"]) > 0 and figures["fallbacks"] == "0"
    assert float(figures["c4.audio_s_per_s"]) > 0 and float(figures["c8.roofline"]) > 0
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.json", "gpu_check.log", "install.log"]


def test_the_roofline_counts_the_bytes_a_step_must_read():
    from musicgen_dev import roofline

    per_position = roofline.kv_bytes_per_position(48, 1536, 2)  # musicgen-melody in bf16
    assert per_position == 294_912
    # a step attends every position before it: after a prefix of 5, two steps read 6 then 7 positions (and 3
    # cross-attended text tokens each), on both rows
    assert roofline.request_bytes(10, steps=2, prefix=5, text_tokens=3) == 2 * 10 * (6 + 7 + 3 + 3)
    # eight 10 s melody requests read ~1.6x what one reads per step: at equal efficiency ~5x one's audio rate
    weights, steps, prefix = 3.1e9, 503, 235 + 12
    one = roofline.run_bytes(weights, steps, [roofline.request_bytes(per_position, steps, prefix)]) / steps
    eight = roofline.run_bytes(weights, steps, [roofline.request_bytes(per_position, steps, prefix)] * 8) / steps
    assert 3.3e9 < one < 3.5e9 and 5.3e9 < eight < 5.6e9
    assert 4.5 < 8 * one / eight < 5.2
    assert roofline.fraction(3e9, 2.0, 3e9) == 0.5
