"""Integrated loudness (ITU-R BS.1770-4, LUFS) measured as audiocraft measures it.

audiocraft's ``normalize_loudness`` measures with torchaudio's ``Loudness`` (``torchaudio.functional.loudness``),
which does not load with this project's torch; this is the same measurement, in NumPy/SciPy:

- K-weighting: a high shelf (+4 dB at 1500 Hz, Q 1/sqrt(2)) then a high pass (38 Hz, Q 0.5), biquads from
  the Audio EQ Cookbook formulas (torchaudio's ``treble_biquad`` and ``highpass_biquad``; pyloudnorm's
  K-weighting filters are the same), each stage run through ``lfilter`` and its output **clamped to +-1**
  (torchaudio's ``lfilter(clamp=True)``). pyloudnorm does not clamp, so on loud audio it measures more than
  audiocraft does (and audiocraft then applies more gain).
- gating blocks of 400 ms every 100 ms, ``floor((n - 400 ms) / 100 ms) + 1`` of them (torchaudio's
  ``unfold``; pyloudnorm rounds that count and may add a partial last block), the mean square of each,
  channels weighted 1, 1, 1, 1.41, 1.41; blocks above -70 LKFS, then above the gated mean minus 10 LU.

Computed in float64 (torchaudio runs in the waveform's float32). On signals that never reach +-1 after
either filter stage, and whose length makes both block counts agree, it equals pyloudnorm's
``Meter.integrated_loudness``.
"""

from __future__ import annotations

import math

import numpy as np

BLOCK_SECONDS = 0.4
OVERLAP = 0.75
ABSOLUTE_GATE = -70.0  # LKFS
RELATIVE_GATE = -10.0  # LU below the absolutely gated loudness
OFFSET = -0.691  # the K-weighting's gain at 1 kHz, compensated
CHANNEL_WEIGHTS = (1.0, 1.0, 1.0, 1.41, 1.41)  # L, R, C, Ls, Rs


def k_weighting(sample_rate: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The two K-weighting biquads as (b, a) coefficient pairs for ``sample_rate``."""
    # high shelf: +4 dB above ~1.5 kHz (the head's acoustic effect)
    w0 = 2 * math.pi * 1500.0 / sample_rate
    alpha = math.sin(w0) / (2 * (1 / math.sqrt(2)))
    gain = 10 ** (4.0 / 40)
    root, cos = 2 * math.sqrt(gain) * alpha, math.cos(w0)
    shelf = (np.array([gain * ((gain + 1) + (gain - 1) * cos + root),
                       -2 * gain * ((gain - 1) + (gain + 1) * cos),
                       gain * ((gain + 1) + (gain - 1) * cos - root)]),
             np.array([(gain + 1) - (gain - 1) * cos + root,
                       2 * ((gain - 1) - (gain + 1) * cos),
                       (gain + 1) - (gain - 1) * cos - root]))
    # high pass at 38 Hz (RLB weighting)
    w0 = 2 * math.pi * 38.0 / sample_rate
    alpha, cos = math.sin(w0) / (2 * 0.5), math.cos(w0)
    high_pass = (np.array([(1 + cos) / 2, -(1 + cos), (1 + cos) / 2]), np.array([1 + alpha, -2 * cos, 1 - alpha]))
    return [shelf, high_pass]


def k_weighted(wav: np.ndarray, sample_rate: int) -> np.ndarray:
    """(channels, frames) audio through the K-weighting, clamped to +-1 after each stage (torchaudio's)."""
    from scipy.signal import lfilter

    out = np.asarray(wav, dtype=np.float64)
    for b, a in k_weighting(sample_rate):
        out = np.clip(lfilter(b, a, out, axis=-1), -1.0, 1.0)
    return out


def integrated_loudness(wav: np.ndarray, sample_rate: int) -> float:
    """Integrated loudness in LUFS of (channels, frames) audio (at most 5 channels), as audiocraft measures
    it; -inf for audio shorter than one 400 ms block, or with no block above the gates (silence)."""
    wav = np.atleast_2d(wav)
    if wav.shape[0] > len(CHANNEL_WEIGHTS):
        raise ValueError(f"loudness is defined for at most {len(CHANNEL_WEIGHTS)} channels, got {wav.shape[0]}")
    block = int(round(BLOCK_SECONDS * sample_rate))
    step = int(round(block * (1 - OVERLAP)))
    if wav.shape[-1] < block:
        return -math.inf
    power = np.cumsum(np.square(k_weighted(wav, sample_rate)), axis=-1)
    power = np.concatenate([np.zeros((wav.shape[0], 1)), power], axis=-1)  # power[:, i]: energy before sample i
    starts = np.arange(0, wav.shape[-1] - block + 1, step)
    energy = (power[:, starts + block] - power[:, starts]) / block  # (channels, blocks): mean squares
    weights = np.array(CHANNEL_WEIGHTS[: wav.shape[0]])[:, None]
    with np.errstate(divide="ignore"):
        block_loudness = OFFSET + 10 * np.log10((weights * energy).sum(axis=0))

    def gated_loudness(gated: np.ndarray) -> float:
        """The loudness of the mean energy of the ``gated`` blocks."""
        if not gated.any():
            return -math.inf
        return OFFSET + 10 * math.log10(float((weights[:, 0] * energy[:, gated].mean(axis=-1)).sum()))

    above_absolute = block_loudness > ABSOLUTE_GATE
    relative = gated_loudness(above_absolute) + RELATIVE_GATE
    return gated_loudness(above_absolute & (block_loudness > relative))
