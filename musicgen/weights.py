"""Locating, downloading and loading checkpoints (transformers format).

Configuration (SPEC.md): MUSICGEN_MODEL (Hub repo id, default facebook/musicgen-melody), MUSICGEN_WEIGHTS
(local directory, default weights/<name of the model>), MUSICGEN_DEVICE (auto, cpu, cuda). A directory that
holds a checkpoint is used as it is and nothing is downloaded. Otherwise the checkpoint is downloaded there
with huggingface_hub (unless HF_HUB_OFFLINE is set); when that fails, one sentence says where we looked and
which command fetches the weights.

Download from the command line: ``python -m musicgen.weights [MODEL] [--dir DIR]`` (``make weights``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import torch

from .errors import MusicGenError, WeightsNotFoundError

log = logging.getLogger(__name__)

DEFAULT_MODEL = "facebook/musicgen-melody"
PROJECT_ROOT = Path(__file__).resolve().parent.parent
WEIGHTS_ROOT = PROJECT_ROOT / "weights"
# Only what loading needs: configs, tokenizer, safetensors weights (no .bin duplicates).
ALLOW_PATTERNS = ["*.json", "*.safetensors", "spiece.model", "*.txt"]
DEVICES = ("auto", "cpu", "cuda")


def model_id() -> str:
    return os.environ.get("MUSICGEN_MODEL") or DEFAULT_MODEL


def weights_dir(model: str | None = None) -> Path:
    """Where the checkpoint of ``model`` lives: MUSICGEN_WEIGHTS, else weights/<name of the model>."""
    env = os.environ.get("MUSICGEN_WEIGHTS")
    if env:
        return Path(env).expanduser()
    return WEIGHTS_ROOT / (model or model_id()).rstrip("/").split("/")[-1]


def is_checkpoint(path: Path) -> bool:
    return (path / "config.json").is_file() and any(path.glob("*.safetensors"))


def env_flag(name: str) -> bool:
    """A boolean environment variable (1/true/yes/on)."""
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _offline() -> bool:
    return env_flag("HF_HUB_OFFLINE")


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


def locate(model: str | None = None, allow_download: bool = True) -> Path:
    """Return a directory holding the checkpoint, downloading it when allowed and possible."""
    model = model or model_id()
    directory = weights_dir(model)
    if is_checkpoint(directory):
        return directory
    reason = "HF_HUB_OFFLINE is set" if _offline() else "downloading is disabled"
    if allow_download and not _offline():
        try:
            return download(model, directory)
        except WeightsNotFoundError:
            raise
        except Exception as exc:  # network, auth, missing repo: all end in the same advice
            reason = f"the download failed ({type(exc).__name__})"
            log.warning("download of %s failed: %s", model, exc)
    raise WeightsNotFoundError(
        f"No MusicGen checkpoint found in {directory} and {reason}: run `make weights MODEL={model}` "
        f"(python -m musicgen.weights {model}) where the Hugging Face Hub is reachable, or set MUSICGEN_WEIGHTS "
        "to a local checkpoint directory."
    )


def pick_device(name: str | None = None) -> torch.device:
    name = (name or os.environ.get("MUSICGEN_DEVICE") or "auto").lower()
    if name not in DEVICES:
        raise MusicGenError(f"MUSICGEN_DEVICE must be one of {', '.join(DEVICES)}, got {name!r}.")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise MusicGenError("MUSICGEN_DEVICE=cuda but no CUDA GPU is available; use auto or cpu.")
    return torch.device(name)


PRECISION_CHOICES = ("auto", "fp32", "bf16", "fp16", "int8", "int4")


def default_precision(device: torch.device) -> str:
    """The decode precision used unless MUSICGEN_PRECISION says otherwise. CPU: int8, the fastest setting
    whose greedy agreement with fp32 matches bf16's (bench/decode.py: ~8x transformers on musicgen-small
    shapes; int4 is barely faster and agrees far less). CUDA: bf16 where supported, else fp16."""
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "int8"


def pick_precision(device: torch.device, name: str | None = None) -> str:
    name = (name or os.environ.get("MUSICGEN_PRECISION") or "auto").lower()
    if name not in PRECISION_CHOICES:
        raise MusicGenError(f"MUSICGEN_PRECISION must be one of {', '.join(PRECISION_CHOICES)}, got {name!r}.")
    if name in ("int8", "int4") and device.type != "cpu":
        raise MusicGenError(f"MUSICGEN_PRECISION={name} is a CPU option; use auto, bf16 or fp16 on a GPU.")
    return default_precision(device) if name == "auto" else name


# Keys that checkpoints saved by older transformers versions (the public Hub repos among them) spell
# differently from the current modules: EnCodec's weight-norm parametrisation.
LEGACY_KEYS = ((".weight_g", ".parametrizations.weight.original0"), (".weight_v", ".parametrizations.weight.original1"))


def _weight_files(path: Path) -> list[Path] | None:
    """The safetensors files of a checkpoint: the shards its index names, or the single model file."""
    import json

    index = path / "model.safetensors.index.json"
    if index.is_file():
        return [path / name for name in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    single = path / "model.safetensors"
    return [single] if single.is_file() else None


def _map_checkpoint(path: Path, cls, device: torch.device):
    """Build ``cls`` from the checkpoint with its tensors memory-mapped from the safetensors files (on CPU:
    no copy at all, pages are read when first used) or read straight onto ``device``: the module skeleton
    is created on the meta device, the file's tensors are assigned in place of its parameters, and only
    the non-persistent buffers (EnCodec's conv geometry, the sinusoidal positions) are computed, the way
    transformers' own initialisation computes them.

    Mapped pages are page cache: several processes serving the same checkpoint share them, and the kernel
    may drop idle ones under memory pressure (to be read again from disk when next used). Copying them
    into process memory was tried: on the bench machine it added 0.25 s (text encoder and codec) to 2 s
    (an fp32 decoder) to setup (bench/coldstart.py), so the mapping stays.

    Returns None, with the reason logged, when the checkpoint does not match the module exactly (other key
    names, missing tensors, other shapes): the caller then lets transformers' ``from_pretrained`` load it."""
    from safetensors import safe_open
    from transformers import AutoConfig, GenerationConfig, PreTrainedModel

    def fall_back(reason: str) -> None:
        log.info("loading %s with transformers: %s", path.name, reason)

    files = _weight_files(path)
    if files is None or not all(f.is_file() for f in files):
        return fall_back("no model.safetensors (or its shards)")
    config = AutoConfig.from_pretrained(str(path))
    with torch.device("meta"):
        model = cls(config)
    state: dict[str, torch.Tensor] = {}
    if device.type == "cuda":  # safetensors wants an explicit index
        target = f"cuda:{device.index if device.index is not None else torch.cuda.current_device()}"
    else:
        target = str(device)
    for file in files:
        with safe_open(str(file), framework="pt", device=target) as f:
            for key in f.keys():
                tensor = f.get_tensor(key)
                for old, new in LEGACY_KEYS:
                    key = key.replace(old, new)
                state[key] = tensor.float() if tensor.is_floating_point() else tensor
    tied = set(getattr(model, "all_tied_weights_keys", {}) or {})
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(state) - tied), sorted(set(state) - expected)
    if missing or unexpected:
        differences = [f"{len(keys)} {what}, e.g. {keys[0]}" for what, keys in
                       (("missing", missing), ("unexpected", unexpected)) if keys]
        return fall_back(f"its tensors differ from the module's ({'; '.join(differences)})")
    try:
        model.load_state_dict(state, strict=False, assign=True)
    except RuntimeError as exc:  # shape mismatches
        return fall_back(str(exc).splitlines()[0])
    # non-persistent buffers are not in the files: allocate them, then let the owning model compute them
    # (each by the nearest enclosing PreTrainedModel: EnCodec's init knows EnCodec's modules)
    pretrained = {name: m for name, m in model.named_modules() if isinstance(m, PreTrainedModel)}
    unset = {}
    for name, buffer in list(model.named_buffers()):
        if buffer.is_meta:
            module_name, _, buffer_name = name.rpartition(".")
            module = model.get_submodule(module_name)
            module._buffers[buffer_name] = torch.empty_like(buffer, device=device)
            unset[module_name] = module
    for module_name, module in unset.items():
        owner = max((n for n in pretrained if n == "" or f"{module_name}.".startswith(f"{n}.")), key=len)
        pretrained[owner]._init_weights(module)
    model.tie_weights()
    left = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        return fall_back(f"{len(left)} tensors were left unset (e.g. {left[0]})")
    if (path / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(str(path))
    else:
        model.generation_config = GenerationConfig.from_model_config(config)
    return model


def load(path: Path, device: torch.device):
    """Load model and tokenizer from a transformers-format checkpoint directory onto ``device``: mapped
    straight from its safetensors files when they match the module (``_map_checkpoint``), else through
    transformers' ``from_pretrained``."""
    import json

    from transformers import AutoTokenizer, MusicgenForConditionalGeneration, MusicgenMelodyForConditionalGeneration

    from transformers.utils import logging as hf_logging

    kind = json.loads((path / "config.json").read_text()).get("model_type")
    classes = {"musicgen": MusicgenForConditionalGeneration, "musicgen_melody": MusicgenMelodyForConditionalGeneration}
    if kind not in classes:
        raise MusicGenError(f"{path} holds a {kind!r} checkpoint, not a MusicGen one (musicgen or musicgen_melody).")
    # MusicGen configs put pad/bos at 2048, one past the codebook, which transformers warns about on every
    # load; that and the per-tensor progress bar would only clutter the prediction logs.
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        model = _map_checkpoint(path, classes[kind], device)
        if model is None:
            model = classes[kind].from_pretrained(str(path), dtype=torch.float32, device_map=None).to(device)
        model.requires_grad_(False).eval()  # inference only
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()
    return model, tokenizer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m musicgen.weights", description="Download a MusicGen checkpoint.")
    parser.add_argument("model", nargs="?", default=model_id(), help=f"Hub repo id (default {model_id()})")
    parser.add_argument("--dir", type=Path, default=None, help="target directory (default weights/<name>)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    target = args.dir or weights_dir(args.model)
    try:
        download(args.model, target)
    except Exception as exc:
        print(f"error: could not download {args.model} into {target}: {exc}", file=sys.stderr)
        return 1
    print(target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
