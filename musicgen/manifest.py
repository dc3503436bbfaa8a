"""The record of a download, kept in the weights directory as ``musicgen-manifest.json``: the repository, the
revision asked for and the commit it resolved to, and every file with its size and hash (sha256 for the Hub's
LFS files, the git blob sha1 for small ones, sha256 for files converted here), and the state of the directory.

A directory is used only in state ``verified``. The state is ``downloading`` from the first byte fetched,
``verifying`` while hashes are checked and ``failed`` (with the files at fault) when they did not match, so an
interrupted download or check leaves the directory marked unusable. Cheap checks (every file present with its
size) run at every start; the hashes at download and on demand (``python -m musicgen.hub --verify DIR``).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

NAME = "musicgen-manifest.json"
DOWNLOADING, VERIFYING, VERIFIED, FAILED = "downloading", "verifying", "verified", "failed"


@dataclass
class FileRecord:
    size: int
    sha256: str | None = None
    git_sha1: str | None = None
    converted_from: list[str] | None = None  # made here from these files (not on the Hub)


@dataclass
class Manifest:
    repo: str
    revision: str
    commit: str
    state: str = DOWNLOADING
    files: dict[str, FileRecord] = field(default_factory=dict)
    damaged: list[str] = field(default_factory=list)  # files a failed verification found at fault

    @classmethod
    def read(cls, directory: Path) -> Manifest | None:
        """The manifest in ``directory``; None without one. An unreadable one reads as a failed download."""
        path = directory / NAME
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
            files = {name: FileRecord(**record) for name, record in data.pop("files").items()}
            return cls(**data, files=files)
        except (ValueError, TypeError, KeyError, OSError):
            return cls(repo="", revision="", commit="", state=FAILED, damaged=[NAME])

    def save(self, directory: Path) -> None:
        path = directory / NAME
        partial = path.with_name(path.name + ".partial")
        partial.write_text(json.dumps(asdict(self), indent=1, sort_keys=True) + "\n")
        os.replace(partial, path)

    def size_problems(self, directory: Path) -> list[str]:
        """The cheap check: every recorded file present with its recorded size."""
        problems = []
        for name, record in sorted(self.files.items()):
            path = directory / name
            if not path.is_file():
                problems.append(f"{name} is missing")
            elif path.stat().st_size != record.size:
                problems.append(f"{name} has {path.stat().st_size} bytes instead of {record.size}")
        return problems

    def hash_problems(self, directory: Path) -> dict[str, str]:
        """The full check: {file: what is wrong} for every recorded file whose size or hash does not match."""
        problems = {}
        for name, record in sorted(self.files.items()):
            path = directory / name
            if not path.is_file():
                problems[name] = f"{name} is missing"
            elif path.stat().st_size != record.size:
                problems[name] = f"{name} has {path.stat().st_size} bytes instead of {record.size}"
            elif record.sha256 and sha256(path) != record.sha256:
                problems[name] = f"{name} has the wrong sha256"
            elif record.git_sha1 and git_blob_sha1(path) != record.git_sha1:
                problems[name] = f"{name} has the wrong git blob sha1"
        return problems


def _digest(path: Path, digest, prefix: bytes = b""):
    digest.update(prefix)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(8 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256(path: Path) -> str:
    return _digest(path, hashlib.sha256())


def git_blob_sha1(path: Path) -> str:
    """The id git (and the Hub's listing, ``blobId``) gives a file stored in the repository itself."""
    return _digest(path, hashlib.sha1(), f"blob {path.stat().st_size}\0".encode())
