"""The peers a user would pick instead of this project, for the benchmarks: transformers' own MusicGen, as it
comes (fp32) and with the one-line speed-up a user would reach for on that device — on a CPU PyTorch's
dynamic int8 quantization of every ``nn.Linear`` of the decoder, on a GPU half precision."""

from __future__ import annotations

import torch


def peer_names(device: torch.device) -> list[str]:
    """The peers on ``device``, fp32 first."""
    return ["fp32", "int8 quantize_dynamic" if device.type == "cpu" else "fp16"]


def make_peer(model, name: str):
    """``model`` (a transformers MusicGen) turned into peer ``name``, in place (the benches run the fp32
    peer first and have no use for it afterwards; a copy of a 1.5 B decoder would not fit beside ours)."""
    if name == "fp32":
        return model
    if name == "int8 quantize_dynamic":
        # what PyTorch's quantization docs give as the one line for a CPU transformer: int8 weights, activations
        # quantized per call, fbgemm's kernels
        torch.ao.quantization.quantize_dynamic(model.decoder, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)
        return model
    if name == "fp16":
        return model.half()
    raise ValueError(f"unknown peer {name!r}")
