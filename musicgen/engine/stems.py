"""Melody stems, as audiocraft's ``ChromaStemConditioner`` takes them: the melody goes through Demucs
(HTDemucs, the official ``demucs`` package) and only its ``vocals`` + ``other`` stems are summed for the
chroma, so that drums and bass do not steer the melody.

The melody (at the MusicGen model's rate and channels) is converted to the separation model's rate and
channels, separated with ``demucs.apply.apply_model`` (its defaults: one random time shift, 7.8 s segments
with 25 % overlap) in float32 on the model's device, the two stems are summed and converted back to the
model's rate, mono. The random shift is drawn from a generator seeded with the melody's content, so the stems
are a function of the melody alone: the same request gives the same bytes, and a bounded in-memory cache
serves a melody sent again (with any seed) without separating it twice.

Weights: the HTDemucs bag from the Hugging Face Hub as demucs 4.1 itself loads it (``demucs/hf.py``: repo
``adefossez/HTDemucs``, ``htdemucs.yaml`` naming one safetensors file per model, whose metadata holds the
class and its arguments), fetched by ``musicgen.hub`` into a local directory.
"""

from __future__ import annotations

import hashlib
import logging
import random
import threading
import time
from collections import OrderedDict
from pathlib import Path

import torch

from musicgen.audio.audio_io import convert_channels, resample

log = logging.getLogger(__name__)

MODEL_NAME = "htdemucs"  # the bag audiocraft's melody conditioner uses
HUB_REPO = "adefossez/HTDemucs"
HUB_PATTERNS = [f"{MODEL_NAME}.yaml", "*.safetensors"]
MELODY_STEMS = ("vocals", "other")
CACHE_BYTES = 256 << 20  # separated melodies kept in memory (a 30 s mono melody at 32 kHz is 3.8 MB)

_random_lock = threading.Lock()  # demucs draws its shift from Python's global `random`


def bag_file(directory: Path) -> Path:
    return directory / f"{MODEL_NAME}.yaml"


def model_files(directory: Path) -> list[Path] | None:
    """The safetensors files the bag in ``directory`` names, or None without a (readable) bag file."""
    import yaml

    try:
        bag = yaml.safe_load(bag_file(directory).read_text())
        return [directory / f"{signature}.safetensors" for signature in bag["models"]]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return None


def has_weights(directory: Path) -> bool:
    files = model_files(directory)
    return bool(files) and all(f.is_file() for f in files)


class StemSeparator:
    """HTDemucs on one device, turning a melody into its ``vocals`` + ``other`` stems."""

    def __init__(self, model, device: torch.device):
        self.model = model.to(device).eval()
        self.device = device
        self.sources = list(model.sources)
        self.indices = [self.sources.index(name) for name in MELODY_STEMS]
        self.cache: OrderedDict[bytes, torch.Tensor] = OrderedDict()
        self.cache_lock = threading.Lock()
        self.separations = 0  # how many melodies were separated (cache misses)

    @classmethod
    def load(cls, directory: Path, device: torch.device) -> StemSeparator:
        """The bag in ``directory`` (``htdemucs.yaml`` + its safetensors files), loaded with demucs' own
        loader (``demucs.hf.load_safetensors_model``)."""
        import yaml
        from demucs.apply import BagOfModels
        from demucs.hf import load_safetensors_model

        files = model_files(directory)
        if not files or not all(f.is_file() for f in files):
            raise FileNotFoundError(f"no {MODEL_NAME} bag in {directory}")
        bag = yaml.safe_load(bag_file(directory).read_text())
        models = [load_safetensors_model(f) for f in files]
        return cls(BagOfModels(models, bag.get("weights"), bag.get("segment")), device)

    @staticmethod
    def digest(wav: torch.Tensor, sample_rate: int) -> bytes:
        """What identifies a melody: its samples and rate."""
        data = wav.detach().to("cpu", torch.float32).contiguous()
        return hashlib.sha256(str((tuple(data.shape), sample_rate)).encode() + data.numpy().tobytes()).digest()

    @classmethod
    def shift_seed(cls, wav: torch.Tensor, sample_rate: int) -> int:
        """The seed of demucs' random time shift for this melody."""
        return int.from_bytes(cls.digest(wav, sample_rate)[:8], "little")

    def melody(self, wav: torch.Tensor, sample_rate: int) -> torch.Tensor:
        """``vocals`` + ``other`` of ``wav`` (channels, samples) at ``sample_rate``, mono, same length."""
        key = self.digest(wav, sample_rate)
        with self.cache_lock:
            if key in self.cache:
                self.cache.move_to_end(key)
                log.info("melody stems: from the cache (this melody was separated before)")
                return self.cache[key]
        stems = self._separate(wav, sample_rate, int.from_bytes(key[:8], "little"))
        with self.cache_lock:
            self.cache[key] = stems
            while sum(t.numel() * t.element_size() for t in self.cache.values()) > CACHE_BYTES and len(self.cache) > 1:
                self.cache.popitem(last=False)
        return stems

    @torch.inference_mode()
    def _separate(self, wav: torch.Tensor, sample_rate: int, seed: int) -> torch.Tensor:
        from demucs.apply import apply_model

        started = time.monotonic()
        seconds = wav.shape[-1] / sample_rate
        model = self.model
        mix = resample(convert_channels(wav.float().cpu(), model.audio_channels), sample_rate, model.samplerate)
        segments = _segments(mix.shape[-1], model)
        done = [0]

        def progress(event: dict) -> None:
            if event.get("state") == "end":
                done[0] += 1
                log.info("melody stems: %d/%d segments, %.1f s", done[0], segments, time.monotonic() - started)

        log.info("melody stems: separating %.1f s of melody with %s on %s", seconds, MODEL_NAME, self.device)
        with _random_lock:
            state = random.getstate()
            random.seed(seed)
            try:
                stems = apply_model(model, mix[None].to(self.device), device=self.device, callback=progress)[0]
            finally:
                random.setstate(state)
        self.separations += 1
        melody = stems[self.indices].sum(dim=0).float().cpu()  # (channels, samples) at the model's rate
        melody = resample(convert_channels(melody, 1), model.samplerate, sample_rate)[0]
        melody = torch.nn.functional.pad(melody, (0, max(0, wav.shape[-1] - melody.numel())))[: wav.shape[-1]]
        log.info("melody stems: %s + %s of %.1f s in %.1f s", *MELODY_STEMS, seconds, time.monotonic() - started)
        return melody


def _segments(length: int, model) -> int:
    """How many segments apply_model runs for ``length`` samples (for progress lines)."""
    import math

    models = getattr(model, "models", [model])  # a bag, or one model
    stride = int(0.75 * float(models[0].segment) * model.samplerate)  # apply_model's default 25 % overlap
    padded = length + int(0.5 * model.samplerate)  # its shift pads by up to half a second
    return len(models) * math.ceil(padded / stride)
