"""Writing results: 16-bit PCM WAV or 320 kbps CBR MP3, in-process (libsndfile), one fresh directory per
prediction."""

from __future__ import annotations

import struct
import tempfile
import uuid
from pathlib import Path

import numpy as np

from musicgen.errors import MusicGenError

FORMATS = ("wav", "mp3")


def new_output_dir(parent: str | Path | None = None) -> Path:
    """A fresh, private directory for one prediction's files."""
    return Path(tempfile.mkdtemp(prefix="musicgen-", dir=parent))


def user_output_dir(directory: str | Path) -> Path:
    """The caller's own ``output_dir``, created (with its parents) when it does not exist yet, or one sentence
    saying why it cannot be."""
    directory = Path(directory).expanduser()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MusicGenError(f"output_dir {directory} cannot be created ({exc.strerror or exc}); pass a directory "
                            "you can write to.") from exc
    return directory


def pcm16(wav: np.ndarray) -> np.ndarray:
    """Float samples to 16-bit PCM as audiocraft's ``audio_write`` gets them (FFmpeg's ``pcm_s16le`` from
    float: ``x * 32768`` rounded to nearest, ties to even, then clipped to the int16 range; libsndfile
    would scale by 32767)."""
    return np.clip(np.rint(np.asarray(wav, dtype=np.float32) * np.float32(32768)), -32768, 32767).astype(np.int16)


def wav_stream_header(sample_rate: int, channels: int) -> bytes:
    """The header of a 16-bit PCM WAV stream whose length is not known yet (RIFF and data sizes 0xFFFFFFFF, as
    FFmpeg writes to a pipe): players read samples until the stream ends."""
    block = 2 * channels
    fmt = struct.pack("<HHIIHH", 1, channels, sample_rate, sample_rate * block, block, 16)
    return b"RIFF" + struct.pack("<I", 0xFFFFFFFF) + b"WAVEfmt " + struct.pack("<I", len(fmt)) + fmt + \
        b"data" + struct.pack("<I", 0xFFFFFFFF)


def wav_stream_samples(wav: np.ndarray) -> bytes:
    """(channels, frames) float audio as the interleaved 16-bit PCM bytes of a WAV stream."""
    return pcm16(np.asarray(wav, dtype=np.float32).T).tobytes()


def write_audio(wav: np.ndarray, sample_rate: int, directory: str | Path, fmt: str = "wav", stem: str = "output") -> Path:
    """Write (channels, frames) float audio in [-1, 1] to ``directory`` under a unique name; returns the path.

    The file appears under its final name only once it is complete, so a failure never leaves a partial
    file that looks like a result."""
    import soundfile as sf

    if fmt not in FORMATS:
        raise ValueError(f"unknown output format {fmt!r}")
    directory = Path(directory)
    path = directory / f"{stem}-{uuid.uuid4().hex[:8]}.{fmt}"
    partial = path.with_name("." + path.name + ".partial")
    data = np.ascontiguousarray(np.asarray(wav, dtype=np.float32).T)
    try:
        if fmt == "wav":
            sf.write(partial, pcm16(data), sample_rate, subtype="PCM_16", format="WAV")
        else:
            # libsndfile maps compression_level 0.0 to the highest MPEG bitrate (320 kbps) in CONSTANT mode
            sf.write(partial, data, sample_rate, format="MP3", subtype="MPEG_LAYER_III",
                     bitrate_mode="CONSTANT", compression_level=0.0)
        partial.rename(path)
    except (OSError, sf.SoundFileError) as exc:  # not writable, full, gone: one sentence, no partial file left
        partial.unlink(missing_ok=True)
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).split(": ")[-1]
        raise MusicGenError(f"The output could not be written into {directory} ({reason}); check that the "
                            "directory exists, is writable and has free space.") from exc
    return path
