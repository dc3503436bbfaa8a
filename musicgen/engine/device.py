"""Which device a process serves on: MUSICGEN_DEVICE resolved, or refused with one sentence.

``cuda`` (what the GPU image and the Kubernetes manifests set) serves on the GPU or does not start: a pod on a
node whose driver is too old for this PyTorch build sees no GPU at all (``torch.cuda.is_available()`` is
simply False), and serving on its CPU instead would be some hundred times slower without a word. ``auto``
takes the GPU when PyTorch sees one, else the CPU; ``cpu`` is the CPU on purpose.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from musicgen.errors import MusicGenError

log = logging.getLogger(__name__)

# the NVIDIA driver each CUDA major version's builds of PyTorch need; the GPU image's pinned torch 2.13.0 is a
# CUDA 13 build, which has kernels for Turing (T4) and newer cards only (Volta, V100, is gone from CUDA 13)
MIN_DRIVER = {"13": "580", "12": "525"}
IMAGE_CUDA = "13"
CARDS = "a Turing or newer card (T4, L4, A10G, A100, H100; not V100)"
DRIVER_FILE = Path("/proc/driver/nvidia/version")


def installed_driver() -> str | None:
    """The NVIDIA kernel driver's version, when one is loaded and visible in this container."""
    try:
        text = DRIVER_FILE.read_text()
    except OSError:
        return None
    for word in text.split():
        parts = word.split(".")
        if len(parts) >= 2 and all(p.isdigit() for p in parts):
            return word
    return None


def _no_gpu() -> str:
    """Why PyTorch sees no GPU here, and what it would need."""
    cuda = torch.version.cuda
    if cuda is None:
        found = f"this torch ({torch.__version__}) is a CPU-only build"
        cuda = IMAGE_CUDA
    else:
        driver = installed_driver()
        found = f"NVIDIA driver {driver} found" if driver else "no NVIDIA driver is visible in this container"
    need = MIN_DRIVER.get(cuda.split(".")[0], "580")
    return (f"{found}; the CUDA {cuda} build of torch {torch.__version__.split('+')[0]} needs NVIDIA driver {need} "
            f"or newer and {CARDS}")


def spelled(setting: str, value: str) -> str:
    """A setting with its value as the user gives it: ``--device cuda`` for a flag, ``MUSICGEN_DEVICE=cuda``
    for a variable (or a parameter)."""
    return f"{setting} {value}" if setting.startswith("-") else f"{setting}={value}"


def resolve(name: str, setting: str = "MUSICGEN_DEVICE") -> torch.device:
    """The device ``name`` (auto, cpu, cuda) means on this machine; ``setting``: what the user set it with, for
    the refusal (MUSICGEN_DEVICE, --device, ...)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
        if name == "cpu" and torch.version.cuda is not None:  # a GPU build without a GPU: say so
            log.warning("MUSICGEN_DEVICE=auto: PyTorch sees no GPU (%s); serving on the CPU", _no_gpu())
    if name == "cuda":
        if not torch.cuda.is_available():
            raise MusicGenError(f"{spelled(setting, 'cuda')} but PyTorch sees no GPU: {_no_gpu()}; to serve on the "
                                f"CPU on purpose, set {spelled(setting, 'cpu')}.")
        major, minor = torch.cuda.get_device_capability()
        arch = f"sm_{major}{minor}"
        built = torch.cuda.get_arch_list()
        if built and arch not in built and f"compute_{major}{minor}" not in built:
            raise MusicGenError(
                f"{spelled(setting, 'cuda')} but this GPU ({torch.cuda.get_device_name()}, {arch}) is not one "
                f"PyTorch {torch.__version__} has kernels for ({', '.join(built)}); use {CARDS}, or set "
                f"{spelled(setting, 'cpu')} to serve on the CPU on purpose.")
    return torch.device(name)
