"""``python -m musicgen``: the predictor's inputs as command-line flags (SPEC.md)."""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from pathlib import Path

from .errors import MusicGenError
from .request import NORMALIZATION_STRATEGIES, OUTPUT_FORMATS, GenerationRequest


class _Bar:
    """A one-line progress bar on stderr."""

    def __init__(self, width: int = 30):
        self.width = width
        self.shown = -1

    def __call__(self, done: int, total: int) -> None:
        filled = self.width * done // total
        if filled == self.shown and done != total:
            return
        self.shown = filled
        sys.stderr.write(f"\rgenerating [{'#' * filled}{'.' * (self.width - filled)}] {done}/{total} steps")
        if done == total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def _optional_int(text: str) -> int | None:
    return None if text.lower() in {"", "none"} else int(text)


def build_parser() -> argparse.ArgumentParser:
    d = GenerationRequest()
    p = argparse.ArgumentParser(prog="python -m musicgen", description="Generate music with MusicGen.")
    p.add_argument("--prompt", default=d.prompt, help="a description of the music to generate")
    p.add_argument("--input-audio", type=Path, default=None,
                   help="audio file: a melody to follow, or (with --continuation) a clip to continue")
    p.add_argument("--duration", type=int, default=d.duration, help="seconds of new audio (1-300)")
    p.add_argument("--continuation", action="store_true", help="continue --input-audio instead of following its melody")
    p.add_argument("--continuation-start", type=int, default=d.continuation_start, help="start of the prompt in seconds")
    p.add_argument("--continuation-end", type=_optional_int, default=d.continuation_end,
                   help="end of the prompt in seconds (-1 or none: end of the clip)")
    p.add_argument("--normalization-strategy", choices=NORMALIZATION_STRATEGIES, default=d.normalization_strategy)
    p.add_argument("--top-k", type=int, default=d.top_k)
    p.add_argument("--top-p", type=float, default=d.top_p)
    p.add_argument("--temperature", type=float, default=d.temperature)
    p.add_argument("--classifier-free-guidance", type=int, default=d.classifier_free_guidance)
    p.add_argument("--output-format", choices=OUTPUT_FORMATS, default=None,
                   help="wav or mp3 (default: from the --output extension, else wav)")
    p.add_argument("--seed", type=_optional_int, default=d.seed, help="-1 or none: random")
    p.add_argument("-o", "--output", type=Path, default=None,
                   help="output file, or directory (no extension) to write into; default: the current directory")
    p.add_argument("--weights", type=Path, default=None,
                   help="checkpoint directory (default: MUSICGEN_WEIGHTS or weights/<model>)")
    p.add_argument("--device", default=None, help="auto, cpu or cuda (default: MUSICGEN_DEVICE or auto)")
    p.add_argument("--precision", default=None,
                   help="decode precision: auto, fp32, bf16, fp16, or on CPU int8 or int4 (default: MUSICGEN_PRECISION or auto)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    fmt = args.output_format
    if fmt is None:
        suffix = args.output.suffix.lstrip(".").lower() if args.output is not None else ""
        fmt = suffix if suffix in OUTPUT_FORMATS else "wav"
    try:
        request = GenerationRequest(
            prompt=args.prompt, input_audio=args.input_audio, duration=args.duration,
            continuation=args.continuation, continuation_start=args.continuation_start,
            continuation_end=args.continuation_end, normalization_strategy=args.normalization_strategy,
            top_k=args.top_k, top_p=args.top_p, temperature=args.temperature,
            classifier_free_guidance=args.classifier_free_guidance, output_format=fmt, seed=args.seed,
        )
        if request.input_audio is not None and not request.input_audio.is_file():
            raise MusicGenError(f"--input-audio {request.input_audio} is not a file.")
        from .service import MusicGen  # heavy imports only once the arguments are known to be good

        model = MusicGen.load(args.weights, device=args.device, precision=args.precision)
        produced = model.predict(request, progress=_Bar())[0]
    except MusicGenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    target = args.output or Path.cwd()
    if target.is_dir() or not target.suffix:  # a directory: keep the generated file name
        target = target / produced.name
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(produced), target)
    shutil.rmtree(produced.parent, ignore_errors=True)
    print(target)
    return 0
