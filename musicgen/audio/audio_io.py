"""Reading user audio safely: probe, decode only the needed time window, mix channels, resample.

Decoders (soundfile, then PyAV/FFmpeg) are chosen by trying them on the content, never by file extension:
Cog saves data: URI uploads without one. Every way a file can be unusable ends in a MusicGenError with one
sentence; limits are the named constants below.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from musicgen.errors import MusicGenError
from musicgen.inputs import MAX_DURATION, spelled

log = logging.getLogger(__name__)

MAX_UPLOAD_BYTES = 200 * 1024 * 1024  # larger uploads are refused before decoding
MIN_AUDIO_SECONDS = 0.5  # shortest usable melody or continuation prompt
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 8_000, 192_000
MAX_CHANNELS = 8
SUPPORTED = "wav, mp3, flac, ogg/vorbis, opus, m4a/aac or aiff"


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


# libsndfile logs a data chunk whose size runs past the end of the file as "data : <header> (should be <file>)"
# (it reads what is there); 0xFFFFFFFF in the header is a streaming encoder's "length unknown", not truncation
_CLAMPED_CHUNK = re.compile(r"^(?:data|SSND) : (\d+) \(should be (\d+)\)", re.MULTILINE)
_UNKNOWN_CHUNK_SIZE = 0xFFFFFFFF


def _check_complete(info) -> None:
    """Refuse a file whose header promises more audio than it holds, from libsndfile's own header parse."""
    found = _CLAMPED_CHUNK.search(info.extra_info or "")
    if not found:
        return
    promised, present = int(found[1]), int(found[2])
    if promised != _UNKNOWN_CHUNK_SIZE and 0 < present < promised:
        seconds = info.frames / info.samplerate
        raise _truncated(seconds, seconds * promised / present)


def _probe_soundfile(path: Path) -> AudioInfo | None:
    import soundfile as sf

    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, ValueError, OSError):
        return None
    if info.samplerate <= 0 or info.channels <= 0:
        return None
    _check_complete(info)
    return AudioInfo(path, "soundfile", int(info.samplerate), int(info.channels), info.frames / info.samplerate)


def _probe_pyav(path: Path) -> AudioInfo | None:
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                return None
            stream = container.streams.audio[0]
            ctx = stream.codec_context
            if ctx is None:  # no decoder for this stream
                return None
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
            # packed (interleaved) float32: PyAV 18 finds a planar frame's planes by walking a pointer array
            # until NULL, which 8 or more channels do not have, and reads past it (a crash)
            resampler = av.AudioResampler(format="flt", layout=None, rate=rate)
            for frame in container.decode(stream):
                if position is None:
                    position = int(round(float(frame.pts * frame.time_base) * rate)) if frame.pts is not None else 0
                for out in resampler.resample(frame):
                    arr = out.to_ndarray().reshape(out.samples, out.layout.nb_channels).T
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


# julius builds its sinc kernels for the reduced ratio p/q (p = src/gcd, q = dst/gcd) with memory growing
# with p * q: 441 * 1280 (11,025 Hz -> 32 kHz) takes a few MB, while an odd rate such as 96,129 Hz (p * q =
# 3 * 10^9) would take tens of GB. Past this bound FFmpeg's resampler (libswresample) does the job instead.
JULIUS_MAX_RATIO_PRODUCT = 2_000_000


def resample(wav: torch.Tensor, src_rate: int, dst_rate: int) -> torch.Tensor:
    """Band-limited sinc resampling of (channels, frames): julius (what audiocraft uses) for every common
    rate, libswresample for rates whose ratio julius cannot take in bounded memory. Output length
    ``int(frames * dst_rate / src_rate)``."""
    if src_rate == dst_rate:
        return wav
    gcd = math.gcd(int(src_rate), int(dst_rate))
    if (src_rate // gcd) * (dst_rate // gcd) <= JULIUS_MAX_RATIO_PRODUCT:
        import julius

        return julius.resample_frac(wav, int(src_rate), int(dst_rate))
    return _resample_swr(wav, int(src_rate), int(dst_rate))


def _resample_swr(wav: torch.Tensor, src_rate: int, dst_rate: int) -> torch.Tensor:
    import av

    length = int(wav.shape[-1] * dst_rate / src_rate)
    out = torch.zeros(wav.shape[0], length)
    for c, channel in enumerate(wav.numpy().astype(np.float32)):
        resampler = av.AudioResampler(format="flt", layout="mono", rate=dst_rate)
        frame = av.AudioFrame.from_ndarray(channel[None], format="flt", layout="mono")
        frame.sample_rate, frame.pts = src_rate, 0
        pieces = [o.to_ndarray().reshape(-1) for o in resampler.resample(frame) + resampler.resample(None)]
        data = torch.from_numpy(np.concatenate(pieces))[:length] if pieces else torch.zeros(0)
        out[c, : data.numel()] = data
    return out


def to_model(data: np.ndarray, info: AudioInfo, sample_rate: int, channels: int) -> torch.Tensor:
    """Decoded samples -> float32 tensor (channels, frames) at the model's rate and channel count."""
    wav = torch.from_numpy(data)
    return resample(convert_channels(wav, channels), info.sample_rate, sample_rate).contiguous()


def check_length(seconds: float, what: str) -> None:
    if seconds < MIN_AUDIO_SECONDS:
        raise MusicGenError(
            f"{what} is only {seconds:.2f} s long; it must hold at least {MIN_AUDIO_SECONDS} s of audio."
        )


def is_audible(wav: torch.Tensor, floor: float = 1e-4) -> bool:
    """False for (near-)silent audio (RMS at or below ``floor``)."""
    return bool(wav.numel()) and float(wav.float().pow(2).mean().sqrt()) > floor


def load_melody(path: str | Path, seconds: float, sample_rate: int, channels: int,
                surface: str = "library") -> torch.Tensor:
    """The first ``seconds`` of a melody file as (channels, samples) at ``sample_rate``; refused when it is
    too short or silent (its chroma would be meaningless)."""
    info = probe(path)
    data = read(info, 0.0, seconds)
    check_length(data.shape[1] / info.sample_rate, spelled("input_audio", surface))
    wav = to_model(data, info, sample_rate, channels)
    if not is_audible(wav):
        name = spelled("input_audio", surface)
        raise MusicGenError(
            f"{name} is silent, so it has no melody to follow; upload audio with an audible melody, "
            f"or leave {name} out to generate from the prompt alone."
        )
    return wav


def prompt_too_long(seconds: float, duration: int, at_least: bool = False, surface: str = "library") -> MusicGenError:
    """The sentence for a continuation prompt of ``seconds`` (``at_least``: more than that) that leaves no
    new audio to generate in an output of ``duration`` seconds, the prompt included (audiocraft's
    ``duration``), naming the inputs as ``surface`` spells them."""
    name = {n: spelled(n, surface) for n in ("input_audio", "duration", "continuation_start", "continuation_end")}
    shortest = int(seconds) + 1  # the smallest duration (whole seconds) that leaves room after the prompt
    raise_duration = (f"set {name['duration']} to {shortest} or more, or "
                      if shortest <= MAX_DURATION and not at_least else "")
    return MusicGenError(
        f"The continuation prompt ({'over ' if at_least else ''}{seconds:.2f} s of {name['input_audio']}) must be "
        f"shorter than {name['duration']} ({duration} s), which is the length of the whole output, prompt included; "
        f"{raise_duration}choose a shorter part with {name['continuation_start']} and {name['continuation_end']}."
    )


def load_prompt(path: str | Path, start: int, end: int | None, sample_rate: int, channels: int,
                duration: int = MAX_DURATION, surface: str = "library") -> torch.Tensor:
    """``[start, end)`` seconds of a file to continue (``end`` None: to its end; past the end: clamped, with a
    log line) as (channels, samples) at ``sample_rate``; refused when the window is empty, too short, or not
    shorter than ``duration`` (the whole output's length, prompt included), in ``surface``'s words. Only that
    window is decoded, and of it no more than ``duration`` seconds and one more (enough to tell that it is too
    long)."""
    info = probe(path)
    total = info.seconds

    def start_past_end(length: str = "") -> MusicGenError:
        return MusicGenError(
            f"{spelled('continuation_start', surface)} ({start} s) is at or past the end of "
            f"{spelled('input_audio', surface)}{length}; choose an earlier start."
        )

    if total is not None and start >= total:
        raise start_past_end(f" ({total:.2f} s long)")
    if end is not None and total is not None and end > total:
        log.info("%s %d s is past the clip's end (%.2f s); using the end of the clip",
                 spelled("continuation_end", surface), end, total)
        end = None
    stop = start + duration + 1 if end is None else min(end, start + duration + 1)
    data = read(info, start, stop)
    seconds = data.shape[1] / info.sample_rate
    if data.shape[1] == 0 and start > 0:  # the container did not say how long it is
        raise start_past_end()
    if seconds >= duration:
        cut = stop < (end if end is not None else math.inf) and seconds > stop - start - 0.01  # read stopped early
        if not cut:
            raise prompt_too_long(seconds, duration, surface=surface)
        if total is not None:  # end is None or within the clip here
            raise prompt_too_long((total if end is None else end) - start, duration, surface=surface)
        raise prompt_too_long(seconds, duration, at_least=True, surface=surface)
    check_length(seconds, "The continuation prompt")
    return to_model(data, info, sample_rate, channels)
