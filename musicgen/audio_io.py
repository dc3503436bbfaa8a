"""Reading user audio: decode (soundfile, else PyAV), cut a time window, mix channels, resample.

The decoder is chosen by trying, never by file extension (Cog saves data: URIs without one).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import MusicGenError

log = logging.getLogger(__name__)

# Longest stretch of input audio ever decoded. A melody uses at most one 30 s window per generated window
# and a continuation prompt at most the model's context; the rest of a long upload is never decoded.
MAX_DECODE_SECONDS = 600.0
SUPPORTED = "wav, mp3, flac, ogg/vorbis, opus, m4a/aac or aiff"


@dataclass(frozen=True)
class DecodedAudio:
    """Decoded samples, channels first, float32 in [-1, 1], at the file's own rate."""

    samples: np.ndarray  # (channels, frames)
    sample_rate: int
    total_seconds: float  # length of the whole file (as far as it is known without decoding it all)


def _unreadable(path: Path) -> MusicGenError:
    return MusicGenError(
        f"input_audio could not be decoded as audio; upload a complete {SUPPORTED} file."
    )


def _read_soundfile(path: Path, start: float, end: float | None) -> DecodedAudio | None:
    import soundfile as sf

    try:
        with sf.SoundFile(str(path)) as f:
            sr = f.samplerate
            total = f.frames
            first = int(round(start * sr))
            last = total if end is None else min(total, int(round(end * sr)))
            if first >= total:
                return DecodedAudio(np.zeros((f.channels, 0), np.float32), sr, total / sr)
            f.seek(first)
            data = f.read(frames=max(0, last - first), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, ValueError, OSError):
        return None
    return DecodedAudio(np.ascontiguousarray(data.T), sr, total / sr)


def _read_pyav(path: Path, start: float, end: float | None) -> DecodedAudio | None:
    import av

    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError, ValueError):
        return None
    with container:
        streams = container.streams.audio
        if not streams:
            return None
        stream = streams[0]
        sr = stream.codec_context.sample_rate or stream.rate
        if not sr:
            return None
        resampler = av.AudioResampler(format="fltp")
        chunks: list[np.ndarray] = []
        decoded = 0
        stop = None if end is None else int(round(end * sr))
        first = int(round(start * sr))
        try:
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    arr = out.to_ndarray().astype(np.float32, copy=False)
                    chunks.append(arr)
                    decoded += arr.shape[1]
                if stop is not None and decoded >= stop:
                    break
            for out in resampler.resample(None):
                arr = out.to_ndarray().astype(np.float32, copy=False)
                chunks.append(arr)
                decoded += arr.shape[1]
        except (av.FFmpegError, ValueError):
            if not chunks:
                return None
            log.warning("input_audio ends in undecodable data; using the %d frames decoded before it", decoded)
        if not chunks:
            return DecodedAudio(np.zeros((1, 0), np.float32), sr, 0.0)
        data = np.concatenate(chunks, axis=1)
        total = data.shape[1] / sr
        if end is None and stream.duration and stream.time_base:
            total = max(total, float(stream.duration * stream.time_base))
        data = data[:, first : (stop if stop is not None else data.shape[1])]
    return DecodedAudio(np.ascontiguousarray(data), sr, total)


def decode_audio(path: str | Path, start: float = 0.0, end: float | None = None) -> DecodedAudio:
    """Decode ``path[start:end]`` (seconds; ``end=None`` means the end of the file, capped at
    ``MAX_DECODE_SECONDS`` after ``start``). Raises MusicGenError with one sentence when it is not audio."""
    path = Path(path)
    if not path.is_file():
        raise MusicGenError("input_audio was not received as a file; upload the audio file itself.")
    if path.stat().st_size == 0:
        raise MusicGenError("input_audio is an empty file (0 bytes); upload a non-empty audio file.")
    limit = start + MAX_DECODE_SECONDS
    end = limit if end is None else min(end, limit)
    audio = _read_soundfile(path, start, end) or _read_pyav(path, start, end)
    if audio is None:
        raise _unreadable(path)
    if not np.isfinite(audio.samples).all():
        raise MusicGenError(
            "input_audio contains invalid samples (NaN or infinity); export it again as ordinary PCM audio."
        )
    return audio


def convert_channels(wav: torch.Tensor, channels: int) -> torch.Tensor:
    """Match the channel count the way audiocraft's ``convert_audio_channels`` does: average to mono,
    repeat mono to more channels, or keep the first ``channels`` channels."""
    have = wav.shape[0]
    if have == channels:
        return wav
    if channels == 1:
        return wav.mean(dim=0, keepdim=True)
    if have == 1:
        return wav.expand(channels, -1).contiguous()
    if have > channels:
        return wav[:channels]
    raise MusicGenError(f"input_audio has {have} channels; cannot make {channels} channels from it.")


def resample(wav: torch.Tensor, src_rate: int, dst_rate: int) -> torch.Tensor:
    """Band-limited sinc resampling (julius, as audiocraft uses)."""
    if src_rate == dst_rate:
        return wav
    import julius

    return julius.resample_frac(wav, int(src_rate), int(dst_rate))


def load_for_model(
    path: str | Path, sample_rate: int, channels: int, start: float = 0.0, end: float | None = None
) -> tuple[torch.Tensor, DecodedAudio]:
    """Decode ``path[start:end]`` and return it as a float32 tensor (channels, frames) at the model's rate and
    channel count, together with what was decoded."""
    audio = decode_audio(path, start, end)
    wav = torch.from_numpy(audio.samples)
    wav = resample(convert_channels(wav, channels), audio.sample_rate, sample_rate)
    return wav.contiguous(), audio
