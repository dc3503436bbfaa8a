"""A fast MusicGen decoder: the checkpoint's weights in a lean module with a preallocated KV cache.

gpt-fast's recipe applied to MusicGen: the transformers decoder's weights are copied once into plain
tensors (q/k/v fused, the codebook heads stacked into one matrix, optionally bf16/fp16, int8 or int4: see
``musicgen.quant``), the self-attention cache (``musicgen.kv_cache``) is allocated once per window shape, the
text cross-attention keys/values are computed once per window, and there are two entry points over one
forward: ``prefill`` (the prompt, after an optional embedded prefix) and ``step`` (one column). Positions are
tensors in both; the step reads the filled part of the cache (``kv_len``, cheapest on a CPU) or, in the
static form that CUDA graphs capture, the whole cache under a mask, with every shape fixed.

The math is the same as transformers' (pre-LayerNorm blocks, exact GELU, sinusoidal positions, sum of
codebook embeddings); in fp32 it reproduces its logits up to float summation order.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from .kv_cache import CrossKV, KVCache
from .quant import PRECISIONS, Linear, compute_dtype, one_thread, stack

# the static step rounds the KV cache length and the text length up to these, so that the few shapes a
# deployment sees each get one compiled graph (and one CUDA graph)
STATIC_CACHE_BUCKET = 256
STATIC_TEXT_BUCKET = 64


@dataclass(frozen=True)
class Segment:
    """One sequence of a decoder call (a request's rows: conditional, and unconditional with guidance), all
    its rows at the same positions. Several segments decode together, each at its own place."""

    rows: slice  # its rows of the KV cache
    pos: torch.Tensor  # (L,) the positions of its L tokens
    kv_len: int | None  # keys to read: its positions below kv_len (None: the whole cache, under a mask)
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

    def __init__(self, hidden: int, heads: int, state_dtype: torch.dtype):
        self.hidden, self.heads, self.head_dim = hidden, heads, hidden // heads
        self.state_dtype = state_dtype  # keys, values and scores
        self.scale = self.head_dim**-0.5

    def split(self, x: torch.Tensor) -> torch.Tensor:  # (B, L, H) -> (B, heads, L, D)
        return x.view(x.shape[0], x.shape[1], self.heads, self.head_dim).transpose(1, 2)

    def merge(self, x: torch.Tensor) -> torch.Tensor:  # (B, heads, L, D) -> (B, L, H)
        return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], self.hidden)

    def __call__(self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                 mask: torch.Tensor | None) -> torch.Tensor:
        """softmax(q k^T / sqrt(D) + mask) v, with an additive float mask. One query position takes two
        small matmuls (cheaper than a fused kernel's set-up at decode time; scores as keys @ q^T so the
        cached keys are read in place, softmax in float32); several take the fused kernel."""
        if q.shape[2] > 1:
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


    def self_attention(self, x: torch.Tensor, cache: KVCache, segments: list[Segment],
                       masks: list[torch.Tensor | None], rows: torch.Tensor | None, pos: torch.Tensor | None) -> torch.Tensor:
        """``x`` holds the segments' rows in order (``rows``/``pos``: their cache rows and positions, for
        several segments). Each segment attends to its own keys, exactly as it would alone."""
        att = self.attention
        q, k, v = self.qkv(self._norm(x, self.ln_self)).split(att.hidden, dim=-1)
        q, k, v = att.split(q).to(att.state_dtype), att.split(k), att.split(v)
        if rows is None:
            keys, values = cache.update(segments[0].pos, k, v, segments[0].rows)
        else:  # rows past the segments' are padding: nothing to store, nothing to attend to
            keys, values = cache.update(pos, k[: rows.numel()], v[: rows.numel()], rows)
        out = self._per_segment(q, segments, lambda seg, i, q_seg: att(
            q_seg, keys[seg.rows, :, : seg.kv_len], values[seg.rows, :, : seg.kv_len], masks[i]))
        return self.out(att.merge(out).to(self.dtype))

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

    def __init__(self, hf_decoder, precision: str = "fp32", compile: bool = False, static: bool | None = None,
                 compile_backend: str | Callable = "inductor", device: torch.device | None = None):
        """``compile``: run the one-column step through ``torch.compile`` (fuses the small ops between the
        matmuls; the first steps pay the compile time, minutes on a small CPU), with ``compile_backend``.

        ``static`` (default: when compiling on CUDA): the step keeps every shape fixed for a window — the
        cache is allocated at the window's bucketed length and read whole under a mask, the text is padded
        to its bucket — so the compiled step can be captured as a CUDA graph (``mode="reduce-overhead"``)
        and replayed without per-step launch overhead. The weights, the cache, the position tables and the
        text keys/values are marked as static addresses (read in place, never copied into the graph), and
        the cache and text lengths as dynamic, so that one compilation serves every request (rows are
        fixed by the backend). On CPU the dynamic step is cheaper (it reads only the filled part of the
        cache).

        ``device`` (default: the transformers decoder's): where the decoder runs. The transformers decoder
        may stay on the CPU (mapped from its file): each weight is converted there and moved on, layer by
        layer, so the device never holds the float32 decoder."""
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        cfg = hf_decoder.config
        device = device or next(hf_decoder.parameters()).device
        self.device = device
        self.dtype = compute_dtype(precision, device)
        # attention state: CPUs run fp32 batched matmuls several times faster than bf16 ones, and at long
        # contexts reading the cache dominates a step, so keep it (and attention) in fp32 there
        self.state_dtype = torch.float32 if device.type == "cpu" else self.dtype
        # the residual stream: float32 under fp16 (whose range a deep stream outgrows), else the compute dtype
        self.residual_dtype = torch.float32 if self.dtype == torch.float16 else self.dtype
        inner = hf_decoder.model.decoder
        self.num_codebooks = cfg.num_codebooks
        self.hidden = cfg.hidden_size
        self.attention = Attention(self.hidden, cfg.num_attention_heads, self.state_dtype)
        vocab = inner.embed_tokens[0].weight.shape[0]
        # one table for all codebooks: row k * vocab + id
        self.embed_table = stack([e.weight for e in inner.embed_tokens], self.dtype, device)
        self.offsets = (torch.arange(self.num_codebooks, device=device) * vocab)[None, :, None]
        self._positions = inner.embed_positions  # transformers' sinusoidal table, grown on demand
        cross = hasattr(inner.layers[0], "encoder_attn")  # plain checkpoints; melody ones read a prefix
        with torch.no_grad():
            self.layers = _build_layers(inner.layers, precision, self.dtype, self.attention, cross,
                                        self.residual_dtype, device)
            self.final_ln = norm_weights(inner.layer_norm, self.residual_dtype, device)
            self.heads_out = Linear([h.weight for h in hf_decoder.lm_heads], precision, self.dtype, device)  # (K*V, H)
        self.vocab_out = hf_decoder.lm_heads[0].weight.shape[0]
        self.caches: list[KVCache] = []
        self._shared_prefix: torch.Tensor | None = None  # (1, P, H) positions many prefills begin with
        self._shared_kv: list[KVCache] | None = None  # their keys/values, computed on first use
        self.text: list[CrossKV] | None = None  # the static step's persistent text buffers
        self._position_table: torch.Tensor | None = None
        self._key_positions: torch.Tensor | None = None
        self.static = compile and device.type == "cuda" if static is None else static
        if self.static:  # a CUDA graph reads the weights where they are instead of copying them every replay
            for tensor in self.weights():
                torch._dynamo.mark_static_address(tensor)
        if compile:
            # CUDA graphs for the static step (one graph: rows, lengths and text marked dynamic or fixed);
            # the dynamic step compiles with symbolic lengths
            mode = "reduce-overhead" if self.static and device.type == "cuda" else None
            self._step = torch.compile(self._forward, mode=mode, dynamic=not self.static, backend=compile_backend)
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
        """A KV cache for ``rows`` rows of ``length`` positions (the static step rounds it up to its bucket),
        reused (and cleared) when the shape has not changed."""
        if self.static:
            length = -(-length // STATIC_CACHE_BUCKET) * STATIC_CACHE_BUCKET
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
                          self.device, static=self.static) for _ in self.layers]
        if self.static:
            for cache in caches:
                torch._dynamo.mark_dynamic(cache.k, 2)
                torch._dynamo.mark_dynamic(cache.v, 2)
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
            if self.static:
                torch._dynamo.mark_static_address(self._position_table)
                torch._dynamo.mark_static_address(self._key_positions)

    def text_kv(self, states: torch.Tensor, mask: torch.Tensor) -> list[CrossKV]:
        """Cross-attention checkpoints: the keys/values of the projected text states (rows, Lt, H) with
        their padding mask (rows, Lt), one per layer, for a segment's ``text``. The static step's come from
        persistent buffers (what a CUDA graph replays in place), its text padded to a bucket."""
        if self.static:  # pad the text to its bucket; padded positions are masked out
            pad = -states.shape[1] % STATIC_TEXT_BUCKET
            states, mask = F.pad(states, (0, 0, 0, pad)), F.pad(mask, (0, pad))
        # fully masked rows (the null condition) attend uniformly over zero states, as transformers does
        additive = torch.where(mask.bool(), 0.0, torch.finfo(self.state_dtype).min)
        additive = additive.to(self.state_dtype)[:, None, None, :]
        # once per window; on one core, so that its float32 GEMM (a few text rows) gives the same bits on any
        # machine: its result steers every later step
        with one_thread():
            fresh = [layer.text_kv(states, additive) for layer in self.layers]
        if not self.static:
            return fresh
        # persistent buffers while the bucket lasts, with the text length dynamic: one graph for every bucket
        if self.text is None or self.text[0].k.shape != fresh[0].k.shape:
            self.text = []
            for kv in fresh:
                self.text.append(CrossKV(kv.k.clone(), kv.v.clone(), kv.mask.clone()))
                for tensor, dim in ((self.text[-1].k, 2), (self.text[-1].v, 2), (self.text[-1].mask, 3)):
                    torch._dynamo.mark_static_address(tensor)
                    torch._dynamo.mark_dynamic(tensor, dim)
            return self.text
        for buffer, kv in zip(self.text, fresh):
            buffer.k.copy_(kv.k)
            buffer.v.copy_(kv.v)
            buffer.mask.copy_(kv.mask)
        return self.text

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
        if shared is None or prefix is None or prefix.shape[1] < shared.shape[1] or int(segment.pos[0]) != 0:
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
        """One column ``ids`` (rows, K, 1) for the segments' rows, in order; the static step reads the whole
        cache (``kv_len`` None). Returns (rows, K, vocab) float32 logits."""
        logits = self._step(self.embed(ids), segments, caches)
        if logits.device.type == "cuda" and self.static:
            logits = logits.clone()  # a replayed CUDA graph reuses its output buffer
        return logits

    def _mask(self, segment: Segment, cache_length: int) -> torch.Tensor | None:
        """Additive self-attention mask (1, 1, L, keys) of a segment: key j is visible from position p when
        j <= p. None when every key read is visible (one column over the filled part)."""
        if segment.kv_len is not None and segment.pos.shape[0] == 1:
            return None
        keys = self._key_positions[: cache_length if segment.kv_len is None else segment.kv_len]
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
        masks = [self._mask(seg, caches[0].k.shape[2]) for seg in segments]
        for index, (layer, cache) in enumerate(zip(self.layers, caches)):
            x = layer(x, cache, segments, masks, rows, pos, index)
        last = layer_norm(x[:, -1], self.final_ln).to(self.dtype)
        return self.heads_out(last).float().view(x.shape[0], self.num_codebooks, self.vocab_out)
