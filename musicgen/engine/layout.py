"""The files of a transformers-format MusicGen checkpoint, as the Hub's repositories publish them.

Which files a checkpoint needs is chosen from its own file list (a Hub repository's listing or a directory's
contents) in one order: the safetensors index and its shards, else the single ``model.safetensors``, else the
``pytorch_model.bin`` index and its shards, else the single ``pytorch_model.bin`` — plus the configs and
tokenizer. Duplicates (``model.fp32.safetensors``, ``*.fp32.bin``) and stale indexes naming absent files are
never chosen. A ``.bin`` checkpoint (musicgen-medium, musicgen-large) is converted once to ``model.safetensors``
(:func:`convert_bin`, streamed: it never holds more than one tensor in memory) so that loading maps it: beside it
when this project downloaded it (``musicgen.hub``, recorded in its manifest), else in the conversion cache
(:func:`converted_path`), never in a directory of the user's.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path

log = logging.getLogger(__name__)

SAFETENSORS = "model.safetensors"
BIN = "pytorch_model.bin"
# (index, single file) per format, in order of preference
LAYOUTS = ((f"{SAFETENSORS}.index.json", SAFETENSORS), (f"{BIN}.index.json", BIN))
CONFIG = "config.json"


def is_support_file(name: str) -> bool:
    """Configs and tokenizer files (every top-level json but the weight indexes, and spiece.model)."""
    return "/" not in name and (name == "spiece.model" or (name.endswith(".json") and "index" not in name))


def shards(index: dict) -> list[str]:
    return sorted(set(index["weight_map"].values()))


def choose(names: Iterable[str], read_index: Callable[[str], dict], listing: bool = False,
           layouts: tuple[tuple[str, str], ...] = LAYOUTS) -> list[str]:
    """The files a checkpoint with these file ``names`` needs (configs, tokenizer, weights), sorted.
    ``read_index(name)`` reads an index file. With ``listing`` (a Hub repository's file list) an index naming
    a file the list lacks is stale and skipped; in a directory, its missing shards are still needed."""
    names = set(names)
    support = sorted(n for n in names if is_support_file(n))
    for index, single in layouts:
        if index in names:
            parts = shards(read_index(index))
            if not listing or set(parts) <= names:
                return support + [index, *parts]
        if single in names:
            return support + [single]
    return support


def weight_files(directory: Path, layouts: tuple[tuple[str, str], ...] = LAYOUTS) -> list[Path]:
    """The weight files the checkpoint in ``directory`` loads (some possibly missing); [] when it has none."""
    names = os.listdir(directory) if directory.is_dir() else []
    chosen = choose(names, lambda name: json.loads((directory / name).read_text()), layouts=layouts)
    return [directory / n for n in chosen if not is_support_file(n) and not n.endswith(".index.json")]


def missing(directory: Path) -> list[str]:
    """What ``directory`` lacks to be a checkpoint: config.json, weights, or the shards its index names."""
    if not (directory / CONFIG).is_file():
        return [CONFIG]
    files = weight_files(directory)
    if not files:
        return [f"{SAFETENSORS} (or {BIN})"]
    return [f.name for f in files if not f.is_file()]


def is_checkpoint(directory: Path) -> bool:
    return directory.is_dir() and not missing(directory)


def is_bin(files: list[Path]) -> bool:
    return bool(files) and all(f.suffix == ".bin" for f in files)


def read_bin(file: Path) -> dict:
    """A ``.bin`` state dict, memory-mapped, without unpickling code."""
    import torch

    return torch.load(file, map_location="cpu", weights_only=True, mmap=True)


# safetensors' dtype names
_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "float64": "F64", "int64": "I64",
           "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL"}


def write_safetensors(tensors: dict, path: Path, metadata: dict[str, str] | None = None) -> None:
    """Write ``tensors`` as a safetensors file one tensor at a time (safetensors' own ``save_file`` copies them
    all into memory first: 8 GB for musicgen-medium), under a temporary name renamed into place at the end."""
    import torch

    header: dict = {"__metadata__": metadata or {}}
    offset = 0
    ordered = sorted(tensors.items())
    for name, tensor in ordered:
        size = tensor.numel() * tensor.element_size()
        header[name] = {"dtype": _DTYPES[str(tensor.dtype).removeprefix("torch.")], "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")  # processes converting at once do not mix
    with open(partial, "wb") as f:
        f.write(len(encoded).to_bytes(8, "little"))
        f.write(encoded)
        for _, tensor in ordered:
            f.write(memoryview(tensor.detach().contiguous().view(-1).view(torch.uint8).numpy()))
    os.replace(partial, path)


def converted_path(directory: Path, sources: list[Path], cache: Path) -> Path:
    """Where ``model.safetensors`` converted from the ``.bin`` files ``sources`` of ``directory`` goes in the
    conversion cache ``cache`` (MUSICGEN_CACHE): a folder named after the directory and keyed by its path and
    the files' names, sizes and modification times, so a changed file is converted anew."""
    stats = [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in sources]
    key = hashlib.sha256(json.dumps([str(directory.resolve()), stats]).encode()).hexdigest()[:16]
    return cache / "converted" / f"{directory.resolve().name}-{key}" / SAFETENSORS


def convert_bin(directory: Path, target: Path | None = None) -> Path:
    """Write ``target`` (default ``model.safetensors`` in ``directory``) holding the tensors of the ``.bin``
    checkpoint in ``directory`` (same names, same dtypes; tensors that share storage in the pickle are written
    separately) and return its path."""
    sources = weight_files(directory, LAYOUTS[1:])
    started = time.monotonic()
    tensors, seen = {}, set()
    for file in sources:
        for name, tensor in read_bin(file).items():
            storage = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
            tensors[name] = tensor.clone() if storage in seen else tensor
            seen.add(storage)
    target = target or directory / SAFETENSORS
    target.parent.mkdir(parents=True, exist_ok=True)
    write_safetensors(tensors, target, {"format": "pt", "converted_from": ",".join(f.name for f in sources)})
    log.info("converted %s to %s in %.1f s", ", ".join(f.name for f in sources),
             target.name if target.parent == directory else target, time.monotonic() - started)
    return target
