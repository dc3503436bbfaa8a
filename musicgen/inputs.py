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

    def check(self, value: Any, surface: str = "library") -> Any:
        """``value`` as this input's type (an integral float becomes an int, as JSON Schema's ``integer``
        accepts ``2.0``), or a MusicGenError with one sentence (a file input's in the words of ``surface``,
        see ``file_problem``)."""
        if value is None and self.optional:
            return None
        if self.type is Path:
            problem = file_problem(value, surface)
            if problem is not None:
                raise MusicGenError(problem)
            return value
        if self.type is int and isinstance(value, float) and value.is_integer():
            value = int(value)
        if not _has_type(value, self.type) or (
            (self.ge is not None and value < self.ge) or (self.le is not None and value > self.le)
        ) or (self.choices is not None and value not in self.choices):
            raise MusicGenError(f"{spelled(self.name, surface)} must be {self.rule}, got {value!r}.")
        return value


SURFACES = ("library", "http", "cli", "batch")
DECODERS = ("encodec", "mbd")  # tokens to audio: MUSICGEN_DECODER / --decoder / GenerationRequest(decoder=)


def spelled(name: str, surface: str = "library") -> str:
    """How ``surface`` spells input ``name``: its flag on the command line (``--continuation-end``), the
    field's name everywhere else."""
    return "--" + name.replace("_", "-") if surface == "cli" else name


# how each surface spells input_audio, and what to do when it names no file
_FILE_ADVICE = {
    "library": ("input_audio", "pass the path of an audio file"),
    "cli": ("--input-audio", "give the path of an audio file"),
    "batch": ("input_audio", "fix the path (relative to the requests file) or add the file"),
}


def file_problem(value: Any, surface: str = "library", shown: str | None = None) -> str | None:
    """Why ``value`` cannot be ``input_audio``, in one sentence for the surface it came through, or None when
    it is a path-like naming a file. ``http``: Cog hands the predictor uploads, so a plain string is a client
    that sent text instead of the audio; ``library``: a path-like (a plain string is refused everywhere, so
    that no surface opens a path it was not handed as a file); ``cli`` / ``batch``: a path the user typed,
    ``shown`` as they wrote it."""
    if surface not in SURFACES:
        raise ValueError(f"unknown surface {surface!r}")
    if surface == "http":
        if not isinstance(value, os.PathLike):
            return ("input_audio must be an uploaded audio file (a file or URL), not a plain string; send the audio "
                    f"itself, for example as a data: URI or an http(s) URL, got {value!r}.")
        if not Path(value).is_file():
            return "input_audio was not received as a file; upload the audio file itself."
        return None
    name, advice = _FILE_ADVICE[surface]
    if not isinstance(value, os.PathLike):
        if surface == "library" and isinstance(value, str):
            return (f"input_audio must be a path-like object, not the plain string {value!r}; pass "
                    f"pathlib.Path({value!r}).")
        return f"{name} must be the path of an audio file, got {value!r}."
    if not Path(value).is_file():
        return f"{name} {shown or value} does not exist or is not a file; {advice}."
    return None


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
        "an audio file (said per surface by file_problem)",
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
