"""``musicgen`` (or ``python -m musicgen``): the predictor's inputs as command-line flags (docs/api.md)."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
from pathlib import Path

from musicgen.errors import MusicGenError
from musicgen.inputs import INPUTS, OUTPUT_FORMATS
from musicgen.request import GenerationRequest


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Each flag's help ends with its default, unless it has none (None) or the help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False or "default:" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action)


def _optional_int(text: str) -> int | None:
    return None if text.lower() in {"", "none"} else int(text)


# what the seed page's descriptions leave open, said in the help (docs/api.md)
_HELP_NOTES = {
    "duration": "The whole output, a continuation's prompt segment included (audiocraft's duration): "
                "--continuation-start 2 --continuation-end 6 --duration 10 gives the 4 s prompt and 6 s of new "
                "audio; a prompt not shorter than --duration is refused.",
}


# the defaults that are not a value the flag holds
_DEFAULT_WORDS = {
    "continuation_end": "the end of the clip",
    "output_format": "the extension of -o, else wav",
    "seed": "a random seed, printed",
}


def _input_flags(p: argparse.ArgumentParser, defaults: bool = True) -> None:
    """Every predictor input as a flag, with its rules (and its default, or None to leave it unset)."""
    for spec in INPUTS:
        flag = "--" + spec.name.replace("_", "-")
        words = f"(default: {_DEFAULT_WORDS[spec.name]})" if defaults and spec.name in _DEFAULT_WORDS else None
        text = " ".join(filter(None, (spec.description, _HELP_NOTES.get(spec.name), words)))
        if spec.type is bool:
            p.add_argument(flag, action="store_true", default=spec.default if defaults else None, help=text)
            continue
        kind = _optional_int if spec.type is int and spec.optional else spec.type
        default = None if spec.name == "output_format" or not defaults else spec.default
        p.add_argument(flag, type=kind, choices=spec.choices, default=default, help=text)


def _model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no progress bars or info lines on stderr: only warnings and errors")
    p.add_argument("--weights", type=Path, default=None,
                   help="checkpoint directory (default: MUSICGEN_WEIGHTS or weights/<model>)")
    p.add_argument("--device", default=None, help="auto, cpu or cuda (default: MUSICGEN_DEVICE or auto)")
    p.add_argument("--decoder", default=None, choices=("encodec", "mbd"),
                   help="tokens to audio: encodec, or mbd (MultiBand Diffusion: fewer codec artifacts, 80 U-Net "
                   "passes more; weights from `python -m musicgen.hub --mbd`) (default: MUSICGEN_DECODER or encodec)")
    p.add_argument("--precision", default=None,
                   help="decode precision: auto, fp32, bf16, fp16, or on CPU int8 or int4 (default: MUSICGEN_PRECISION or auto)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="musicgen", formatter_class=_HelpFormatter,
                                description="Generate music with MusicGen: musicgen \"lofi beat\" -o beat.wav. "
                                "`musicgen batch --help`: many requests from a file.")
    p.add_argument("text", nargs="?", default=None, metavar="PROMPT", help="the prompt (or --prompt)")
    _input_flags(p)
    p.add_argument("-o", "--output", type=Path, default=None,
                   help="output file, .wav or .mp3: its extension picks the format (--output-format, if given, "
                   "must agree); or a directory (an existing one, or a name without extension) to write into; "
                   "default: the current directory; - streams WAV to stdout while it is generated "
                   "(musicgen \"lofi\" -o - | ffplay -nodisp -)")
    p.add_argument("--stream-chunk", type=float, default=1.0, metavar="SECONDS",
                   help="with -o -: seconds of new audio per write to stdout")
    _model_flags(p)
    return p


def build_batch_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="musicgen batch", formatter_class=_HelpFormatter, description="Generate every request of a file into a "
                                "directory, several at once, skipping outputs that exist (resumable).")
    p.add_argument("requests", type=Path, help="JSON Lines (one object of inputs per line, optional \"name\") "
                   "or text (one prompt per line); blank lines and # comments are skipped")
    p.add_argument("-o", "--output", required=True,
                   help="directory, or fsspec URL (s3://bucket/run, ...), of the outputs and results.jsonl")
    p.add_argument("--concurrency", type=int, default=None,
                   help="requests decoded at once (per worker with --ray; default: MUSICGEN_CONCURRENCY, else the "
                   "device's default)")
    ray = p.add_argument_group("on a Ray cluster (pip install '.[ray]')")
    ray.add_argument("--ray", action="store_true",
                     help="run the job on Ray: on a local cluster started for it, or the one of --ray-address")
    ray.add_argument("--ray-address", default=None, metavar="ADDRESS",
                     help="the Ray cluster to join (auto, host:6379, ray://host:10001); implies --ray")
    ray.add_argument("--actors", type=int, default=None,
                     help="Ray workers, each holding a loaded model (default: one per GPU, else one per "
                     "--cpus-per-actor CPUs of the cluster)")
    ray.add_argument("--cpus-per-actor", type=int, default=None,
                     help="CPU cores of each worker on CPU clusters (default: 4, or fewer on a smaller cluster)")
    _model_flags(p)
    group = p.add_argument_group("defaults for every request (a line's own inputs win)")
    _input_flags(group, defaults=False)
    return p


def batch_main(argv: list[str]) -> int:
    from musicgen.serving.batch import Batch

    args = build_batch_parser().parse_args(argv)
    _logging(args.quiet)
    defaults = {spec.name: getattr(args, spec.name) for spec in INPUTS if getattr(args, spec.name) is not None}
    if not args.requests.is_file():
        print(f"error: {args.requests} is not a file.", file=sys.stderr)
        return 2
    job = None
    try:
        if args.ray or args.ray_address is not None:
            from musicgen.serving.distributed import RayBatch, import_ray

            _settings(args, args.concurrency)  # a mistaken model flag is said before the cluster starts
            import_ray()  # the missing extra is said before anything loads
            job = RayBatch(args.requests, args.output, defaults, weights=args.weights, device=args.device,
                           precision=args.precision, concurrency=args.concurrency, actors=args.actors,
                           cpus_per_actor=args.cpus_per_actor, address=args.ray_address, decoder=args.decoder)
            failures = job.run()
        else:
            settings = _settings(args, args.concurrency)
            job = Batch(args.requests, args.output, defaults)  # says what is done already, before loading
            model = None
            if job.todo:
                from musicgen.serving.service import MusicGen  # heavy imports only when there is work

                model = MusicGen.load(args.weights, settings=settings)
            failures = job.run(model)
    except MusicGenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # the requests in flight are cancelled; what is written stays
        done = job.summary.skipped + job.summary.generated if job is not None else 0
        return _interrupted(f"the {done} finished file(s) in {args.output} are kept (results.jsonl says which); "
                            "run the same command again to resume.")
    print(args.output)
    if failures:
        print(f"{failures} request(s) failed: see {args.output.rstrip('/')}/results.jsonl", file=sys.stderr)
    return 1 if failures else 0


def _logging(quiet: bool) -> None:
    """Info lines and progress bars on stderr, or with --quiet only warnings and errors (bars follow the level,
    ``musicgen.serving.progress``)."""
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(message)s", stream=sys.stderr)


def _interrupted(line: str) -> int:
    """Ctrl-C: one line (the cancelled work's own log lines silenced, so that it is the last), exit status 130."""
    logging.disable(logging.CRITICAL)
    print(f"interrupted: {line}", file=sys.stderr)
    return 130


_FLAGS = {"device": "--device", "precision": "--precision", "concurrency": "--concurrency", "decoder": "--decoder"}


def _settings(args: argparse.Namespace, concurrency: int | None):
    """The settings of the environment with the model flags on top; a refusal names the flag that was used."""
    from musicgen.settings import Settings

    return Settings.from_env(device=args.device, precision=args.precision, concurrency=concurrency,
                             decoder=args.decoder, names=_FLAGS)


def output_format(target: Path | None, flag: str | None) -> str:
    """The format of ``-o target``: a file's extension picks it, and ``--output-format`` (``flag``) must agree;
    a directory (an existing one, or a name without extension) takes ``flag``, else wav."""
    if target is None or target.is_dir() or not target.suffix:
        return flag or "wav"
    ext = target.suffix.lstrip(".").lower()
    if ext not in OUTPUT_FORMATS:
        raise MusicGenError(f"-o {target} names a .{ext} file, but the output formats are "
                            f"{' and '.join(OUTPUT_FORMATS)}; name the file .wav or .mp3, or give a directory.")
    if flag is not None and flag != ext:
        raise MusicGenError(f"-o {target} names a .{ext} file but --output-format is {flag}; name the file "
                            f"{target.with_suffix('.' + flag).name}, or leave out --output-format (the extension "
                            "picks the format).")
    return ext


def _stream(model, request: GenerationRequest, chunk_seconds: float) -> int:
    """``-o -``: a WAV stream on stdout, its samples written as they are generated (the decoder's output,
    clipped: loudness normalization needs the whole clip)."""
    from musicgen.audio.output import wav_stream_header, wav_stream_samples

    out = sys.stdout.buffer
    with model.stream(request, chunk_seconds=chunk_seconds) as chunks:
        try:
            out.write(wav_stream_header(model.sample_rate, model.engine.channels))
            for chunk in chunks:
                out.write(wav_stream_samples(chunk.samples))
                out.flush()
        except BrokenPipeError:  # the player went away: stop generating, say so once
            logging.disable(logging.CRITICAL)
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # what is left to flush goes nowhere
            print("stopped: the program reading stdout closed it.", file=sys.stderr)
            return 0
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["batch"]:
        return batch_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.text is not None:
        if args.prompt is not None:
            parser.error("give the prompt once: as PROMPT or as --prompt")
        args.prompt = args.text
    _logging(args.quiet)
    bar = None
    streaming = args.output == Path("-")
    try:
        if streaming and args.output_format not in (None, "wav"):
            raise MusicGenError(f"-o - streams WAV; --output-format {args.output_format} cannot be streamed: "
                                "leave it out, or write a file with -o NAME.mp3.")
        if not args.stream_chunk > 0:
            raise MusicGenError(f"--stream-chunk must be a number of seconds above 0, got {args.stream_chunk}.")
        fmt = "wav" if streaming else output_format(args.output, args.output_format)
        request = GenerationRequest(**{spec.name: getattr(args, spec.name) for spec in INPUTS} | {"output_format": fmt},
                                    surface="cli")
        from musicgen.serving.progress import MusicBar
        from musicgen.serving.service import MusicGen  # heavy imports only once the arguments are known to be good

        model = MusicGen.load(args.weights, settings=_settings(args, 1))
        if streaming:
            return _stream(model, request, args.stream_chunk)
        bar = MusicBar()
        produced = model.predict(request, progress=bar).paths[0]
    except MusicGenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # the request is cancelled; nothing reaches -o
        if bar is not None:
            bar.close()
        return _interrupted("nothing was written.")
    target = args.output or Path.cwd()
    if target.is_dir() or not target.suffix:  # a directory: keep the generated file name
        target = target / produced.name
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(produced), target)
    shutil.rmtree(produced.parent, ignore_errors=True)
    print(target)
    return 0
