"""Output normalization with audiocraft's ``normalize_audio`` defaults (docs/api.md).

peak: scale the peak to -1 dBFS. clip: clamp to +-10^(-1/20). rms: scale the mono mix's RMS to -18 dBFS, then
clamp to +-1. loudness: scale to -14 LUFS integrated (ITU-R BS.1770-4, measured as audiocraft measures it:
:mod:`musicgen.audio.loudness`), then clamp to +-1; near-silent audio (RMS < 2e-3, audiocraft's energy floor) is left
as it is. peak and rms scale any signal that is not silence; silence is left as it is, so it never turns into
NaN.
"""

from __future__ import annotations

import logging

import numpy as np

from musicgen.audio.loudness import integrated_loudness

log = logging.getLogger(__name__)

PEAK_CLIP_HEADROOM_DB = 1.0
RMS_HEADROOM_DB = 18.0
LOUDNESS_HEADROOM_DB = 14.0
ENERGY_FLOOR = 2e-3
STRATEGIES = ("loudness", "clip", "peak", "rms")


def _clip(wav: np.ndarray, limit: float = 1.0) -> np.ndarray:
    """Clamp in place to +-limit, logging how many samples were clipped."""
    clipped = int(np.count_nonzero(np.abs(wav) > limit))
    if clipped:
        log.info("normalization clipped %d of %d samples to +-%.3f", clipped, wav.size, limit)
    return np.clip(wav, -limit, limit, out=wav)


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


loudness_lufs = integrated_loudness  # (channels, frames) audio -> LUFS, as audiocraft measures it


def _gain(target: float, level: float) -> float | None:
    """target / level, or None where that cannot scale anything in float32 (a level of 0, or one so small
    that the gain overflows)."""
    if level <= 0:
        return None
    gain = target / level
    return gain if np.isfinite(np.float32(gain)) else None


def normalize(wav: np.ndarray, sample_rate: int, strategy: str = "loudness") -> np.ndarray:
    """Normalize (channels, frames) float audio; returns a new float32 array (the input is not modified)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown normalization strategy {strategy!r}")
    wav = np.array(wav, dtype=np.float32)  # one working copy, scaled and clipped in place
    scale_peak = 10 ** (-PEAK_CLIP_HEADROOM_DB / 20)
    if strategy == "clip":
        return _clip(wav, scale_peak)
    if strategy in ("peak", "rms"):  # any signal that is not silence, however quiet
        if strategy == "peak":
            gain = _gain(scale_peak, float(np.abs(wav).max()) if wav.size else 0.0)
        else:
            gain = _gain(10 ** (-RMS_HEADROOM_DB / 20), _rms(wav.mean(axis=0)) if wav.size else 0.0)
        if gain is None:
            log.info("output is silent; %s normalization left it unchanged", strategy)
            return wav
        wav *= gain
        return wav if strategy == "peak" else _clip(wav)
    if wav.size == 0 or _rms(wav) < ENERGY_FLOOR:  # audiocraft's energy floor, for loudness only
        log.info("output is near-silent (RMS under %g); loudness normalization left it unchanged", ENERGY_FLOOR)
        return wav
    current = integrated_loudness(wav, sample_rate)  # -inf: shorter than one 400 ms block, or gated away
    if not np.isfinite(current):
        log.info("output is too short or quiet to measure loudness; left unchanged")
        return wav
    wav *= 10 ** ((-LOUDNESS_HEADROOM_DB - current) / 20)
    return _clip(wav)
