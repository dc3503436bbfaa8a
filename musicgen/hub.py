"""Checkpoints on disk and on the Hugging Face Hub: where one is, whether a directory holds one, downloading it
(only the files loading needs, resumable) and verifying every file's size and sha256 against the Hub's
metadata. Offline-first: a directory that holds a checkpoint is used without touching the network.

From the command line: ``python -m musicgen.hub [MODEL] [--dir DIR]`` (``make weights``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .errors import WeightsNotFoundError
from .settings import Settings

log = logging.getLogger(__name__)

# Only what loading needs: configs, tokenizer, safetensors weights (no .bin duplicates).
ALLOW_PATTERNS = ["*.json", "*.safetensors", "spiece.model", "*.txt"]


def is_checkpoint(path: Path) -> bool:
    return (path / "config.json").is_file() and any(path.glob("*.safetensors"))


def expected_files(model: str) -> dict[str, tuple[int | None, str | None]]:
    """{file name: (size in bytes, sha256 or None)} for the files of ``model`` we download, from the Hub's
    metadata (needs the network)."""
    from fnmatch import fnmatch

    from huggingface_hub import HfApi

    info = HfApi().model_info(model, files_metadata=True)
    files = {}
    for sibling in info.siblings or []:
        if any(fnmatch(sibling.rfilename, pattern) for pattern in ALLOW_PATTERNS):
            files[sibling.rfilename] = (sibling.size, sibling.lfs.sha256 if sibling.lfs else None)
    return files


def _sha256(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(8 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify(directory: Path, expected: dict[str, tuple[int | None, str | None]], model: str) -> None:
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
            f"The checkpoint in {directory} does not match {model} ({'; '.join(problems[:3])}); delete the "
            f"directory and run `make weights MODEL={model}` again."
        )


def download(model: str, directory: Path) -> Path:
    """Download ``model`` from the Hugging Face Hub into ``directory`` (resumable: files already complete
    are kept; only the files loading needs, safetensors rather than .bin), then verify sizes and hashes
    against the Hub's metadata."""
    from huggingface_hub import snapshot_download

    directory.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s into %s", model, directory)
    snapshot_download(repo_id=model, local_dir=str(directory), allow_patterns=ALLOW_PATTERNS)
    verify(directory, expected_files(model), model)
    if not is_checkpoint(directory):
        raise WeightsNotFoundError(f"{model} was downloaded to {directory} but holds no safetensors checkpoint.")
    log.info("verified %s in %s", model, directory)
    return directory


def locate(settings: Settings, allow_download: bool = True) -> Path:
    """Return a directory holding the configured checkpoint, downloading it when allowed and possible."""
    model, directory = settings.model, settings.weights_dir
    if is_checkpoint(directory):
        return directory
    reason = "HF_HUB_OFFLINE is set" if settings.offline else "downloading is disabled"
    if allow_download and not settings.offline:
        try:
            return download(model, directory)
        except WeightsNotFoundError:
            raise
        except Exception as exc:  # network, auth, missing repo: all end in the same advice
            reason = f"the download failed ({type(exc).__name__})"
            log.warning("download of %s failed: %s", model, exc)
    raise WeightsNotFoundError(
        f"No MusicGen checkpoint found in {directory} and {reason}: run `make weights MODEL={model}` "
        f"(python -m musicgen.hub {model}) where the Hugging Face Hub is reachable, or set MUSICGEN_WEIGHTS "
        "to a local checkpoint directory."
    )


def main(argv: list[str] | None = None) -> int:
    default = Settings.from_env().model
    parser = argparse.ArgumentParser(prog="python -m musicgen.hub", description="Download a MusicGen checkpoint.")
    parser.add_argument("model", nargs="?", default=default, help=f"Hub repo id (default {default})")
    parser.add_argument("--dir", type=Path, default=None, help="target directory (default weights/<name>)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    target = args.dir or Settings.from_env(model=args.model).weights_dir
    try:
        download(args.model, target)
    except Exception as exc:
        print(f"error: could not download {args.model} into {target}: {exc}", file=sys.stderr)
        return 1
    print(target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
