"""Loading a transformers-format MusicGen checkpoint directory: mapped straight from its safetensors files when
they match the modules exactly, else through transformers' ``from_pretrained``."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch

from musicgen.engine import layout
from musicgen.errors import MusicGenError

log = logging.getLogger(__name__)

# Keys that checkpoints saved by older transformers versions (the public Hub repos among them) spell
# differently from the current modules: EnCodec's weight-norm parametrisation.
LEGACY_KEYS = ((".weight_g", ".parametrizations.weight.original0"), (".weight_v", ".parametrizations.weight.original1"))


def _weight_files(path: Path, cache: Path | None) -> list[Path]:
    """The weight files to map: the checkpoint's safetensors, else its ``.bin`` files converted once to
    ``model.safetensors`` in the conversion cache ``cache`` (``layout.converted_path``: later starts map it;
    nothing is ever written into the checkpoint's own directory), else — without a cache, or one that cannot
    be written — the ``.bin`` files themselves, read with ``torch.load(weights_only=True, mmap=True)``."""
    files = layout.weight_files(path)
    if cache is not None and layout.is_bin(files) and all(f.is_file() for f in files):
        target = layout.converted_path(path, files, cache)
        if target.is_file():
            return [target]
        try:
            return [layout.convert_bin(path, target)]
        except OSError as exc:
            log.info("reading %s without converting it (%s)", ", ".join(f.name for f in files), exc)
    return files


def _tensors(file: Path, where: str):
    """(name, tensor) for every tensor of a weight file, read onto device ``where``."""
    if file.suffix == ".bin":
        for key, tensor in layout.read_bin(file).items():
            yield key, tensor.to(where)
        return
    from safetensors import safe_open

    with safe_open(str(file), framework="pt", device=where) as f:
        for key in f.keys():
            yield key, f.get_tensor(key)


def _place(name: str, device: torch.device, decoder_device: torch.device) -> torch.device:
    """Where the tensor ``name`` of the model goes: the decoder's onto ``decoder_device``, the rest onto
    ``device``."""
    return decoder_device if name.startswith("decoder.") else device


def _map_checkpoint(path: Path, cls, device: torch.device, decoder_device: torch.device, cache: Path | None):
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
    from transformers import AutoConfig, GenerationConfig, PreTrainedModel

    def fall_back(reason: str) -> None:
        log.info("loading %s with transformers: %s", path.name, reason)

    files = _weight_files(path, cache)
    if not files or not all(f.is_file() for f in files):
        return fall_back("no model.safetensors (or its shards)")
    started = time.monotonic()
    config = AutoConfig.from_pretrained(str(path))
    with torch.device("meta"):
        model = cls(config)
    state: dict[str, torch.Tensor] = {}

    def target(where: torch.device) -> str:  # safetensors wants an explicit CUDA index
        if where.type == "cuda":
            return f"cuda:{where.index if where.index is not None else torch.cuda.current_device()}"
        return str(where)

    # the files may also hold non-persistent buffers (the public repos hold the decoder's sinusoidal
    # positions, embed_positions.weights): those are computed below, never read
    computed = {f"{name}.{buffer}".lstrip(".") for name, module in model.named_modules()
                for buffer in module._non_persistent_buffers_set}
    for file in files:
        for where in {device, decoder_device}:
            for key, tensor in _tensors(file, target(where)):
                name = key
                for old, new in LEGACY_KEYS:
                    name = name.replace(old, new)
                if name in computed or _place(name, device, decoder_device) != where:
                    continue
                state[name] = tensor.float() if tensor.is_floating_point() else tensor
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
            module._buffers[buffer_name] = torch.empty_like(buffer, device=_place(name, device, decoder_device))
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
    log.info("mapped %s from %s in %.2f s", path.name, ", ".join(f.name for f in files), time.monotonic() - started)
    return model


def load(path: Path, device: torch.device, decoder_device: torch.device | None = None, cache: Path | None = None):
    """Load model and tokenizer from a transformers-format checkpoint directory onto ``device``: mapped
    straight from its safetensors files when they match the module (``_map_checkpoint``), else through
    transformers' ``from_pretrained``. A ``.bin`` checkpoint is converted once into ``cache`` (the conversion
    cache, MUSICGEN_CACHE) and mapped from there; without ``cache`` its ``.bin`` files are read as they are.
    Nothing is written into ``path``. ``decoder_device`` (default ``device``) keeps the decoder's float32
    weights elsewhere — on the CPU, mapped, while the fast decoder converts them layer by layer on their way
    to the GPU, so the GPU never holds a float32 copy of the decoder."""
    decoder_device = decoder_device or device
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
        model = _map_checkpoint(path, classes[kind], device, decoder_device, cache)
        if model is None:
            model = classes[kind].from_pretrained(str(path), dtype=torch.float32, device_map=None)
            for name, child in model.named_children():
                child.to(_place(f"{name}.", device, decoder_device))
        model.requires_grad_(False).eval()  # inference only
        for module in model.audio_encoder.modules():  # cuDNN wants its LSTM weights in one block
            if isinstance(module, torch.nn.LSTM):
                module.flatten_parameters()
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()
    return model, tokenizer
