"""The 13 public inputs (docs/api.md): names, order, types, defaults, bounds, choices and descriptions,
defined once.

:class:`~musicgen.request.GenerationRequest` takes its fields, defaults and validation from here, the CLI its
flags, and the sampling parameters their defaults. ``predict.py`` spells the same values as literals,
because Cog's build reads them from its source without running it; a test checks that the two agree.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from musicgen.errors import MusicGenError
from musicgen.audio.normalize import STRATEGIES as NORMALIZATION_STRATEGIES
from musicgen.audio.output import FORMATS as OUTPUT_FORMATS

MIN_DURATION = 1
MAX_DURATION = 300
MAX_SEED = 2**32 - 1


@dataclass(frozen=True)
class InputSpec:
    """One input of the predictor."""

    name: str
    type: type  # str, Path, int, bool or float
    default: Any
    description: str  # the seed page's wording
    rule: str  # what a valid value is, completing "<name> must be ..."
    optional: bool = False  # None (JSON null) is accepted and means "not given"
    ge: float | None = None
    le: float | None = None
    choices: tuple[str, ...] | None = None

    def check(self, value: Any) -> Any:
        """``value`` as this input's type (an integral float becomes an int, as JSON Schema's ``integer``
        accepts ``2.0``), or a MusicGenError with one sentence."""
        if value is None and self.optional:
            return None
        if self.type is int and isinstance(value, float) and value.is_integer():
            value = int(value)
        if not _has_type(value, self.type) or (
            (self.ge is not None and value < self.ge) or (self.le is not None and value > self.le)
        ) or (self.choices is not None and value not in self.choices):
            raise MusicGenError(f"{self.name} must be {self.rule}, got {value!r}.")
        return value


def _has_type(value: Any, kind: type) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if kind is int:
        return isinstance(value, int)
    if kind is float:
        return isinstance(value, (int, float)) and math.isfinite(value)
    if kind is Path:  # Cog's Path, or any path object; never a plain string (that could name a server file)
        return isinstance(value, os.PathLike)
    return isinstance(value, kind)


INPUTS: tuple[InputSpec, ...] = (
    InputSpec("prompt", str, None, "A description of the music you want to generate.", "text", optional=True),
    InputSpec(
        "input_audio", Path, None,
        "An audio file that will influence the generated music. If `continuation` is `True`, the generated music "
        "will be a continuation of the audio file. Otherwise, the generated music will mimic the audio file's "
        "melody.",
        "an uploaded audio file (a file or URL), not a plain string; send the audio itself, for example as a "
        "data: URI or an http(s) URL",
        optional=True,
    ),
    InputSpec("duration", int, 8, "Duration of the generated audio in seconds.",
              f"a whole number of seconds from {MIN_DURATION} to {MAX_DURATION}", ge=MIN_DURATION, le=MAX_DURATION),
    InputSpec(
        "continuation", bool, False,
        "If `True`, generated music will continue from `input_audio`. Otherwise, generated music will mimic "
        "`input_audio`'s melody.",
        "true or false",
    ),
    InputSpec("continuation_start", int, 0, "Start time of the audio file to use for continuation.",
              "a whole number of seconds, 0 or more", ge=0),
    InputSpec(
        "continuation_end", int, None,
        "End time of the audio file to use for continuation. If -1 or None, will default to the end of the "
        "audio clip.",
        "a whole number of seconds, or -1 (or empty) for the end of the clip", optional=True, ge=-1,
    ),
    InputSpec("normalization_strategy", str, "loudness", "Strategy for normalizing audio.",
              f"one of {', '.join(NORMALIZATION_STRATEGIES)}", choices=NORMALIZATION_STRATEGIES),
    InputSpec("top_k", int, 250, "Reduces sampling to the k most likely tokens.",
              "a whole number, 0 or more (0 turns it off)", ge=0),
    InputSpec(
        "top_p", float, 0.0,
        "Reduces sampling to tokens with cumulative probability of p. When set to `0` (default), top_k sampling "
        "is used.",
        "a number from 0 to 1 (0 turns it off)", ge=0.0, le=1.0,
    ),
    InputSpec(
        "temperature", float, 1.0,
        "Controls the 'conservativeness' of the sampling process. Higher temperature means more diversity.",
        "a number, 0 or more (0 means greedy decoding)", ge=0.0,
    ),
    InputSpec(
        "classifier_free_guidance", int, 3,
        "Increases the influence of inputs on the output. Higher values produce lower-varience outputs that "
        "adhere more closely to inputs.",
        "a whole number, 0 or more (1 turns guidance off)", ge=0,
    ),
    InputSpec("output_format", str, "wav", "Output format for generated audio.",
              f"one of {', '.join(OUTPUT_FORMATS)}", choices=OUTPUT_FORMATS),
    InputSpec(
        "seed", int, None, "Seed for random number generator. If None or -1, a random seed will be used.",
        f"a whole number from 0 to {MAX_SEED}, or -1 (or empty) for a random seed", optional=True, ge=-1,
        le=MAX_SEED,
    ),
)

SPECS: dict[str, InputSpec] = {spec.name: spec for spec in INPUTS}
DEFAULTS: dict[str, Any] = {spec.name: spec.default for spec in INPUTS}
