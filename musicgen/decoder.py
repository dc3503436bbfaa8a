"""A fast MusicGen decoder: the checkpoint's weights in a lean module with a preallocated KV cache.

gpt-fast's recipe applied to MusicGen: the transformers decoder's weights are copied once into plain
tensors (q/k/v fused, the codebook heads stacked into one matrix, optionally bf16/fp16, int8 or int4), the self-attention cache is allocated once per window at its full length, the text
cross-attention keys/values are computed once at prefill, and each decode step is a handful of large
matmuls with no Python-side cache bookkeeping and no host synchronisation. The math is the same as
transformers' (pre-LayerNorm blocks, exact GELU, sinusoidal positions, sum of codebook embeddings); in fp32
it reproduces its logits up to float summation order.
"""

from __future__ import annotations

import functools
import warnings
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn.functional as F

PRECISIONS = ("fp32", "bf16", "fp16", "int8", "int4")
INT4_GROUP = 128
# the static step rounds the KV cache length and the text length up to these, so that the few shapes a
# deployment sees each get one compiled graph (and one CUDA graph)
STATIC_CACHE_BUCKET = 256
STATIC_TEXT_BUCKET = 64


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


class Linear:
    """y = x @ W.T in the chosen precision, W the row-wise concatenation of ``parts`` (q/k/v, the codebook
    heads) or one matrix.

    int8 (CPU): symmetric weights, one scale per output channel. Where PyTorch has a quantized engine the
    activations are quantized too, per call (dynamic quantization: fbgemm/oneDNN's int8 GEMM, which reads
    the weights at memory speed); elsewhere it is weight-only (activations in bf16 or fp32). int4 (CPU):
    asymmetric, a scale and offset per group of ``INT4_GROUP`` input channels, packed for PyTorch's CPU
    int4 kernel, weight-only with bf16 activations."""

    def __init__(self, parts: torch.Tensor | list[torch.Tensor], precision: str, compute_dtype: torch.dtype):
        parts = [parts] if isinstance(parts, torch.Tensor) else list(parts)
        self.kind = precision if precision in ("int8", "int4") else "float"
        rows, cols = sum(p.shape[0] for p in parts), parts[0].shape[1]
        if self.kind == "int4" and (cols % 32 or rows % 8):
            self.kind = "int8"  # shapes the int4 kernel cannot take (tiny test models) stay int8
        if precision == "int8" and parts[0].device.type == "cpu" and int8_dynamic_available():
            self.kind = "int8-dynamic"
            q, scale = quantize_int8(parts, torch.float32)
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
            weight = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
            self.weight = weight.to(compute_dtype).contiguous()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "float":
            return F.linear(x, self.weight)
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        if self.kind == "int8-dynamic":
            y = torch.ops.quantized.linear_dynamic(flat, self.weight, self.reduce_range)
        elif self.kind == "int8":
            y = torch._weight_int8pack_mm(flat, self.weight, self.scale)
        else:
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(flat, self.weight, self.group, self.scale)
        return y.reshape(*shape[:-1], -1)


class _Layer:
    def __init__(self, hf_layer, precision: str, dtype: torch.dtype, cross: bool):
        sa = hf_layer.self_attn
        self.ln1 = (hf_layer.self_attn_layer_norm.weight.to(dtype), hf_layer.self_attn_layer_norm.bias.to(dtype))
        self.qkv = Linear([sa.q_proj.weight, sa.k_proj.weight, sa.v_proj.weight], precision, dtype)
        self.o = Linear(sa.out_proj.weight, precision, dtype)
        self.cross = cross
        if cross:
            ca = hf_layer.encoder_attn
            self.ln_c = (hf_layer.encoder_attn_layer_norm.weight.to(dtype), hf_layer.encoder_attn_layer_norm.bias.to(dtype))
            self.q_c = Linear(ca.q_proj.weight, precision, dtype)
            self.kv_c = torch.cat([ca.k_proj.weight, ca.v_proj.weight], dim=0).to(dtype)  # used once per window
            self.o_c = Linear(ca.out_proj.weight, precision, dtype)
        self.ln2 = (hf_layer.final_layer_norm.weight.to(dtype), hf_layer.final_layer_norm.bias.to(dtype))
        self.fc1 = Linear(hf_layer.fc1.weight, precision, dtype)
        self.fc2 = Linear(hf_layer.fc2.weight, precision, dtype)
        # per-window state
        self.k_cache = self.v_cache = None
        self.k_c = self.v_c = None


def _build_layers(hf_layers, precision: str, dtype: torch.dtype, cross: bool) -> list[_Layer]:
    """Convert the layers on as many threads as PyTorch uses: packing int8 weights for the quantized
    engine runs on one core per matrix, so this shortens setup on multi-core machines."""

    def build(hf_layer):
        with torch.no_grad():  # grad mode is per thread
            return _Layer(hf_layer, precision, dtype, cross)

    with ThreadPoolExecutor(max(1, torch.get_num_threads())) as pool:
        return list(pool.map(build, hf_layers))


class FastDecoder:
    """Prefill + one-column decode steps for a MusicGen (or MusicGen-Melody) decoder."""

    def __init__(self, hf_decoder, precision: str = "fp32", compile: bool = False, static: bool | None = None):
        """``compile``: run the one-column decode step through ``torch.compile`` (fuses the small ops
        between the matmuls; the first steps pay the compile time, minutes on a small CPU).

        ``static`` (default: when compiling on CUDA): the one-column step keeps every shape fixed for a
        window — the position is a device tensor, the cache is written with ``index_copy_`` and attention
        reads the whole (bucketed) cache under a mask — so the compiled step can be captured as a CUDA
        graph (``mode="reduce-overhead"``) and replayed without per-step launch overhead. On CPU the
        dynamic step is cheaper (it reads only the filled part of the cache)."""
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        cfg = hf_decoder.config
        device = next(hf_decoder.parameters()).device
        self.precision = precision
        self.dtype = compute_dtype(precision, device)
        # attention state: CPUs run fp32 batched matmuls several times faster than bf16 ones, and at long
        # contexts reading the cache dominates a step, so keep it (and attention) in fp32 there
        self.cache_dtype = torch.float32 if device.type == "cpu" else self.dtype
        self.device = device
        inner = hf_decoder.model.decoder
        self.num_codebooks = cfg.num_codebooks
        self.hidden = cfg.hidden_size
        self.heads = cfg.num_attention_heads
        self.head_dim = self.hidden // self.heads
        self.eps = inner.layer_norm.eps
        vocab = inner.embed_tokens[0].weight.shape[0]
        # one table for all codebooks: row k * vocab + id
        self.embed = torch.cat([e.weight for e in inner.embed_tokens], dim=0).to(self.dtype)
        self.offsets = (torch.arange(self.num_codebooks, device=device) * vocab)[None, :, None]
        self._positions_module = inner.embed_positions
        self.cross = hasattr(inner.layers[0], "encoder_attn")
        with torch.no_grad():
            self.layers = _build_layers(inner.layers, precision, self.dtype, self.cross)
            self.final_ln = (inner.layer_norm.weight.to(self.dtype), inner.layer_norm.bias.to(self.dtype))
            self.heads_out = Linear([h.weight for h in hf_decoder.lm_heads], precision, self.dtype)  # (K * V, H)
        self.vocab_out = hf_decoder.lm_heads[0].weight.shape[0]
        self.pos = 0
        self._cross_mask = None
        self.static = compile and device.type == "cuda" if static is None else static
        self._pos_t = torch.zeros(1, dtype=torch.long, device=device)
        self._cache_positions = None
        if self.static:
            mode = "reduce-overhead" if device.type == "cuda" else None  # CUDA graphs
            self._step_static = torch.compile(self._run_static, mode=mode, dynamic=False) if compile else self._run_static
        self._step = torch.compile(self._run, dynamic=True) if compile and not self.static else self._run

    def disable_compile(self) -> None:
        """Run the eager step functions from now on."""
        self._step = self._run
        if self.static:
            self._step_static = self._run_static

    # ---------------------------------------------------------------- pieces
    def _positions(self, start: int, length: int) -> torch.Tensor:
        table = self._positions_module.weights
        if start + length > table.shape[0]:
            self._positions_module.make_weights(start + length, self.hidden)
            table = self._positions_module.weights
        return table[start : start + length].to(self.dtype)

    def _ln(self, x, wb):
        return F.layer_norm(x, (self.hidden,), wb[0], wb[1], self.eps)

    def _split_heads(self, x):  # (B, L, H) -> (B, heads, L, D)
        return x.view(x.shape[0], x.shape[1], self.heads, self.head_dim).transpose(1, 2)

    def _merge_heads(self, x):  # (B, heads, L, D) -> (B, L, H)
        return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], self.hidden)

    def _attend_one(self, q, keys, values, mask=None):
        """Attention for a single query position: two small matmuls, cheaper than a fused kernel's setup
        at decode time (softmax in float32). Scores are computed as keys @ q^T so that the cached keys are
        read in place rather than copied into a transposed layout every step."""
        scores = torch.matmul(keys, q.transpose(-1, -2)).transpose(-1, -2).float() * (self.head_dim**-0.5)
        if mask is not None:
            scores = scores + mask
        return torch.matmul(scores.softmax(dim=-1).to(values.dtype), values)

    # ---------------------------------------------------------------- per-window setup
    def start(self, rows: int, max_len: int, encoder_states: torch.Tensor | None = None,
              encoder_mask: torch.Tensor | None = None) -> None:
        """Allocate the KV cache for ``rows`` batch rows and ``max_len`` positions; for cross-attention
        checkpoints, precompute the text keys/values."""
        if self.static:
            max_len = -(-max_len // STATIC_CACHE_BUCKET) * STATIC_CACHE_BUCKET
        shape = (rows, self.heads, max_len, self.head_dim)
        for layer in self.layers:
            if layer.k_cache is None or layer.k_cache.shape != shape:
                layer.k_cache = torch.zeros(shape, dtype=self.cache_dtype, device=self.device)
                layer.v_cache = torch.zeros(shape, dtype=self.cache_dtype, device=self.device)
                if self.static:  # the same storage every step: what a CUDA graph replays
                    torch._dynamo.mark_static_address(layer.k_cache)
                    torch._dynamo.mark_static_address(layer.v_cache)
            else:
                layer.k_cache.zero_()  # a static step reads the whole cache (masked): no stale state
                layer.v_cache.zero_()
        self.pos = 0
        if self.static:
            self._pos_table = self._positions(0, max_len)
            self._cache_positions = torch.arange(max_len, device=self.device)
        if self.cross:
            if self.static:  # pad the text to its bucket; padded positions are masked out
                pad = -encoder_states.shape[1] % STATIC_TEXT_BUCKET
                encoder_states = F.pad(encoder_states, (0, 0, 0, pad))
                encoder_mask = F.pad(encoder_mask, (0, pad))
            enc = encoder_states.to(self.dtype)
            for layer in self.layers:
                kv = F.linear(enc, layer.kv_c).to(self.cache_dtype)
                layer.k_c = self._split_heads(kv[..., : self.hidden])
                layer.v_c = self._split_heads(kv[..., self.hidden :])
            mask = encoder_mask.bool()[:, None, None, :]  # (B, 1, 1, Le)
            # fully masked rows (the null condition) attend uniformly over zero states, as transformers does
            self._cross_mask = torch.where(mask, 0.0, torch.finfo(self.cache_dtype).min).to(self.cache_dtype)

    # ---------------------------------------------------------------- forward
    def forward(self, ids: torch.Tensor, prefix: torch.Tensor | None = None) -> torch.Tensor:
        """Tokens ``ids`` (rows, K, L) at the next L positions (after an optional embedded ``prefix``
        (rows, Lp, H), melody checkpoints' conditioning); returns the logits of the last position,
        (rows, K, vocab), float32."""
        one_column = prefix is None and ids.shape[-1] == 1
        if one_column and self.static:
            self._pos_t.fill_(self.pos)
            logits = self._step_static(ids, self._pos_t)
            if logits.device.type == "cuda":
                logits = logits.clone()  # a replayed CUDA graph reuses its output buffer
        else:
            logits = (self._step if one_column else self._run)(ids, prefix, self.pos)
        self.pos += ids.shape[-1] + (0 if prefix is None else prefix.shape[1])
        return logits

    def _run_static(self, ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return self._run(ids, None, None, pos)

    def _run(self, ids: torch.Tensor, prefix: torch.Tensor | None, start: int | None,
             pos: torch.Tensor | None = None) -> torch.Tensor:
        """Positions ``start``.. for ``ids`` (after ``prefix``), or, for the static one-column step, the
        position held by the device tensor ``pos``."""
        x = self.embed[(ids + self.offsets)].sum(dim=1)  # (rows, L, H)
        if prefix is not None:
            x = torch.cat([prefix.to(self.dtype), x], dim=1)
        length = x.shape[1]
        if pos is not None:
            x = x + self._pos_table.index_select(0, pos)
            # the filled part of the cache, as an additive mask over all of it
            self_mask = torch.where(self._cache_positions <= pos, 0.0, torch.finfo(self.cache_dtype).min)
            self_mask = self_mask.to(self.cache_dtype)
        else:
            x = x + self._positions(start, length)
            end = start + length
        causal = length > 1
        for layer in self.layers:
            h = self._ln(x, layer.ln1)
            qkv = layer.qkv(h)
            q, k, v = qkv.split(self.hidden, dim=-1)
            q, k, v = self._split_heads(q).to(self.cache_dtype), self._split_heads(k), self._split_heads(v)
            if pos is not None:  # static step: write at the position tensor, read the whole cache, masked
                layer.k_cache.index_copy_(2, pos, k.to(self.cache_dtype))
                layer.v_cache.index_copy_(2, pos, v.to(self.cache_dtype))
                attn = self._attend_one(q, layer.k_cache, layer.v_cache, self_mask)
            else:
                layer.k_cache[:, :, start:end] = k
                layer.v_cache[:, :, start:end] = v
                keys, values = layer.k_cache[:, :, :end], layer.v_cache[:, :, :end]
                if not causal:
                    attn = self._attend_one(q, keys, values)
                elif start > 0:
                    mask = torch.ones(length, end, dtype=torch.bool, device=x.device).tril(diagonal=start)
                    attn = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
                else:
                    attn = F.scaled_dot_product_attention(q, keys, values, is_causal=True)
            x = x + layer.o(self._merge_heads(attn).to(self.dtype))
            if self.cross:
                h = self._ln(x, layer.ln_c)
                q = self._split_heads(layer.q_c(h)).to(self.cache_dtype)
                if causal:
                    attn = F.scaled_dot_product_attention(q, layer.k_c, layer.v_c, attn_mask=self._cross_mask)
                else:
                    attn = self._attend_one(q, layer.k_c, layer.v_c, self._cross_mask)
                x = x + layer.o_c(self._merge_heads(attn).to(self.dtype))
            h = self._ln(x, layer.ln2)
            x = x + layer.fc2(F.gelu(layer.fc1(h)))
        last = self._ln(x[:, -1], self.final_ln)
        return self.heads_out(last).float().view(x.shape[0], self.num_codebooks, self.vocab_out)
