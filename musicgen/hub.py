"""Weights on disk and on the Hugging Face Hub: the MusicGen checkpoint and, for melody checkpoints, the
HTDemucs bag that separates melody stems. For each: where it is, whether a directory holds it, downloading it
(only the files loading needs, resumable) and verifying every file's size and sha256 against the Hub's
metadata. Offline-first: a directory that holds the weights is used without touching the network.

From the command line: ``python -m musicgen.hub [MODEL] [--dir DIR]`` fetches a checkpoint,
``python -m musicgen.hub --stems [--dir DIR]`` the HTDemucs bag (``make weights`` runs both).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import stems
from .errors import WeightsNotFoundError
from .settings import Settings

log = logging.getLogger(__name__)

# Only what loading needs: configs, tokenizer, safetensors weights (no .bin duplicates).
ALLOW_PATTERNS = ["*.json", "*.safetensors", "spiece.model", "*.txt"]


def is_checkpoint(path: Path) -> bool:
    return (path / "config.json").is_file() and any(path.glob("*.safetensors"))


@dataclass(frozen=True)
class Weights:
    """A set of weights: its Hub repository, the files it needs, how to tell a directory holds them, and the
    commands that fetch them (for sentences)."""

    what: str
    repo: str
    patterns: list[str]
    complete: Callable[[Path], bool]
    command: str
    module_command: str


def checkpoint(model: str) -> Weights:
    return Weights("MusicGen checkpoint", model, ALLOW_PATTERNS, is_checkpoint, f"make weights MODEL={model}",
                   f"python -m musicgen.hub {model}")


STEMS = Weights(f"{stems.MODEL_NAME} stem separation bag", stems.HUB_REPO, stems.HUB_PATTERNS, stems.has_weights,
                "make weights", "python -m musicgen.hub --stems")


class Unavailable(Exception):
    """Weights that are not on disk and could not be downloaded; the message says why."""


def expected_files(weights: Weights) -> dict[str, tuple[int | None, str | None]]:
    """{file name: (size in bytes, sha256 or None)} for the files we download, from the Hub's metadata
    (needs the network)."""
    from fnmatch import fnmatch

    from huggingface_hub import HfApi

    info = HfApi().model_info(weights.repo, files_metadata=True)
    files = {}
    for sibling in info.siblings or []:
        if any(fnmatch(sibling.rfilename, pattern) for pattern in weights.patterns):
            files[sibling.rfilename] = (sibling.size, sibling.lfs.sha256 if sibling.lfs else None)
    return files


def _sha256(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(8 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify(directory: Path, expected: dict[str, tuple[int | None, str | None]], weights: Weights) -> None:
    """Check every expected file's size (and sha256 where the Hub gives one); one sentence on mismatch."""
    problems = []
    for name, (size, sha256) in sorted(expected.items()):
        path = directory / name
        if not path.is_file():
            problems.append(f"{name} is missing")
        elif size is not None and path.stat().st_size != size:
            problems.append(f"{name} has {path.stat().st_size} bytes instead of {size}")
        elif sha256 and _sha256(path) != sha256:
            problems.append(f"{name} has the wrong sha256")
    if problems:
        raise WeightsNotFoundError(
            f"The {weights.what} in {directory} does not match {weights.repo} ({'; '.join(problems[:3])}); delete "
            f"the directory and run `{weights.command}` again."
        )


def download(weights: Weights, directory: Path) -> Path:
    """Download ``weights`` from the Hugging Face Hub into ``directory`` (resumable: files already complete
    are kept; only the files loading needs), then verify sizes and hashes against the Hub's metadata."""
    from huggingface_hub import snapshot_download

    directory.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s into %s", weights.repo, directory)
    snapshot_download(repo_id=weights.repo, local_dir=str(directory), allow_patterns=weights.patterns)
    verify(directory, expected_files(weights), weights)
    if not weights.complete(directory):
        raise WeightsNotFoundError(f"{weights.repo} was downloaded to {directory} but holds no {weights.what}.")
    log.info("verified %s in %s", weights.repo, directory)
    return directory


def fetch(weights: Weights, directory: Path, settings: Settings, allow_download: bool) -> Path:
    """``directory`` once it holds ``weights``, downloading them when allowed and possible; otherwise
    Unavailable with the reason (WeightsNotFoundError when a download does not verify)."""
    if weights.complete(directory):
        return directory
    reason = "HF_HUB_OFFLINE is set" if settings.offline else "downloading is disabled"
    if allow_download and not settings.offline:
        try:
            return download(weights, directory)
        except WeightsNotFoundError:
            raise
        except Exception as exc:  # network, auth, missing repo: all end in the same advice
            reason = f"the download failed ({type(exc).__name__})"
            log.warning("download of %s failed: %s", weights.repo, exc)
    raise Unavailable(reason)


def locate(settings: Settings, allow_download: bool = True) -> Path:
    """Return a directory holding the configured checkpoint, downloading it when allowed and possible."""
    directory = settings.weights_dir
    weights = checkpoint(settings.model)
    try:
        return fetch(weights, directory, settings, allow_download)
    except Unavailable as exc:
        raise WeightsNotFoundError(
            f"No MusicGen checkpoint found in {directory} and {exc}: run `{weights.command}` "
            f"({weights.module_command}) where the Hugging Face Hub is reachable, or set MUSICGEN_WEIGHTS to a "
            "local checkpoint directory."
        ) from None


def locate_stems(settings: Settings, allow_download: bool = True) -> Path:
    """Return a directory holding the HTDemucs bag, downloading it when allowed and possible."""
    directory = settings.stems_dir
    try:
        return fetch(STEMS, directory, settings, allow_download)
    except Unavailable as exc:
        raise WeightsNotFoundError(
            f"Following a melody needs the {STEMS.what} ({STEMS.repo}), which is not in {directory} and {exc}: "
            f"run `{STEMS.command}` ({STEMS.module_command}) where the Hugging Face Hub is reachable, set "
            "MUSICGEN_STEMS_WEIGHTS to a directory holding it, or set MUSICGEN_MELODY_STEMS=0 to follow the "
            "raw mix's melody."
        ) from None


def main(argv: list[str] | None = None) -> int:
    env = Settings.from_env()
    parser = argparse.ArgumentParser(prog="python -m musicgen.hub", description="Download weights.")
    parser.add_argument("model", nargs="?", default=env.model, help=f"Hub repo id (default {env.model})")
    parser.add_argument("--stems", action="store_true",
                        help=f"fetch the {stems.MODEL_NAME} stem separation bag that melody checkpoints use")
    parser.add_argument("--dir", type=Path, default=None,
                        help="target directory (default weights/<name>, or weights/htdemucs with --stems)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.stems:
        weights, target = STEMS, args.dir or env.stems_dir
    else:
        weights, target = checkpoint(args.model), args.dir or Settings.from_env(model=args.model).weights_dir
    try:
        download(weights, target)
    except Exception as exc:
        print(f"error: could not download {weights.repo} into {target}: {exc}", file=sys.stderr)
        return 1
    print(target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
