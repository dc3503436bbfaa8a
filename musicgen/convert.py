"""Convert an audiocraft MusicGen checkpoint (e.g. from audiocraft training or a fine-tuner:
``state_dict.bin`` + ``compression_state_dict.bin``) into the transformers format the predictor loads.

    python -m musicgen.convert SRC DST --base weights/musicgen-melody

SRC is the directory holding ``state_dict.bin`` (the language model). An audiocraft checkpoint holds no
text encoder and fine-tuning keeps the 32 kHz EnCodec frozen, so the T5 encoder, tokenizer and codec come
from BASE: a transformers checkpoint of the same family (plain or melody, same size and channels) that the
model was fine-tuned from. DST must be new or empty (``--replace`` writes over what it holds). Key names are
mapped (``transformer.layers.N.linear1`` -> ``fc1``, ...), fused q/k/v projections are split, and every tensor's
shape is checked; anything unexpected is refused with one sentence. Files are read with
``torch.load(weights_only=True)``: no pickled code runs.
"""

from __future__ import annotations

import argparse
import logging
import re
import shutil
import sys
from pathlib import Path

import torch

from musicgen.errors import MusicGenError

log = logging.getLogger(__name__)

# audiocraft LM key (after "transformer.layers.N.") -> transformers decoder layer key
_LAYER_RENAMES = {
    "self_attn.out_proj.weight": "self_attn.out_proj.weight",
    "cross_attention.out_proj.weight": "encoder_attn.out_proj.weight",
    "linear1.weight": "fc1.weight",
    "linear2.weight": "fc2.weight",
    "norm1.weight": "self_attn_layer_norm.weight",
    "norm1.bias": "self_attn_layer_norm.bias",
    "norm_cross.weight": "encoder_attn_layer_norm.weight",
    "norm_cross.bias": "encoder_attn_layer_norm.bias",
    "norm2.weight": "final_layer_norm.weight",
    "norm2.bias": "final_layer_norm.bias",
}
_FUSED = {"self_attn.in_proj_weight": "self_attn", "cross_attention.in_proj_weight": "encoder_attn"}
_TOP_RENAMES = {
    "out_norm.weight": "decoder.model.decoder.layer_norm.weight",
    "out_norm.bias": "decoder.model.decoder.layer_norm.bias",
    "condition_provider.conditioners.description.output_proj.weight": "enc_to_dec_proj.weight",
    "condition_provider.conditioners.description.output_proj.bias": "enc_to_dec_proj.bias",
    "condition_provider.conditioners.self_wav.output_proj.weight": "audio_enc_to_dec_proj.weight",
    "condition_provider.conditioners.self_wav.output_proj.bias": "audio_enc_to_dec_proj.bias",
}
# state that has no counterpart: the T5 inside the conditioner, chroma filter banks, fuser bookkeeping
_IGNORED = re.compile(r"^(condition_provider\.conditioners\.\w+\.(t5|chroma|__).*|fuser\..*)")


def _load_lm_state(src: Path) -> dict[str, torch.Tensor]:
    path = src / "state_dict.bin" if src.is_dir() else src
    if not path.is_file():
        raise MusicGenError(f"No audiocraft state_dict.bin in {src}; give the directory that holds it.")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickled objects beyond tensors/containers/strings
        raise MusicGenError(f"{path} is not a plain audiocraft state dict ({type(exc).__name__}); refusing to unpickle it.") from None
    state = obj.get("best_state", obj) if isinstance(obj, dict) else None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict) or not any(k.startswith("transformer.layers.") for k in state):
        raise MusicGenError(f"{path} does not hold an audiocraft MusicGen language model (no transformer.layers.* weights).")
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def map_state_dict(state: dict[str, torch.Tensor], hidden: int) -> dict[str, torch.Tensor]:
    """audiocraft LM state dict -> MusicgenForConditionalGeneration / MusicgenMelodyForConditionalGeneration
    keys. Raises MusicGenError on keys it does not know."""
    out, unknown = {}, []
    prefix = "decoder.model.decoder."
    for key, value in state.items():
        if m := re.fullmatch(r"emb\.(\d+)\.weight", key):
            out[f"{prefix}embed_tokens.{m[1]}.weight"] = value
        elif m := re.fullmatch(r"linears\.(\d+)\.weight", key):
            out[f"decoder.lm_heads.{m[1]}.weight"] = value
        elif m := re.fullmatch(r"transformer\.layers\.(\d+)\.(.+)", key):
            layer, rest = m[1], m[2]
            base = f"{prefix}layers.{layer}."
            if rest in _FUSED:
                if value.shape[0] != 3 * hidden:
                    raise MusicGenError(f"{key} has shape {tuple(value.shape)}, expected ({3 * hidden}, {hidden}).")
                for name, part in zip(("q_proj", "k_proj", "v_proj"), value.split(hidden, dim=0)):
                    out[f"{base}{_FUSED[rest]}.{name}.weight"] = part
            elif rest in _LAYER_RENAMES:
                out[base + _LAYER_RENAMES[rest]] = value
            else:
                unknown.append(key)
        elif key in _TOP_RENAMES:
            out[_TOP_RENAMES[key]] = value
        elif not _IGNORED.match(key):
            unknown.append(key)
    if unknown:
        raise MusicGenError(f"Unexpected keys in the audiocraft checkpoint: {', '.join(sorted(unknown)[:5])}; "
                            "it is not a MusicGen language model this converter knows.")
    return out


def convert(src: Path, dst: Path, base: Path, replace: bool = False) -> Path:
    """Write a transformers-format checkpoint to ``dst``: BASE's text encoder, tokenizer and codec with the
    language model of the audiocraft checkpoint in ``src``. A ``dst`` that already holds files is refused, before
    anything is read or written, unless ``replace`` is given."""
    from musicgen.engine.layout import is_checkpoint
    from musicgen.engine.loading import load
    from musicgen.hub import holding

    holds = holding(dst)
    if holds is not None and not replace:
        raise MusicGenError(f"DST {dst} already holds {holds}: give a new or empty output directory, or pass "
                            "--replace to write the converted checkpoint over its files.")
    if not is_checkpoint(base):
        raise MusicGenError(f"--base {base} is not a transformers MusicGen checkpoint (config.json + safetensors or .bin weights).")
    model, tokenizer = load(base, torch.device("cpu"))
    mapped = map_state_dict(_load_lm_state(src), model.config.decoder.hidden_size)
    target = model.state_dict()
    missing = sorted(k for k in target if (k.startswith("decoder.") or "enc_to_dec_proj" in k) and k not in mapped
                     and "embed_positions" not in k)
    if missing:
        raise MusicGenError(f"The audiocraft checkpoint lacks weights the base model has ({', '.join(missing[:3])}); "
                            "is --base the same family (plain/melody, size, mono/stereo)?")
    for key, value in mapped.items():
        if key not in target:
            raise MusicGenError(f"The audiocraft checkpoint has {key}, which the base model lacks; "
                                "is --base the same family (plain/melody, size, mono/stereo)?")
        if tuple(target[key].shape) != tuple(value.shape):
            raise MusicGenError(f"{key} has shape {tuple(value.shape)} in the audiocraft checkpoint but "
                                f"{tuple(target[key].shape)} in the base model; they are different sizes.")
    model.load_state_dict(mapped, strict=False)
    if (src / "compression_state_dict.bin").is_file():
        log.info("compression_state_dict.bin: the codec is taken from the base checkpoint (fine-tuning keeps it frozen)")
    dst.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dst)
    tokenizer.save_pretrained(dst)
    for extra in ("preprocessor_config.json", "generation_config.json"):
        if (base / extra).is_file() and not (dst / extra).is_file():
            shutil.copy2(base / extra, dst / extra)
    return dst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m musicgen.convert", description=__doc__.splitlines()[0])
    parser.add_argument("src", type=Path, help="directory with audiocraft's state_dict.bin")
    parser.add_argument("dst", type=Path, help="output directory (transformers format)")
    parser.add_argument("--base", type=Path, required=True,
                        help="transformers checkpoint the model was fine-tuned from (text encoder, tokenizer, codec)")
    parser.add_argument("--replace", action="store_true",
                        help="write into DST even when it already holds files (those of the same names are "
                             "overwritten); without it such a DST is refused and left as it is")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        print(convert(args.src, args.dst, args.base, replace=args.replace))
    except MusicGenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
