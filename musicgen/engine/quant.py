"""Reduced-precision linear layers for the decoder, and the CPU features that choose between their kernels.

int8 (CPU): symmetric weights, one scale per output channel; with PyTorch's quantized engine the activations
are quantized per call too (dynamic quantization: fbgemm/oneDNN's int8 GEMM, at memory speed), elsewhere the
kernel is weight-only. int4 (CPU): asymmetric groups of ``INT4_GROUP`` input channels, weight-only.
"""

from __future__ import annotations

import contextlib
import functools
import warnings

import torch
import torch.nn.functional as F

PRECISIONS = ("fp32", "bf16", "fp16", "int8", "int4")
INT4_GROUP = 128


@functools.cache
def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            return set(f.read().split())
    except OSError:
        return set()


def cpu_has_bf16() -> bool:
    """True on CPUs with native bf16 arithmetic (AVX512-BF16 or AMX); elsewhere bf16 is emulated, slowly."""
    return bool({"avx512_bf16", "amx_bf16"} & _cpu_flags())


def cpu_has_vnni() -> bool:
    """True on CPUs whose int8 dot products accumulate straight into int32 (AVX512-VNNI, AVX-VNNI, AMX):
    there the int8 kernel can use the activations' full 8 bits without saturating."""
    return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & _cpu_flags())


@contextlib.contextmanager
def one_thread():
    """Run this thread's torch CPU work on one core (PyTorch's OpenMP thread count is per thread). Some
    float32 kernels sum in an order that depends on the thread count (MKL's GEMM at a few odd row counts,
    measured), so work whose result must not depend on the machine's cores runs here, with its bytes then
    the same on any machine; it also keeps a second OpenMP team away from the decode loop's."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def int8_dynamic_available() -> bool:
    """True where PyTorch ships a quantized engine (fbgemm/oneDNN on x86, qnnpack on ARM) for the
    dynamically quantized int8 linear."""
    engine = torch.backends.quantized.engine
    return engine not in ("none", "", None) and hasattr(torch.ops.quantized, "linear_dynamic") and hasattr(
        torch, "_make_per_channel_quantized_tensor")


def compute_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The dtype activations (and float weights) use for ``precision`` on ``device``."""
    if precision in ("fp32", "bf16", "fp16"):
        return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    if precision == "int4":
        return torch.bfloat16  # the CPU int4 kernel takes bf16 activations
    if device.type != "cpu":
        return torch.float16
    if int8_dynamic_available():
        return torch.float32  # the quantized engine takes fp32 activations
    return torch.bfloat16 if cpu_has_bf16() else torch.float32  # int8 weight-only


# int8 quantization walks the weights in blocks of this many elements, so its temporaries stay small and
# are reused rather than allocated (and page-faulted) at the size of each matrix
QUANT_BLOCK = 1 << 20


def quantize_int8(parts: list[torch.Tensor], compute_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8 of the row-wise concatenation of ``parts`` (without building it):
    scale = max |w| / 127 per row, q = round(w / scale) in [-127, 127]."""
    rows, cols = sum(p.shape[0] for p in parts), parts[0].shape[1]
    q = torch.empty(rows, cols, dtype=torch.int8, device=parts[0].device)
    scale = torch.empty(rows, dtype=torch.float32, device=parts[0].device)
    step = max(1, QUANT_BLOCK // cols)
    buffer = torch.empty(min(step, rows), cols, dtype=torch.float32, device=parts[0].device)
    out = 0
    for part in parts:
        for start in range(0, part.shape[0], step):
            block = part[start : start + step].float()
            n = block.shape[0]
            tmp, s = buffer[:n], scale[out : out + n]
            torch.amax(torch.abs(block, out=tmp), dim=1, out=s)
            s.clamp_(min=1e-8).div_(127.0)
            torch.div(block, s[:, None], out=tmp).round_().clamp_(-127, 127)
            q[out : out + n].copy_(tmp)
            out += n
    return q, scale.to(compute_dtype)


_RANGE_MARKERS = (1.0, -1.0, 0.0, 0.0)  # appended to each activation row of the int8 engine (K + 4 channels)


def stack(parts: list[torch.Tensor], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The row-wise concatenation of ``parts`` in ``dtype`` on ``device``, converted before it moves (a
    single part already in place is returned as it is)."""
    converted = [p.to(dtype) for p in parts]
    return (converted[0] if len(converted) == 1 else torch.cat(converted, dim=0)).to(device).contiguous()


class Linear:
    """y = x @ W.T in the chosen precision, W the row-wise concatenation of ``parts`` (q/k/v, the codebook
    heads) or one matrix.

    int8 (CPU): symmetric weights, one scale per output channel. Where PyTorch has a quantized engine the
    activations are quantized too, per call and per row (dynamic quantization: fbgemm/oneDNN's int8 GEMM,
    which reads the weights at memory speed); elsewhere it is weight-only (activations in bf16 or fp32). int4 (CPU):
    asymmetric, a scale and offset per group of ``INT4_GROUP`` input channels, packed for PyTorch's CPU
    int4 kernel, weight-only with bf16 activations."""

    def __init__(self, parts: torch.Tensor | list[torch.Tensor], precision: str, compute_dtype: torch.dtype,
                 device: torch.device | None = None):
        """``device`` (default: the parts'): where the converted weight goes (float kinds; the CPU kernels
        stay on the CPU). The parts are converted before they move, so the device never holds a float32
        copy of a reduced-precision weight."""
        parts = [parts] if isinstance(parts, torch.Tensor) else list(parts)
        device = device or parts[0].device
        self.kind = precision if precision in ("int8", "int4") else "float"
        rows, cols = sum(p.shape[0] for p in parts), parts[0].shape[1]
        if self.kind == "int4" and (cols % 32 or rows % 8):
            self.kind = "int8"  # shapes the int4 kernel cannot take (tiny test models) stay int8
        if precision == "int8" and parts[0].device.type == "cpu" and int8_dynamic_available():
            self.kind = "int8-dynamic"
            q, scale = quantize_int8(parts, torch.float32)
            # four zero input channels carry each row's range markers (+1, -1), see __call__
            q = torch.cat([q, torch.zeros(rows, len(_RANGE_MARKERS), dtype=torch.int8)], dim=1)
            self.markers = torch.tensor(_RANGE_MARKERS)
            zero = torch.zeros(rows, dtype=torch.long)
            with warnings.catch_warnings():
                # PyTorch marks its quantized tensor types deprecated; they ship (and are pinned) in 2.13
                warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
                packed = torch._make_per_channel_quantized_tensor(q, scale.double(), zero, 0)
            self.weight = torch.ops.quantized.linear_prepack(packed, None)
            # without VNNI, u8 x s8 products are summed in pairs into int16: 7-bit activations keep that
            # from saturating
            self.reduce_range = not cpu_has_vnni()
        elif self.kind == "int8":
            self.weight, self.scale = quantize_int8(parts, compute_dtype)
        elif self.kind == "int4":
            w = torch.cat(parts, dim=0).float()
            n, k = w.shape
            self.group = min(INT4_GROUP, k)
            groups = w.reshape(-1, self.group)
            low, high = groups.amin(dim=1, keepdim=True), groups.amax(dim=1, keepdim=True)
            scale = (high - low).clamp(min=1e-6) / 15
            q = ((groups - low) / scale).round().clamp(0, 15).to(torch.int32).reshape(n, k)
            # the kernel computes (q - 8) * scale + zero, so zero = low + 8 * scale
            zero = low + 8 * scale
            self.weight = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 2)
            self.scale = (torch.cat([scale.reshape(n, -1, 1), zero.reshape(n, -1, 1)], dim=2)
                          .transpose(0, 1).contiguous().to(compute_dtype))
        else:
            self.weight = stack(parts, compute_dtype, device)

    def tensors(self) -> list[torch.Tensor]:
        """The tensors this layer reads (the int8-dynamic engine's packed weight is an opaque object)."""
        return [t for t in (self.weight, getattr(self, "scale", None)) if isinstance(t, torch.Tensor)]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "float":
            return F.linear(x, self.weight)
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        if self.kind == "int8-dynamic":
            # Per-row activation scales, so that a row's result never depends on the other rows of the batch
            # (requests decoded together give the bytes each gives alone): each row is divided by its own
            # largest magnitude and carries +1 and -1 in the zero-weight marker channels, so the engine's
            # per-tensor range is always [-1, 1]; int8 x int8 sums are exact integers, whatever the batch.
            rows, cols = flat.shape
            scaled = torch.empty(rows, cols + len(_RANGE_MARKERS), dtype=flat.dtype)
            scaled[:, cols:] = self.markers
            row_scale = torch.amax(flat.abs(), dim=1, keepdim=True).clamp_(min=1e-30)
            torch.div(flat, row_scale, out=scaled[:, :cols])
            y = torch.ops.quantized.linear_dynamic(scaled, self.weight, self.reduce_range).mul_(row_scale)
        elif self.kind == "int8":
            y = torch._weight_int8pack_mm(flat, self.weight, self.scale)
        else:
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(flat, self.weight, self.group, self.scale)
        return y.reshape(*shape[:-1], -1)
