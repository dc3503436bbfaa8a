"""A fast MusicGen decoder: the checkpoint's weights in a lean module with a preallocated KV cache.

gpt-fast's recipe applied to MusicGen: the transformers decoder's weights are copied once into plain
tensors (q/k/v fused, the codebook heads stacked into one matrix, optionally bf16/fp16, int8 or int4: see
``musicgen.engine.quant``), the self-attention cache (``musicgen.engine.kv_cache``) is allocated once per window shape, the
text cross-attention keys/values are computed once per window, and there are two entry points over one
forward: ``prefill`` (the prompt, after an optional embedded prefix) and ``step`` (one column of several
segments, each reading the filled part of its own cache rows: exact whoever else decodes, cheapest on a CPU).
A third entry, ``fixed_step``, is the form CUDA graphs capture (``musicgen.engine.graphs``): one column for every row
at once, each row at its own position (a device tensor), shapes fixed by the caller's buckets, no host sync.

The math is the same as transformers' (pre-LayerNorm blocks, exact GELU, sinusoidal positions, sum of
codebook embeddings); in fp32 it reproduces its logits up to float summation order.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from musicgen.engine import row_attention
from musicgen.engine.kv_cache import CrossKV, KVCache
from musicgen.engine.quant import PRECISIONS, Linear, compute_dtype, one_thread, stack

@dataclass(frozen=True)
class Segment:
    """One sequence of a decoder call (a request's rows: conditional, and unconditional with guidance), all
    its rows at the same positions. Several segments decode together, each at its own place."""

    rows: slice  # its rows of the KV cache
    pos: torch.Tensor  # (L,) the positions of its L tokens
    kv_len: int  # keys to read: its positions below kv_len
    text: list[CrossKV] | None = None  # cross-attention checkpoints: its text's keys/values, per layer

    @property
    def size(self) -> int:
        return self.rows.stop - self.rows.start


def norm_weights(ln: torch.nn.LayerNorm, dtype: torch.dtype,
                 device: torch.device) -> tuple[torch.Tensor, torch.Tensor, float]:
    return ln.weight.to(dtype).to(device), ln.bias.to(dtype).to(device), ln.eps


def layer_norm(x: torch.Tensor, norm: tuple[torch.Tensor, torch.Tensor, float]) -> torch.Tensor:
    weight, bias, eps = norm
    return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)


class Attention:
    """Multi-head attention arithmetic shared by the self- and cross-attention of every layer."""

    def __init__(self, hidden: int, heads: int, state_dtype: torch.dtype, fused: bool = False):
        """``fused``: every call takes PyTorch's fused kernel (on CUDA: its softmax runs in float32 whatever
        the state dtype, and one kernel beats two matmuls)."""
        self.hidden, self.heads, self.head_dim = hidden, heads, hidden // heads
        self.state_dtype = state_dtype  # keys, values and scores
        self.scale = self.head_dim**-0.5
        self.fused = fused

    def split(self, x: torch.Tensor) -> torch.Tensor:  # (B, L, H) -> (B, heads, L, D)
        return x.view(x.shape[0], x.shape[1], self.heads, self.head_dim).transpose(1, 2)

    def merge(self, x: torch.Tensor) -> torch.Tensor:  # (B, heads, L, D) -> (B, L, H)
        return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], self.hidden)

    def __call__(self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                 mask: torch.Tensor | None) -> torch.Tensor:
        """softmax(q k^T / sqrt(D) + mask) v, with an additive float mask. One query position takes two
        small matmuls (cheaper than a fused kernel's set-up at decode time; scores as keys @ q^T so the
        cached keys are read in place, softmax in float32); several take the fused kernel."""
        if q.shape[2] > 1 or self.fused:
            return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
        # q is scaled before the product (as transformers and audiocraft do): fp16 scores cannot overflow
        scores = torch.matmul(keys, (q * self.scale).transpose(-1, -2)).transpose(-1, -2).float()
        if mask is not None:
            scores = scores + mask
        return torch.matmul(scores.softmax(dim=-1).to(values.dtype), values)


class Layer:
    """One pre-LayerNorm decoder block: self-attention, cross-attention to the text (plain checkpoints;
    melody checkpoints read their conditioning as a prefix instead), MLP."""

    def __init__(self, hf_layer, precision: str, dtype: torch.dtype, attention: Attention, cross: bool,
                 residual_dtype: torch.dtype, device: torch.device):
        """``dtype``: the matmuls'; ``residual_dtype``: the residual stream's and the layer norms' (float32
        under fp16, as audiocraft's autocast keeps it, so the stream cannot overflow). The weights are
        converted where they are and then moved to ``device``."""
        self.attention = attention
        self.residual_cast = residual_dtype != dtype
        sa = hf_layer.self_attn
        self.ln_self = norm_weights(hf_layer.self_attn_layer_norm, residual_dtype, device)
        self.qkv = Linear([sa.q_proj.weight, sa.k_proj.weight, sa.v_proj.weight], precision, dtype, device)
        self.out = Linear(sa.out_proj.weight, precision, dtype, device)
        if cross:
            ca = hf_layer.encoder_attn
            self.ln_cross = norm_weights(hf_layer.encoder_attn_layer_norm, residual_dtype, device)
            self.q_cross = Linear(ca.q_proj.weight, precision, dtype, device)
            self.kv_cross = stack([ca.k_proj.weight, ca.v_proj.weight], dtype, device)  # used once per window
            self.out_cross = Linear(ca.out_proj.weight, precision, dtype, device)
        self.ln_mlp = norm_weights(hf_layer.final_layer_norm, residual_dtype, device)
        self.fc1 = Linear(hf_layer.fc1.weight, precision, dtype, device)
        self.fc2 = Linear(hf_layer.fc2.weight, precision, dtype, device)
        self.dtype = dtype


    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries (in the state dtype), keys and values of ``x``, each (rows, heads, L, D)."""
        att = self.attention
        q, k, v = self.qkv(self._norm(x, self.ln_self)).split(att.hidden, dim=-1)
        return att.split(q).to(att.state_dtype), att.split(k), att.split(v)

    def self_attention(self, x: torch.Tensor, cache: KVCache, segments: list[Segment],
                       masks: list[torch.Tensor | None], rows: torch.Tensor | None, pos: torch.Tensor | None) -> torch.Tensor:
        """``x`` holds the segments' rows in order (``rows``/``pos``: their cache rows and positions, for
        several segments). Each segment attends to its own keys, exactly as it would alone."""
        att = self.attention
        q, k, v = self._qkv(x)
        if rows is None:
            keys, values = cache.update(segments[0].pos, k, v, segments[0].rows)
        else:  # rows past the segments' are padding: nothing to store, nothing to attend to
            keys, values = cache.update(pos, k[: rows.numel()], v[: rows.numel()], rows)
        out = self._per_segment(q, segments, lambda seg, i, q_seg: att(
            q_seg, keys[seg.rows, :, : seg.kv_len], values[seg.rows, :, : seg.kv_len], masks[i]))
        return self.out(att.merge(out).to(self.dtype))

    def fixed(self, x: torch.Tensor, cache: KVCache, pos: torch.Tensor, kv_len: int,
              mask: torch.Tensor | row_attention.BlockMask, text: CrossKV | None, text_len: int) -> torch.Tensor:
        """One column for every row of ``x`` (R, 1, H) at once (``fixed_step``): the first ``pos.shape[0]``
        rows are the cache's rows at positions ``pos``, each attending to its first ``kv_len`` keys under
        ``mask`` (an additive mask, or a block mask: each row reads only its own blocks) and to the first
        ``text_len`` positions of its own row of ``text``; the rest are idle rows (their attention is zero). The
        matmuls always see all R rows."""
        att = self.attention
        active = pos.shape[0]
        q, k, v = self._qkv(x)
        rows = torch.arange(active, device=x.device)
        cache.update(pos[:, None], k[:active], v[:active], rows)
        keys, values = cache.k[:active, :, :kv_len], cache.v[:active, :, :kv_len]
        if isinstance(mask, torch.Tensor):
            out = att(q[:active], keys, values, mask)
        else:
            out = row_attention.attend(q[:active], keys, values, mask)
        x = x + self.out(att.merge(_pad_rows(out, x.shape[0])).to(self.dtype))
        if text is not None:
            q = att.split(self.q_cross(self._norm(x, self.ln_cross))).to(att.state_dtype)
            out = att(q[:active], text.k[:active, :, :text_len], text.v[:active, :, :text_len],
                      text.mask[:active, ..., :text_len])
            x = x + self.out_cross(att.merge(_pad_rows(out, x.shape[0])).to(self.dtype))
        return x + self.mlp(x)

    @staticmethod
    def _per_segment(q: torch.Tensor, segments: list[Segment], attend) -> torch.Tensor:
        """``attend(segment, index, its queries)`` for each segment, the results in the segments' order;
        zeros for padding rows after them."""
        if len(segments) == 1 and segments[0].size == q.shape[0]:
            return attend(segments[0], 0, q)
        outs, start = [], 0
        for i, seg in enumerate(segments):
            outs.append(attend(seg, i, q[start : start + seg.size]))
            start += seg.size
        if start < q.shape[0]:
            outs.append(torch.zeros_like(q[start:]))
        return torch.cat(outs)

    def _norm(self, x: torch.Tensor, norm) -> torch.Tensor:
        """Layer norm of the residual stream, in the matmuls' dtype."""
        h = layer_norm(x, norm)
        return h.to(self.dtype) if self.residual_cast else h

    def tensors(self) -> list[torch.Tensor]:
        """Every weight the layer reads at a decode step."""
        norms = [t for ln in (self.ln_self, getattr(self, "ln_cross", None), self.ln_mlp) if ln for t in ln[:2]]
        linears = [self.qkv, self.out, getattr(self, "q_cross", None), getattr(self, "out_cross", None),
                   self.fc1, self.fc2]
        return norms + [t for linear in linears if linear is not None for t in linear.tensors()]

    def text_kv(self, states: torch.Tensor, mask: torch.Tensor) -> CrossKV:
        """Cross-attention keys/values of the projected text ``states`` (rows, Lt, H); ``mask`` is additive."""
        att = self.attention
        kv = F.linear(states.to(self.dtype), self.kv_cross).to(att.state_dtype)
        return CrossKV(att.split(kv[..., : att.hidden]), att.split(kv[..., att.hidden :]), mask)

    def cross_attention(self, x: torch.Tensor, segments: list[Segment], index: int) -> torch.Tensor:
        """Each segment attends to its own text (layer ``index``'s keys/values)."""
        att = self.attention
        q = att.split(self.q_cross(self._norm(x, self.ln_cross))).to(att.state_dtype)
        out = self._per_segment(q, segments, lambda seg, i, q_seg: att(
            q_seg, seg.text[index].k, seg.text[index].v, seg.text[index].mask))
        return self.out_cross(att.merge(out).to(self.dtype))

    def mlp(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(self._norm(x, self.ln_mlp))))

    def __call__(self, x, cache, segments, masks, rows, pos, index: int):
        x = x + self.self_attention(x, cache, segments, masks, rows, pos)
        if segments[0].text is not None:
            x = x + self.cross_attention(x, segments, index)
        return x + self.mlp(x)


def _pad_rows(x: torch.Tensor, rows: int) -> torch.Tensor:
    """``x`` with zero rows appended up to ``rows`` (written without a branch on the sizes, so that a
    compiled step keeps one graph whether rows are idle or not)."""
    out = x.new_zeros(rows, *x.shape[1:])
    out[: x.shape[0]] = x
    return out


def _build_layers(hf_layers, precision: str, dtype: torch.dtype, attention: Attention, cross: bool,
                  residual_dtype: torch.dtype, device: torch.device) -> list[Layer]:
    """Convert the layers on as many threads as PyTorch uses: packing int8 weights for the quantized
    engine runs on one core per matrix, so this shortens setup on multi-core machines."""

    def build(hf_layer):
        with torch.no_grad():  # grad mode is per thread
            return Layer(hf_layer, precision, dtype, attention, cross, residual_dtype, device)

    with ThreadPoolExecutor(max(1, torch.get_num_threads())) as pool:
        return list(pool.map(build, hf_layers))


class FastDecoder:
    """Prefill and one-column decode steps for a MusicGen (or MusicGen-Melody) decoder."""

    def __init__(self, hf_decoder, precision: str = "fp32", compile: bool = False,
                 compile_backend: str | Callable = "inductor", device: torch.device | None = None):
        """``compile``: run the segments' one-column step through ``torch.compile`` with symbolic lengths
        (fuses the small ops between the matmuls; the first steps pay the compile time, minutes on a small
        CPU), with ``compile_backend``. The fixed-shape step has its own compiled form (``musicgen.engine.graphs``).

        ``device`` (default: the transformers decoder's): where the decoder runs. The transformers decoder
        may stay on the CPU (mapped from its file): each weight is converted there and moved on, layer by
        layer, so the device never holds the float32 decoder. int8 and int4 are CPU kernels: refused
        elsewhere."""
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        device = device or next(hf_decoder.parameters()).device
        if precision in ("int8", "int4") and device.type != "cpu":
            raise ValueError(f"{precision} decoding runs on the CPU only; on {device.type} use bf16 or fp16.")
        cfg = hf_decoder.config
        self.device = device
        self.dtype = compute_dtype(precision, device)
        # attention state: CPUs run fp32 batched matmuls several times faster than bf16 ones, and at long
        # contexts reading the cache dominates a step, so keep it (and attention) in fp32 there; on CUDA the
        # state is in the compute dtype and the fused attention kernel keeps its softmax in float32
        self.state_dtype = torch.float32 if device.type == "cpu" else self.dtype
        # the residual stream, the layer norms and the codebook heads' output stay float32 under fp16 and
        # bf16 (as audiocraft's autocast keeps them): a 48-layer stream rounded to 8 bits of mantissa after
        # every block drifts from fp32 several times more (bench/decode.py's KL column)
        reduced = self.dtype in (torch.float16, torch.bfloat16) and precision in ("bf16", "fp16")
        self.residual_dtype = torch.float32 if reduced else self.dtype
        heads_precision, heads_dtype = ("fp32", torch.float32) if reduced else (precision, self.dtype)
        inner = hf_decoder.model.decoder
        self.num_codebooks = cfg.num_codebooks
        self.hidden = cfg.hidden_size
        self.attention = Attention(self.hidden, cfg.num_attention_heads, self.state_dtype, fused=device.type == "cuda")
        vocab = inner.embed_tokens[0].weight.shape[0]
        # one table for all codebooks: row k * vocab + id
        self.embed_table = stack([e.weight for e in inner.embed_tokens], self.dtype, device)
        self.offsets = (torch.arange(self.num_codebooks, device=device) * vocab)[None, :, None]
        self._positions = inner.embed_positions  # transformers' sinusoidal table, grown on demand
        self.cross = hasattr(inner.layers[0], "encoder_attn")  # plain checkpoints; melody ones read a prefix
        with torch.no_grad():
            self.layers = _build_layers(inner.layers, precision, self.dtype, self.attention, self.cross,
                                        self.residual_dtype, device)
            self.final_ln = norm_weights(inner.layer_norm, self.residual_dtype, device)
            self.heads_dtype = heads_dtype
            self.heads_out = Linear([h.weight for h in hf_decoder.lm_heads], heads_precision, heads_dtype, device)
        self.vocab_out = hf_decoder.lm_heads[0].weight.shape[0]
        self.caches: list[KVCache] = []
        self._shared_prefix: torch.Tensor | None = None  # (1, P, H) positions many prefills begin with
        self._shared_kv: list[KVCache] | None = None  # their keys/values, computed on first use
        self._position_table: torch.Tensor | None = None
        self._key_positions: torch.Tensor | None = None
        self.compile_backend = compile_backend
        if compile:
            self._step = torch.compile(self._forward, dynamic=True, backend=compile_backend)
        else:
            self._step = self._forward

    def weights(self) -> list[torch.Tensor]:
        """Every weight tensor a decode step reads."""
        return [t for layer in self.layers for t in layer.tensors()] + [*self.final_ln[:2], *self.heads_out.tensors()]

    @property
    def compiled(self) -> bool:
        return self._step != self._forward  # bound methods compare by function and instance

    def disable_compile(self) -> None:
        """Run the eager step from now on."""
        self._step = self._forward

    # ---------------------------------------------------------------- per-window state
    def setup_caches(self, rows: int, length: int) -> None:
        """A KV cache for ``rows`` rows of ``length`` positions, reused (and cleared) when the shape has not
        changed."""
        shape = (rows, self.attention.heads, length, self.attention.head_dim)
        if self.caches and self.caches[0].shape == shape:
            for cache in self.caches:
                cache.reset()
        else:
            self.caches = []  # the old cache is freed before the new one is allocated
            self.caches = self.new_caches(rows, length)
        self.setup_positions(length)

    def new_caches(self, rows: int, length: int) -> list[KVCache]:
        """A KV cache per layer for ``rows`` rows of ``length`` positions (their position embeddings ready)."""
        caches = [KVCache(rows, self.attention.heads, length, self.attention.head_dim, self.state_dtype,
                          self.device) for _ in self.layers]
        self.setup_positions(length)
        return caches

    def setup_positions(self, length: int) -> None:
        """Position embeddings (and key positions) for every position a cache of ``length`` can hold; kept
        (one address) until a longer cache needs more."""
        if self._position_table is None or self._position_table.shape[0] < length:
            if self._positions.weights.shape[0] < length:
                self._positions.make_weights(length, self.hidden)
            self._position_table = self._positions.weights.to(self.residual_dtype).to(self.device)
            self._key_positions = torch.arange(self._position_table.shape[0], device=self.device)

    def text_kv(self, states: torch.Tensor, mask: torch.Tensor) -> list[CrossKV]:
        """Cross-attention checkpoints: the keys/values of the projected text states (rows, Lt, H) with
        their padding mask (rows, Lt), one per layer, for a segment's ``text``."""
        # fully masked rows (the null condition) attend uniformly over zero states, as transformers does
        additive = torch.where(mask.bool(), 0.0, torch.finfo(self.state_dtype).min)
        additive = additive.to(self.state_dtype)[:, None, None, :]
        # once per window; on one core, so that its float32 GEMM (a few text rows) gives the same bits on any
        # machine: its result steers every later step
        with one_thread():
            return [layer.text_kv(states, additive) for layer in self.layers]

    def new_text(self, rows: int, length: int) -> list[CrossKV]:
        """Text buffers for ``rows`` rows of up to ``length`` text positions, one per layer (``write_text``
        fills a segment's rows); unwritten rows attend to zeros."""
        shape = (rows, self.attention.heads, length, self.attention.head_dim)
        zeros = lambda *size: torch.zeros(size, dtype=self.state_dtype, device=self.device)  # noqa: E731
        return [CrossKV(zeros(*shape), zeros(*shape), zeros(rows, 1, 1, length)) for _ in self.layers]

    @staticmethod
    def write_text(buffers: list[CrossKV], rows: slice, text: list[CrossKV]) -> list[CrossKV]:
        """Copy ``text`` (per layer, its rows' keys/values of Lt <= the buffers' length) into ``rows`` of
        ``buffers``, padding masked out; returns those rows of the buffers (a segment's ``text``). A text of
        one row fills every row of ``rows``."""
        length = text[0].k.shape[2]
        views = []
        for buffer, kv in zip(buffers, text):
            k, v, mask = buffer.k[rows], buffer.v[rows], buffer.mask[rows]
            k[:, :, :length] = kv.k
            v[:, :, :length] = kv.v
            k[:, :, length:] = 0  # a fully masked text attends uniformly: to zeros, as unpadded
            v[:, :, length:] = 0
            mask[..., :length] = kv.mask
            mask[..., length:] = torch.finfo(mask.dtype).min
            views.append(CrossKV(k, v, mask))
        return views

    # ---------------------------------------------------------------- forward
    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Tokens (rows, K, L) -> the sum of their codebook embeddings (rows, L, H), in the residual dtype."""
        return self.embed_table[ids + self.offsets].sum(dim=1, dtype=self.residual_dtype)

    def prefill(self, ids: torch.Tensor, segment: Segment, prefix: torch.Tensor | None = None,
                caches: list[KVCache] | None = None) -> torch.Tensor:
        """A segment's first tokens ``ids`` (rows, K, L), after an optional embedded ``prefix`` (rows, Lp, H)
        (melody checkpoints' conditioning); ``segment.pos`` covers Lp + L positions. Returns the logits of
        the last position, (rows, K, vocab), float32. ``caches``: the KV caches to use (default: the
        decoder's own, from ``setup_caches``)."""
        x = self.embed(ids)
        if prefix is not None:
            x = torch.cat([prefix.to(self.residual_dtype), x], dim=1)
        shared = self._shared_length(prefix, segment)
        if shared:  # those positions' keys/values are known: copy them, compute only the rest
            caches = caches or self.caches
            for cache, known in zip(caches, self._shared_states()):
                cache.k[segment.rows, :, :shared] = known.k
                cache.v[segment.rows, :, :shared] = known.v
            x, segment = x[:, shared:], replace(segment, pos=segment.pos[shared:])
        return self._forward(x, [segment], caches)

    def share_prefix(self, prefix: torch.Tensor | None) -> None:
        """Embedded prefix positions (1, P, H) that many prefills begin with (a melody checkpoint's null
        melody: every request without a melody, and every unconditional row). Their keys and values depend
        on nothing after them (causal attention), so they are computed once, on first use, and copied into
        each prefill whose rows all begin with exactly these values instead of being computed again."""
        self._shared_prefix, self._shared_kv = prefix, None

    def _shared_length(self, prefix: torch.Tensor | None, segment: Segment) -> int:
        shared = self._shared_prefix
        # a prefix always starts a segment at position 0 (the window's first prefill)
        if shared is None or prefix is None or prefix.shape[1] < shared.shape[1]:
            return 0
        head = prefix[:, : shared.shape[1]]
        return shared.shape[1] if head.dtype == shared.dtype and torch.equal(head, shared.expand_as(head)) else 0

    def _shared_states(self) -> list[KVCache]:
        if self._shared_kv is None:
            length = self._shared_prefix.shape[1]
            self.setup_positions(length)
            caches = [KVCache(1, self.attention.heads, length, self.attention.head_dim, self.state_dtype,
                              self.device) for _ in self.layers]
            segment = Segment(slice(0, 1), torch.arange(length, device=self.device), length)
            self._forward(self._shared_prefix.to(self.device, self.residual_dtype), [segment], caches)
            self._shared_kv = caches
        return self._shared_kv

    def step(self, ids: torch.Tensor, segments: list[Segment], caches: list[KVCache] | None = None) -> torch.Tensor:
        """One column ``ids`` (rows, K, 1) for the segments' rows, in order (then any padding rows). Returns
        (rows, K, vocab) float32 logits."""
        return self._step(self.embed(ids), segments, caches)

    def fixed_step(self, ids: torch.Tensor, pos: torch.Tensor, active: int, caches: list[KVCache],
                   text: list[CrossKV] | None, kv_len: int, text_len: int = 0, per_row: bool = False) -> torch.Tensor:
        """One column ``ids`` (R, K, 1) for all R rows of ``caches`` at once, the form a CUDA graph captures:
        the first ``active`` rows attend, row r writing its keys at position ``pos[r]`` (a device tensor of
        R positions) and reading its keys below ``kv_len``, masked past its own position; each row reads the
        first ``text_len`` positions of its own row of ``text`` (per layer, padded and masked; at least the
        longest active text). No host sync, no data-dependent shape: every shape is set by R, the active
        rows, ``kv_len`` and ``text_len``. ``per_row``: attention reads each row's keys only up to its own
        position's block (``musicgen.engine.row_attention``; fused only when compiled), ``kv_len`` a multiple
        of its block. Returns (R, K, vocab) float32 logits (idle rows' are meaningless)."""
        x = self.embed(ids) + self._position_table[pos][:, None]
        pos = pos[:active]
        if per_row:
            mask = row_attention.row_blocks(pos, kv_len)
        else:
            visible = self._key_positions[:kv_len][None, :] <= pos[:, None]  # (active, keys)
            mask = torch.where(visible, 0.0, torch.finfo(self.state_dtype).min).to(self.state_dtype)[:, None, None]
        for index, (layer, cache) in enumerate(zip(self.layers, caches)):
            x = layer.fixed(x, cache, pos, kv_len, mask, None if text is None else text[index], text_len)
        return self._logits(x[:, -1])

    def _logits(self, last: torch.Tensor) -> torch.Tensor:
        """The codebook heads on the last position's residual (rows, H): (rows, K, vocab) float32."""
        last = layer_norm(last, self.final_ln).to(self.heads_dtype)
        return self.heads_out(last).float().view(last.shape[0], self.num_codebooks, self.vocab_out)

    def _mask(self, segment: Segment) -> torch.Tensor | None:
        """Additive self-attention mask (1, 1, L, keys) of a segment: key j is visible from position p when
        j <= p. None when every key read is visible (one column over the filled part)."""
        if segment.pos.shape[0] == 1:
            return None
        keys = self._key_positions[: segment.kv_len]
        visible = keys <= segment.pos[:, None]  # (L, keys)
        return torch.where(visible, 0.0, torch.finfo(self.state_dtype).min).to(self.state_dtype)[None, None]

    def _forward(self, x: torch.Tensor, segments: list[Segment], caches: list[KVCache] | None = None) -> torch.Tensor:
        """``x`` (rows, L, H): the segments' rows in order, then any padding rows (a batch kept at a fixed
        size, whose results are ignored)."""
        caches = caches or self.caches
        if len(segments) == 1 and segments[0].size == x.shape[0]:
            x = x + self._position_table[segments[0].pos]  # (L, H), the same for every row
            rows = pos = None
        else:  # each segment's rows at its positions; the cache rows and positions of every row
            table = [self._position_table[seg.pos].expand(seg.size, -1, -1) for seg in segments]
            padding = x.shape[0] - sum(seg.size for seg in segments)
            x = x + torch.cat(table + ([torch.zeros_like(x[:padding])] if padding else []))
            rows = torch.cat([torch.arange(seg.rows.start, seg.rows.stop) for seg in segments]).to(x.device)
            pos = torch.cat([seg.pos.expand(seg.size, -1) for seg in segments])
        masks = [self._mask(seg) for seg in segments]
        for index, (layer, cache) in enumerate(zip(self.layers, caches)):
            x = layer(x, cache, segments, masks, rows, pos, index)
        return self._logits(x[:, -1])

