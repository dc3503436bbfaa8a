"""A generation request: the 13 public inputs of SPEC.md, validated once, immutable afterwards."""

from __future__ import annotations

import math
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from .errors import MusicGenError
from .normalize import STRATEGIES as NORMALIZATION_STRATEGIES
from .output import FORMATS as OUTPUT_FORMATS
MIN_DURATION = 1
MAX_DURATION = 300
MAX_SEED = 2**32 - 1


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) and math.isfinite(value)


@dataclass(frozen=True)
class GenerationRequest:
    """What to generate. Field names, order and defaults follow SPEC.md; construction validates everything
    that can be checked without reading the audio file."""

    prompt: str | None = None
    input_audio: Path | None = None
    duration: int = 8
    continuation: bool = False
    continuation_start: int = 0
    continuation_end: int | None = None
    normalization_strategy: str = "loudness"
    top_k: int = 250
    top_p: float = 0.0
    temperature: float = 1.0
    classifier_free_guidance: int = 3
    output_format: str = "wav"
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.prompt is not None and not isinstance(self.prompt, str):
            raise MusicGenError(f"prompt must be text, got {type(self.prompt).__name__}.")
        if self.input_audio is not None and not isinstance(self.input_audio, os.PathLike):
            raise MusicGenError(
                "input_audio must be an uploaded audio file (a file or URL), not a plain string; "
                "send the audio itself, for example as a data: URI or an http(s) URL."
            )
        if not _is_int(self.duration) or not MIN_DURATION <= self.duration <= MAX_DURATION:
            raise MusicGenError(
                f"duration must be a whole number of seconds from {MIN_DURATION} to {MAX_DURATION}, "
                f"got {self.duration!r}."
            )
        if not isinstance(self.continuation, bool):
            raise MusicGenError(f"continuation must be true or false, got {self.continuation!r}.")
        if not _is_int(self.continuation_start) or self.continuation_start < 0:
            raise MusicGenError(
                f"continuation_start must be a whole number of seconds, 0 or more, got {self.continuation_start!r}."
            )
        if self.continuation_end is not None and (
            not _is_int(self.continuation_end) or self.continuation_end < -1
        ):
            raise MusicGenError(
                "continuation_end must be a whole number of seconds, or -1 (or empty) for the end of the clip, "
                f"got {self.continuation_end!r}."
            )
        if self.normalization_strategy not in NORMALIZATION_STRATEGIES:
            raise MusicGenError(
                f"normalization_strategy must be one of {', '.join(NORMALIZATION_STRATEGIES)}, "
                f"got {self.normalization_strategy!r}."
            )
        if not _is_int(self.top_k) or self.top_k < 0:
            raise MusicGenError(f"top_k must be a whole number, 0 or more (0 turns it off), got {self.top_k!r}.")
        if not _is_number(self.top_p) or not 0.0 <= self.top_p <= 1.0:
            raise MusicGenError(f"top_p must be a number from 0 to 1 (0 turns it off), got {self.top_p!r}.")
        if not _is_number(self.temperature) or self.temperature < 0:
            raise MusicGenError(
                f"temperature must be a number, 0 or more (0 means greedy decoding), got {self.temperature!r}."
            )
        if not _is_int(self.classifier_free_guidance) or self.classifier_free_guidance < 0:
            raise MusicGenError(
                "classifier_free_guidance must be a whole number, 0 or more (1 turns guidance off), "
                f"got {self.classifier_free_guidance!r}."
            )
        if self.output_format not in OUTPUT_FORMATS:
            raise MusicGenError(
                f"output_format must be one of {', '.join(OUTPUT_FORMATS)}, got {self.output_format!r}."
            )
        if self.seed is not None and (not _is_int(self.seed) or not -1 <= self.seed <= MAX_SEED):
            raise MusicGenError(
                f"seed must be a whole number from 0 to {MAX_SEED}, or -1 (or empty) for a random seed, "
                f"got {self.seed!r}."
            )
        if self.continuation:
            if self.input_audio is None:
                raise MusicGenError(
                    "continuation=true needs input_audio: upload the clip to continue, or set continuation=false."
                )
            if self.end_seconds is not None and self.end_seconds <= self.continuation_start:
                raise MusicGenError(
                    f"continuation_end ({self.end_seconds} s) must be after continuation_start "
                    f"({self.continuation_start} s); use -1 for the end of the clip."
                )

    @property
    def end_seconds(self) -> int | None:
        """continuation_end with -1 mapped to None (end of the clip)."""
        return None if self.continuation_end in (None, -1) else self.continuation_end

    @property
    def text(self) -> str | None:
        """The prompt, or None for unconditional generation (None, empty or only spaces)."""
        return self.prompt.strip() if self.prompt and self.prompt.strip() else None

    @property
    def uses_melody(self) -> bool:
        return self.input_audio is not None and not self.continuation

    def resolve_seed(self) -> int:
        """The seed to use: the requested one, or a fresh random one for None/-1."""
        if self.seed is None or self.seed == -1:
            return secrets.randbelow(MAX_SEED + 1)
        return self.seed
