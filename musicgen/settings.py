"""Deployment configuration, read once from the environment (docs/api.md, "Deployment configuration"), and the
device and precision it resolves to on this machine."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from musicgen.engine import device as device_mod
from musicgen.errors import MusicGenError
from musicgen.inputs import DECODERS
from musicgen.engine.stems import MODEL_NAME as STEMS_MODEL

DEFAULT_MODEL = "facebook/musicgen-melody"
PROJECT_ROOT = Path(__file__).resolve().parent.parent
WEIGHTS_ROOT = PROJECT_ROOT / "weights"
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8", "int4")
STEPS = ("auto", "fixed", "segments")
_TRUE = {"1", "true", "yes", "on"}
# a Hugging Face Hub repository id: [owner/]name of letters, digits, '-', '_' and '.'
_REPO_ID = re.compile(r"(?:[A-Za-z0-9][\w.-]{0,95}/)?[A-Za-z0-9][\w.-]{0,95}")
_FALSE = {"0", "false", "no", "off"}


def flag(value: str | None) -> bool:
    """A boolean setting: 1/true/yes/on (any case) is true, anything else false."""
    return (value or "").strip().lower() in _TRUE


def repo_id_problem(value: str, name: str = "MUSICGEN_MODEL") -> str | None:
    """The sentence refusing ``value`` as a Hub repository id given as ``name``; None when it is one."""
    if _REPO_ID.fullmatch(value) and ".." not in value and "--" not in value:
        return None
    return (f"{name} must be a Hugging Face Hub repository id (owner/name: letters, digits, '-', '_', '.'), "
            f"such as facebook/musicgen-small, got {value!r}.")


def _count(name: str, value: str | None) -> int | None:
    """A positive whole number, when set."""
    if not (value or "").strip():
        return None
    if not value.strip().isdigit() or int(value) < 1:
        raise MusicGenError(f"{name} must be a whole number, 1 or more, got {value!r}.")
    return int(value)


def _switch(name: str, value: str | None, default: bool | None) -> bool | None:
    """A boolean setting that must say yes or no when it is set."""
    text = (value or "").strip().lower()
    if not text:
        return default
    if text not in _TRUE | _FALSE:
        raise MusicGenError(f"{name} must be 1 or 0 (true/false, yes/no, on/off), got {value!r}.")
    return text in _TRUE


def _seconds(name: str, value: str | None) -> float:
    """A number of seconds, 0 or more (0 when unset)."""
    text = (value or "").strip()
    try:
        seconds = float(text) if text else 0.0
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds <= 60:
        raise MusicGenError(f"{name} must be a number of seconds from 0 (off) to 60, got {value!r}.")
    return seconds


def _concurrency(env: Mapping[str, str]) -> int | None:
    """MUSICGEN_CONCURRENCY, else COG_MAX_CONCURRENCY; ``auto`` is the device's default whatever
    COG_MAX_CONCURRENCY says (``make serve``: the image's predictions at once, the device's slots)."""
    own = (env.get("MUSICGEN_CONCURRENCY") or "").strip()
    if own.lower() == "auto":
        return None
    return _count("MUSICGEN_CONCURRENCY", own or env.get("COG_MAX_CONCURRENCY"))


@dataclass(frozen=True)
class Settings:
    model: str = DEFAULT_MODEL  # MUSICGEN_MODEL: Hub repo id
    weights: Path | None = None  # MUSICGEN_WEIGHTS: checkpoint directory (default weights/<name of the model>)
    revision: str | None = None  # MUSICGEN_REVISION: branch, tag or commit to download (None: main, any kept)
    device: str = "auto"  # MUSICGEN_DEVICE
    precision: str = "auto"  # MUSICGEN_PRECISION
    compile: bool | None = None  # MUSICGEN_COMPILE (None: on CUDA only)
    step: str = "auto"  # MUSICGEN_STEP: the decode step's form
    offline: bool = False  # HF_HUB_OFFLINE: never touch the network
    melody_stems: bool = True  # MUSICGEN_MELODY_STEMS: Demucs stems before the melody chroma (0: raw mix)
    concurrency: int | None = None  # MUSICGEN_CONCURRENCY (else COG_MAX_CONCURRENCY): requests decoded at once
    stems_weights: Path | None = None  # MUSICGEN_STEMS_WEIGHTS: the HTDemucs bag (default weights/htdemucs)
    decoder: str = "encodec"  # MUSICGEN_DECODER: tokens to audio by EnCodec or MultiBand Diffusion (mbd)
    mbd_weights: Path | None = None  # MUSICGEN_MBD_WEIGHTS: MultiBand Diffusion (default weights/multiband-diffusion)
    stream_chunk_s: float = 0.0  # MUSICGEN_STREAM_CHUNK_S: the server streams a file per chunk of this many seconds (0: off)
    metrics_port: int | None = None  # MUSICGEN_METRICS_PORT: the server's Prometheus metrics (musicgen.serving.metrics)
    metrics_host: str = "127.0.0.1"  # MUSICGEN_METRICS_HOST: the address the metrics bind (0.0.0.0: every interface)
    server_concurrency: int | None = None  # COG_MAX_CONCURRENCY: predictions the server runs at once
    cache: Path | None = None  # MUSICGEN_CACHE: where .bin checkpoints not downloaded here are converted
    # what the user set device / precision / concurrency with, when not their variables (a flag such as
    # --device, a parameter): the refusals name it
    names: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    def name(self, setting: str) -> str:
        """How the user set ``setting`` (device, precision, concurrency): its flag or parameter, else its variable."""
        return self.names.get(setting, f"MUSICGEN_{setting.upper()}")

    def __post_init__(self) -> None:
        if problem := repo_id_problem(self.model):
            raise MusicGenError(problem)
        if self.metrics_port is not None and not 0 < self.metrics_port < 65536:
            raise MusicGenError(f"MUSICGEN_METRICS_PORT must be a port number (1-65535), got {self.metrics_port}.")
        if self.device not in DEVICES:
            raise MusicGenError(f"{self.name('device')} must be one of {', '.join(DEVICES)}, got {self.device!r}.")
        if self.concurrency is not None and (isinstance(self.concurrency, bool) or not isinstance(self.concurrency, int)
                                             or self.concurrency < 1):
            raise MusicGenError(f"{self.name('concurrency')} must be a whole number, 1 or more, got "
                                f"{self.concurrency!r}.")
        if self.decoder not in DECODERS:
            raise MusicGenError(f"{self.name('decoder')} must be one of {', '.join(DECODERS)}, got {self.decoder!r}.")
        if self.decoder == "mbd" and self.stream_chunk_s > 0:
            raise MusicGenError(
                f"{self.name('decoder')}=mbd decodes each clip whole once its tokens are done, so it cannot stream "
                f"MUSICGEN_STREAM_CHUNK_S={self.stream_chunk_s:g} chunks: set MUSICGEN_STREAM_CHUNK_S=0, or "
                "MUSICGEN_DECODER=encodec to stream.")
        if self.step not in STEPS:
            raise MusicGenError(f"MUSICGEN_STEP must be one of {', '.join(STEPS)}, got {self.step!r}.")
        if self.step == "segments" and self.compile:
            raise MusicGenError(
                "MUSICGEN_COMPILE=1 needs the fixed-shape step, but MUSICGEN_STEP=segments is set: the segments' step "
                "compiled gives requests decoded together other bytes than alone; unset MUSICGEN_STEP (compiling "
                "picks the fixed step) or set MUSICGEN_COMPILE=0.")
        if self.precision not in PRECISIONS:
            raise MusicGenError(
                f"{self.name('precision')} must be one of {', '.join(PRECISIONS)}, got {self.precision!r}.")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, names: Mapping[str, str] | None = None,
                 **overrides) -> Settings:
        """The settings the environment gives, with ``overrides`` (None values ignored) on top; ``names``: how
        the overrides were given (``{"device": "--device"}``), for the refusals, which name the variable else."""
        env = os.environ if environ is None else environ
        weights, stems_weights = env.get("MUSICGEN_WEIGHTS"), env.get("MUSICGEN_STEMS_WEIGHTS")
        settings = cls(
            model=env.get("MUSICGEN_MODEL") or DEFAULT_MODEL,
            weights=Path(weights).expanduser() if weights else None,
            revision=(env.get("MUSICGEN_REVISION") or "").strip() or None,
            device=(env.get("MUSICGEN_DEVICE") or "auto").strip().lower(),
            precision=(env.get("MUSICGEN_PRECISION") or "auto").strip().lower(),
            compile=_switch("MUSICGEN_COMPILE", env.get("MUSICGEN_COMPILE"), None),
            step=(env.get("MUSICGEN_STEP") or "auto").strip().lower(),
            offline=flag(env.get("HF_HUB_OFFLINE")),
            melody_stems=_switch("MUSICGEN_MELODY_STEMS", env.get("MUSICGEN_MELODY_STEMS"), True),
            stems_weights=Path(stems_weights).expanduser() if stems_weights else None,
            decoder=(env.get("MUSICGEN_DECODER") or "encodec").strip().lower(),
            mbd_weights=Path(env["MUSICGEN_MBD_WEIGHTS"]).expanduser() if env.get("MUSICGEN_MBD_WEIGHTS") else None,
            concurrency=_concurrency(env),
            metrics_port=_count("MUSICGEN_METRICS_PORT", env.get("MUSICGEN_METRICS_PORT")),
            stream_chunk_s=_seconds("MUSICGEN_STREAM_CHUNK_S", env.get("MUSICGEN_STREAM_CHUNK_S")),
            metrics_host=(env.get("MUSICGEN_METRICS_HOST") or "").strip() or "127.0.0.1",
            server_concurrency=_count("COG_MAX_CONCURRENCY", env.get("COG_MAX_CONCURRENCY")),
            cache=Path(env["MUSICGEN_CACHE"]).expanduser() if env.get("MUSICGEN_CACHE") else (
                Path(env["XDG_CACHE_HOME"]).expanduser() / "musicgen" if env.get("XDG_CACHE_HOME") else None),
        )
        given = {k: v for k, v in overrides.items() if v is not None}
        names = {k: v for k, v in (names or {}).items() if k in given}
        if isinstance(given.get("device"), str):
            given["device"] = given["device"].strip().lower()
        if isinstance(given.get("decoder"), str):
            given["decoder"] = given["decoder"].strip().lower()
        if isinstance(given.get("precision"), str):
            given["precision"] = given["precision"].strip().lower()
        return replace(settings, names=names, **given)

    @property
    def weights_dir(self) -> Path:
        """Where the checkpoint lives: MUSICGEN_WEIGHTS, else weights/<name of the model>."""
        return self.weights if self.weights is not None else weights_dir_for(self.model)

    @property
    def cache_dir(self) -> Path:
        """Where a ``.bin`` checkpoint that this project did not download is converted to safetensors (once;
        its own directory is never written to): MUSICGEN_CACHE, else $XDG_CACHE_HOME/musicgen, else
        ~/.cache/musicgen."""
        return self.cache if self.cache is not None else Path.home() / ".cache" / "musicgen"

    @property
    def stems_dir(self) -> Path:
        """Where the HTDemucs bag lives: MUSICGEN_STEMS_WEIGHTS, else weights/htdemucs."""
        return self.stems_weights if self.stems_weights is not None else WEIGHTS_ROOT / STEMS_MODEL

    @property
    def mbd_dir(self) -> Path:
        """Where the MultiBand Diffusion weights live: MUSICGEN_MBD_WEIGHTS, else weights/multiband-diffusion."""
        return self.mbd_weights if self.mbd_weights is not None else WEIGHTS_ROOT / "multiband-diffusion"

    def torch_device(self) -> torch.device:
        """The device to serve on, or a refusal in one sentence (``musicgen.engine.device``)."""
        return device_mod.resolve(self.device, self.name("device"))

    def slots(self, device: torch.device) -> int:
        """How many requests decode at once: the setting, else the device's default."""
        return self.concurrency or default_concurrency(device)

    def fixed_step(self, device: torch.device) -> bool:
        """Whether requests decode in the fixed-shape step (``musicgen.engine.graphs``, CUDA graphs on a GPU):
        MUSICGEN_STEP=fixed, or auto on CUDA or when compiling (the only step that is compiled: the segments' step
        compiled gave concurrent requests other bytes than alone); else in the segments' step (exact, cheapest
        on a CPU)."""
        return self.step == "fixed" or (self.step == "auto" and (device.type == "cuda" or self.compile_on(device)))

    def compile_on(self, device: torch.device) -> bool:
        """Whether the decode step goes through ``torch.compile``: MUSICGEN_COMPILE, else on CUDA."""
        return device.type == "cuda" if self.compile is None else self.compile

    def decode_precision(self, device: torch.device) -> str:
        """The decode precision on ``device``: MUSICGEN_PRECISION, or the device's default for auto."""
        if self.precision in ("int8", "int4") and device.type != "cpu":
            raise MusicGenError(f"{device_mod.spelled(self.name('precision'), self.precision)} is a CPU option; use "
                                "auto, bf16 or fp16 on a GPU.")
        return default_precision(device) if self.precision == "auto" else self.precision


def weights_dir_for(model: str) -> Path:
    return WEIGHTS_ROOT / model.rstrip("/").split("/")[-1]


def default_precision(device: torch.device) -> str:
    """The decode precision unless MUSICGEN_PRECISION says otherwise. CPU: int8, the fastest setting whose
    greedy agreement with fp32 matches bf16's (bench/decode.py; int4 is barely faster and agrees far less).
    CUDA: bf16 on cards with native bf16 (Ampere and later), else fp16 (emulated bf16 is slow)."""
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
    return "int8"


def default_concurrency(device: torch.device) -> int:
    """Requests decoded at once unless MUSICGEN_CONCURRENCY (or COG_MAX_CONCURRENCY) says otherwise: 2 on a
    CPU (two cores gain little past that), at most 8 on a GPU, fewer when the card's memory holds fewer
    (``musicgen.serving.memory``: each slot holds a 30 s window's KV cache, 0.4 to 1.6 GB, docs/deployment.md)."""
    return 8 if device.type == "cuda" else 2
