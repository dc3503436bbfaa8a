"""Shared fixtures: tiny random-weight checkpoints built offline once per session, predictors loaded from
them through the real loading path, and test audio written to disk."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from musicgen.inputs import DEFAULTS

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the Hub from tests
os.environ.setdefault("MUSICGEN_DEVICE", "cpu")

SR = 32000


@pytest.fixture(scope="session", autouse=True)
def stems_weights(tmp_path_factory) -> Path:
    """A tiny random-weight HTDemucs bag, in the layout the real one has, used by every melody checkpoint
    of the session (MUSICGEN_STEMS_WEIGHTS, inherited by the servers the tests start)."""
    from musicgen_dev.separation import build_random_stems

    path = build_random_stems(tmp_path_factory.mktemp("stems") / "htdemucs")
    os.environ["MUSICGEN_STEMS_WEIGHTS"] = str(path)
    return path


@pytest.fixture(scope="session", autouse=True)
def conversion_cache(tmp_path_factory) -> Path:
    """Where ``.bin`` checkpoints of no download of ours are converted (MUSICGEN_CACHE): never the home directory."""
    path = tmp_path_factory.mktemp("musicgen-cache")
    os.environ["MUSICGEN_CACHE"] = str(path)
    return path


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    from musicgen_dev.checkpoints import build_random_checkpoint

    root = tmp_path_factory.mktemp("checkpoints")
    return {
        "plain": build_random_checkpoint(root / "plain", melody=False, seed=1),
        "melody": build_random_checkpoint(root / "melody", melody=True, seed=2),
        "plain-stereo": build_random_checkpoint(root / "plain-stereo", melody=False, stereo=True, seed=3),
        "melody-stereo": build_random_checkpoint(root / "melody-stereo", melody=True, stereo=True, seed=4),
    }


def _setup_predictor(path: Path):
    from predict import Predictor

    old = os.environ.get("MUSICGEN_WEIGHTS")
    os.environ["MUSICGEN_WEIGHTS"] = str(path)
    try:
        predictor = Predictor()
        predictor.setup()
    finally:
        if old is None:
            os.environ.pop("MUSICGEN_WEIGHTS", None)
        else:
            os.environ["MUSICGEN_WEIGHTS"] = old
    return predictor


@pytest.fixture(scope="session")
def plain_predictor(checkpoints):
    return _setup_predictor(checkpoints["plain"])


@pytest.fixture(scope="session")
def melody_predictor(checkpoints):
    return _setup_predictor(checkpoints["melody"])


def run(predictor, **inputs) -> Path:
    """Call predict() with every input at its default plus ``inputs``, as Cog does (it iterates the files it
    yields); return the single output path."""
    from musicgen_dev.bench import predict_files

    [out] = predict_files(predictor, **{**DEFAULTS, **inputs})
    return out


def in_threads(call, count: int, timeout: float = 600) -> list:
    """``call(i)`` for i in range(count), each in its own thread, all started together; their results in
    order (None for one that did not return)."""
    results = [None] * count

    def one(i):
        results[i] = call(i)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=timeout)
    return results


def tone(freqs, seconds: float, sr: int = SR, amp: float = 0.5) -> np.ndarray:
    """A melody: consecutive sine notes (one per frequency) filling ``seconds``."""
    n = int(seconds * sr)
    t = np.arange(n) / sr
    seg = n // len(freqs)
    out = np.zeros(n)
    for i, f in enumerate(freqs):
        stop = n if i == len(freqs) - 1 else (i + 1) * seg
        out[i * seg : stop] = amp * np.sin(2 * np.pi * f * t[i * seg : stop])
    return out.astype(np.float32)


@pytest.fixture(scope="session")
def audio_files(tmp_path_factory) -> dict[str, Path]:
    """Test clips: a 4 s melody as wav/flac/ogg/mp3, a 6 s stereo 44.1 kHz wav, a silent wav."""
    d = tmp_path_factory.mktemp("audio")
    melody = tone([261.63, 329.63, 392.0, 523.25], 4.0)
    files = {}
    for fmt, kwargs in {"wav": {}, "flac": {}, "ogg": {"subtype": "VORBIS"}, "mp3": {}}.items():
        files[fmt] = d / f"melody.{fmt}"
        sf.write(files[fmt], melody, SR, format=fmt.upper(), **kwargs)
    files["other_melody"] = d / "other.wav"
    sf.write(files["other_melody"], tone([440.0, 220.0], 4.0), SR)
    sr44 = 44100
    left = tone([440.0], 6.0, sr44)
    files["stereo44k"] = d / "stereo44k.wav"
    sf.write(files["stereo44k"], np.stack([left, tone([330.0], 6.0, sr44)], axis=1), sr44, subtype="PCM_24")
    files["silent"] = d / "silent.wav"
    sf.write(files["silent"], np.zeros(SR * 3, np.float32), SR)
    files["text"] = d / "notes.wav"
    files["text"].write_text("these are not audio samples, just text with a .wav name\n" * 20)
    files["empty"] = d / "empty.wav"
    files["empty"].write_bytes(b"")
    return files


def read(path: Path) -> tuple[np.ndarray, int]:
    data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    return data.T, sr


def readme_block(marker: str) -> str:
    """The README's fenced shell block that contains ``marker``, as written (tests run it with bash)."""
    text = (ROOT / "README.md").read_text()
    blocks = [b.split("\n", 1)[1] for b in text.split("```")[1::2] if b.startswith("bash\n")]
    found = [b for b in blocks if marker in b]
    assert len(found) == 1, f"{len(found)} README shell blocks hold {marker!r}"
    return found[0]
