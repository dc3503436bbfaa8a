"""A generation request: the 13 public inputs (docs/api.md), validated once, immutable afterwards."""

from __future__ import annotations

import secrets
from dataclasses import KW_ONLY, InitVar, dataclass, field
from pathlib import Path

from musicgen.errors import MusicGenError
from musicgen.inputs import DECODERS, DEFAULTS, INPUTS, MAX_SEED, spelled

# continuation without a clip, said in each surface's words
_NO_CLIP = {
    "http": "continuation=true needs input_audio: upload the clip to continue, or set continuation=false.",
    "cli": "--continuation needs --input-audio: give the clip to continue, or leave out --continuation.",
    "batch": 'continuation: true needs input_audio: add the path of the clip to continue, or set "continuation": false.',
    "library": "continuation=True needs input_audio: pass the path of the clip to continue, or set continuation=False.",
}


@dataclass(frozen=True)
class GenerationRequest:
    """What to generate. Field names, order, defaults and rules come from :mod:`musicgen.inputs`;
    construction validates everything that can be checked without the model or reading the audio (that
    ``input_audio`` names a file included). An integral float for an integer input (``2.0``) is taken as that
    integer. ``surface`` (not a field): where the inputs came from, ``library``, ``http``, ``cli`` or ``batch``,
    so that a mistake is said in that surface's words (``musicgen.inputs.file_problem``). ``decoder`` (keyword,
    not one of the inputs, kept as ``request.decoder``): ``encodec`` or ``mbd`` (MultiBand Diffusion) for this
    request, None for the deployment's MUSICGEN_DECODER."""

    prompt: str | None = DEFAULTS["prompt"]
    input_audio: Path | None = DEFAULTS["input_audio"]
    duration: int = DEFAULTS["duration"]
    continuation: bool = DEFAULTS["continuation"]
    continuation_start: int = DEFAULTS["continuation_start"]
    continuation_end: int | None = DEFAULTS["continuation_end"]
    normalization_strategy: str = DEFAULTS["normalization_strategy"]
    top_k: int = DEFAULTS["top_k"]
    top_p: float = DEFAULTS["top_p"]
    temperature: float = DEFAULTS["temperature"]
    classifier_free_guidance: int = DEFAULTS["classifier_free_guidance"]
    output_format: str = DEFAULTS["output_format"]
    seed: int | None = DEFAULTS["seed"]
    _: KW_ONLY
    # whose words a mistake is said in (library, cli, batch, http): also what reading input_audio says later
    surface: str = field(default="library", compare=False, repr=False)
    decoder: InitVar[str | None] = None

    def __post_init__(self, decoder: str | None) -> None:
        surface = self.surface
        for spec in INPUTS:
            object.__setattr__(self, spec.name, spec.check(getattr(self, spec.name), surface))
        if decoder is not None:
            decoder = str(decoder).strip().lower()
            if decoder not in DECODERS:
                raise MusicGenError(f"decoder must be one of {', '.join(DECODERS)}, got {decoder!r}; leave it out "
                                    "for the deployment's MUSICGEN_DECODER.")
        object.__setattr__(self, "decoder", decoder)
        if self.continuation:
            if self.input_audio is None:
                raise MusicGenError(_NO_CLIP[surface])
            if self.end_seconds is not None and self.end_seconds <= self.continuation_start:
                raise MusicGenError(
                    f"{spelled('continuation_end', surface)} ({self.end_seconds} s) must be after "
                    f"{spelled('continuation_start', surface)} ({self.continuation_start} s); use -1 for the end "
                    "of the clip."
                )

    @property
    def end_seconds(self) -> int | None:
        """continuation_end with -1 mapped to None (end of the clip)."""
        return None if self.continuation_end in (None, -1) else self.continuation_end

    @property
    def text(self) -> str | None:
        """The prompt, or None for unconditional generation (None, empty or only spaces)."""
        return self.prompt.strip() if self.prompt and self.prompt.strip() else None

    def resolve_seed(self) -> int:
        """The seed to use: the requested one, or a fresh random one for None/-1."""
        if self.seed is None or self.seed == -1:
            return secrets.randbelow(MAX_SEED + 1)
        return self.seed
