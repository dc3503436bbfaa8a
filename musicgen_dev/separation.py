"""Random-weight HTDemucs bags in the Hugging Face layout demucs 4.1 loads (``demucs/hf.py``), built offline.

The real bag (``adefossez/HTDemucs``) is ``htdemucs.yaml`` naming one safetensors file per model, each holding
the model's state with its class and constructor arguments as JSON in the safetensors metadata. Tests and
benchmarks cannot reach the Hub, so they build bags here with the real class and sources and load them through
the very same code as the real weights (``musicgen.engine.stems.StemSeparator.load``).

``tiny`` keeps the tests fast; ``full`` has HTDemucs' own shapes (about 42 M parameters) for benchmarks.
"""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import torch

SOURCES = ["drums", "bass", "other", "vocals"]  # htdemucs' sources, in its order
_PRESETS = {
    "tiny": dict(channels=8, depth=4, t_layers=1, t_heads=2),
    "full": dict(channels=48, depth=4, t_layers=5, bottom_channels=512),
}


def _encode(value):
    """JSON for the constructor arguments, fractions as demucs' export writes them."""
    if isinstance(value, Fraction):
        return {"_type": "fraction", "numerator": value.numerator, "denominator": value.denominator}
    if isinstance(value, dict):
        return {key: _encode(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode(item) for item in value]
    return value


def build_random_stems(dst: str | Path, *, preset: str = "tiny", seed: int = 0, signature: str = "0badc0de") -> Path:
    """Write a random-weight HTDemucs bag (``htdemucs.yaml`` + ``<signature>.safetensors``) to ``dst``."""
    import yaml
    from demucs.htdemucs import HTDemucs
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    kwargs = dict(sources=SOURCES, audio_channels=2, samplerate=44100, segment=Fraction(39, 5), **_PRESETS[preset])
    model = HTDemucs(**kwargs)
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    state = {key: value.contiguous() for key, value in model.state_dict().items()}
    metadata = {"klass": "demucs.htdemucs.HTDemucs", "args": "[]", "kwargs": json.dumps(_encode(kwargs))}
    save_file(state, str(dst / f"{signature}.safetensors"), metadata=metadata)
    (dst / "htdemucs.yaml").write_text(yaml.safe_dump({"models": [signature]}))
    return dst
