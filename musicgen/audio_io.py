"""Reading user audio safely: probe, decode only the needed time window, mix channels, resample.

Decoders (soundfile, then PyAV/FFmpeg) are chosen by trying them on the content, never by file extension:
Cog saves data: URI uploads without one. Every way a file can be unusable ends in a MusicGenError with one
sentence; limits are the named constants below.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import MusicGenError

log = logging.getLogger(__name__)

MAX_UPLOAD_BYTES = 200 * 1024 * 1024  # larger uploads are refused before decoding
MAX_PROMPT_SECONDS = 300  # longest continuation prompt (input_audio[start:end]) accepted
MIN_AUDIO_SECONDS = 0.5  # shortest usable melody or continuation prompt
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 8_000, 192_000
MAX_CHANNELS = 8
SUPPORTED = "wav, mp3, flac, ogg/vorbis, opus, m4a/aac or aiff"
_UNKNOWN_RIFF_SIZE = 0xFFFFFFFF  # streaming encoders write this when the length is not known yet


@dataclass(frozen=True)
class AudioInfo:
    """What a file holds, learnt without decoding it all."""

    path: Path
    backend: str  # "soundfile" or "pyav"
    sample_rate: int
    channels: int
    seconds: float | None  # None when the container does not say


def _mib(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MiB"


def _not_audio() -> MusicGenError:
    return MusicGenError(f"input_audio could not be decoded as audio; upload a complete {SUPPORTED} file.")


def _no_samples() -> MusicGenError:
    return MusicGenError("input_audio holds no audio samples; upload a file with sound in it.")


def _truncated(have: float, promised: float) -> MusicGenError:
    return MusicGenError(
        f"input_audio is truncated: its header promises {promised:.2f} s of audio but the file holds only "
        f"{have:.2f} s; upload the complete file."
    )


def _check_riff(path: Path, size: int) -> None:
    """A WAV whose data chunk claims more bytes than the file has is truncated (0xFFFFFFFF = unknown)."""
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] not in (b"RIFF", b"RIFX") or head[8:12] != b"WAVE":
            return
        fmt = "<I" if head[:4] == b"RIFF" else ">I"
        byte_rate = None
        pos = 12
        while pos + 8 <= size:
            f.seek(pos)
            chunk_id, chunk_size = f.read(4), struct.unpack(fmt, f.read(4))[0]
            if chunk_id == b"fmt " and chunk_size >= 16:
                fields = f.read(16)
                byte_rate = struct.unpack(fmt, fields[8:12])[0]
            if chunk_id == b"data":
                available = size - (pos + 8)
                if chunk_size != _UNKNOWN_RIFF_SIZE and chunk_size > available and byte_rate:
                    raise _truncated(available / byte_rate, chunk_size / byte_rate)
                return
            pos += 8 + chunk_size + (chunk_size & 1)


def _probe_soundfile(path: Path) -> AudioInfo | None:
    import soundfile as sf

    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, ValueError, OSError):
        return None
    if info.samplerate <= 0 or info.channels <= 0:
        return None
    return AudioInfo(path, "soundfile", int(info.samplerate), int(info.channels), info.frames / info.samplerate)


def _probe_pyav(path: Path) -> AudioInfo | None:
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                return None
            stream = container.streams.audio[0]
            ctx = stream.codec_context
            rate = int(ctx.sample_rate or stream.rate or 0)
            channels = int(ctx.channels or (ctx.layout.nb_channels if ctx.layout else 0))
            seconds = None  # unknown (or announced as 0, which says nothing about what the stream holds)
            if stream.duration and stream.time_base:
                seconds = float(stream.duration * stream.time_base) or None
            elif container.duration:
                seconds = container.duration / 1_000_000 or None
    except (av.FFmpegError, OSError, ValueError, IndexError):
        return None
    if rate <= 0 or channels <= 0:
        return None
    return AudioInfo(path, "pyav", rate, channels, seconds)


def probe(path: str | Path) -> AudioInfo:
    """Check that ``path`` is a usable audio file within the limits, and describe it."""
    if not isinstance(path, (str, Path)) or not Path(path).is_file():
        raise MusicGenError("input_audio was not received as a file; upload the audio file itself.")
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        raise MusicGenError("input_audio is an empty file (0 bytes); upload a non-empty audio file.")
    if size > MAX_UPLOAD_BYTES:
        raise MusicGenError(
            f"input_audio is {_mib(size)}, over the {_mib(MAX_UPLOAD_BYTES)} limit; upload a shorter or "
            "compressed (mp3, ogg, m4a) file."
        )
    _check_riff(path, size)
    info = _probe_soundfile(path)
    if info is None or info.seconds == 0:  # libsndfile reports 0 frames for an Ogg stream cut short
        info = _probe_pyav(path) or info
    if info is None:
        raise _not_audio()
    if info.seconds == 0:
        raise _no_samples()
    if not MIN_SAMPLE_RATE <= info.sample_rate <= MAX_SAMPLE_RATE:
        raise MusicGenError(
            f"input_audio has a sample rate of {info.sample_rate} Hz; supported rates are "
            f"{MIN_SAMPLE_RATE} to {MAX_SAMPLE_RATE} Hz."
        )
    if info.channels > MAX_CHANNELS:
        raise MusicGenError(f"input_audio has {info.channels} channels; at most {MAX_CHANNELS} are supported.")
    return info


def _read_soundfile(info: AudioInfo, start: float, end: float | None) -> np.ndarray:
    import soundfile as sf

    try:
        with sf.SoundFile(str(info.path)) as f:
            first = min(int(round(start * f.samplerate)), f.frames)
            last = f.frames if end is None else min(f.frames, int(round(end * f.samplerate)))
            f.seek(first)
            data = f.read(frames=max(0, last - first), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, ValueError, OSError) as exc:
        raise MusicGenError(
            f"input_audio is damaged or truncated ({str(exc).strip().rstrip('.')}); upload the complete file."
        ) from None
    if data.shape[0] < last - first:
        raise _truncated((first + data.shape[0]) / info.sample_rate, last / info.sample_rate)
    return np.ascontiguousarray(data.T)


def _read_pyav(info: AudioInfo, start: float, end: float | None) -> np.ndarray:
    import av

    rate = info.sample_rate
    first = int(round(start * rate))
    stop = None if end is None else int(round(end * rate))
    chunks: list[np.ndarray] = []
    position = None  # sample index of the next decoded sample
    try:
        with av.open(str(info.path)) as container:
            stream = container.streams.audio[0]
            if start > 0:
                container.seek(int(start * 1_000_000), any_frame=False)  # to the keyframe before `start`
            resampler = av.AudioResampler(format="fltp", layout=None, rate=rate)
            for frame in container.decode(stream):
                if position is None:
                    position = int(round(float(frame.pts * frame.time_base) * rate)) if frame.pts is not None else 0
                for out in resampler.resample(frame):
                    arr = out.to_ndarray().astype(np.float32, copy=False)
                    lo, hi = position, position + arr.shape[1]
                    position = hi
                    a, b = max(lo, first), hi if stop is None else min(hi, stop)
                    if b > a:
                        chunks.append(arr[:, a - lo : b - lo])
                if stop is not None and position >= stop:
                    break
    except (av.FFmpegError, ValueError) as exc:
        raise MusicGenError(
            f"input_audio is damaged or truncated (decoding failed after {(position or 0) / rate:.2f} s: "
            f"{type(exc).__name__}); upload the complete file."
        ) from None
    if not chunks:
        return np.zeros((info.channels, 0), np.float32)
    data = np.concatenate(chunks, axis=1)
    if data.shape[0] > info.channels:  # a layout change mid-stream: keep what the header announced
        data = data[: info.channels]
    return np.ascontiguousarray(data)


def read(info: AudioInfo, start: float = 0.0, end: float | None = None) -> np.ndarray:
    """Decode ``[start, end)`` seconds of a probed file (``end=None``: to its end); (channels, frames)
    float32. Refuses NaN/Inf samples."""
    data = (_read_soundfile if info.backend == "soundfile" else _read_pyav)(info, start, end)
    if data.shape[1] == 0 and start == 0:
        raise _no_samples()
    if not np.isfinite(data).all():
        raise MusicGenError(
            "input_audio contains invalid samples (NaN or infinity); export it again as ordinary PCM audio."
        )
    return data


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
    return wav[:channels]


def resample(wav: torch.Tensor, src_rate: int, dst_rate: int) -> torch.Tensor:
    """Band-limited sinc resampling (julius, as audiocraft uses)."""
    if src_rate == dst_rate:
        return wav
    import julius

    return julius.resample_frac(wav, int(src_rate), int(dst_rate))


def to_model(data: np.ndarray, info: AudioInfo, sample_rate: int, channels: int) -> torch.Tensor:
    """Decoded samples -> float32 tensor (channels, frames) at the model's rate and channel count."""
    wav = torch.from_numpy(data)
    return resample(convert_channels(wav, channels), info.sample_rate, sample_rate).contiguous()


def check_length(seconds: float, what: str) -> None:
    if seconds < MIN_AUDIO_SECONDS:
        raise MusicGenError(
            f"{what} is only {seconds:.2f} s long; it must hold at least {MIN_AUDIO_SECONDS} s of audio."
        )
