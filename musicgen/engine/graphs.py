"""The fixed-shape decode step: every request in flight decoded in one call per layer, recorded once per bucket
as a CUDA graph and replayed at every step.

A :class:`GraphStep` owns what the step reads: the KV cache of every slot (two rows a slot: conditional and
unconditional), each slot's text keys/values (plain checkpoints; padded to a text bucket), the column to
decode and each row's position, all at fixed addresses. ``decode`` runs one column for the rows of the
first ``active`` slots, each row at its own position (a device tensor, advanced on the device), reading keys
up to a length bucket:

- rows: the matmuls always take every slot's rows (a fixed row count, so that a row's result never depends
  on how many requests decode beside it); attention runs over the rows of the first ``active`` slots only,
  rounded up to a power of two (a request joins the lowest free slot, so this stays small);
- keys: compiled on CUDA, each row reads its own keys only, up to its own position's block of 128
  (``musicgen.engine.row_attention``: FlexAttention under a block mask built on the device), over the whole
  cache, so one shape serves every length. Otherwise (eager, or where that does not compile) attention reads
  each row's cache up to the longest active row, rounded up to ``LENGTH_BUCKET`` positions, under a per-row
  mask; at 8 slots of 30 s that is what the longest request needs, not the whole cache of every slot;
- text (plain checkpoints): cross-attention reads each row's text keys up to the longest active text, rounded
  up to a power of two times ``TEXT_BUCKET`` (a 20-token prompt reads 64 positions, not the encoder's 512: at
  musicgen-medium's shapes that is ~260 MB less per request-step). Past a row's own text its keys are
  masked, and the null condition's (all masked) values are zeros, so a shorter read gives the same result.

So there are at most log2(slots) + 1 row buckets times (cache length / ``LENGTH_BUCKET``) key buckets (one
with per-row reads) times log2(text length / ``TEXT_BUCKET``) + 1 text buckets (one without cross-attention)
shapes; on CUDA
each gets its CUDA graph at setup (``record``, called in the decode loop's own thread), and requests join
and leave between steps without recording anything. Nothing in a step reads the device from the host:
positions, per-row lengths and the mask stay on the device; the host tracks how far each request got.

On CPU the same step runs eagerly or through ``torch.compile`` (every shape is a bucket: one compilation,
no graph break), which is how the tests check what the GPU runs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import torch
import torch.fx.experimental._config as shape_config

from musicgen.engine import row_attention
from musicgen.engine.decoder import FastDecoder, Segment
from musicgen.engine.kv_cache import CrossKV, KVCache
from musicgen.errors import reason

log = logging.getLogger(__name__)

ROWS_PER_SLOT = 2  # conditional + unconditional
LENGTH_BUCKET = 256  # keys read by a step: a multiple of this
TEXT_BUCKET = 64  # text positions held per slot: a multiple of this


def round_up(n: int, bucket: int) -> int:
    return max(bucket, -(-n // bucket) * bucket)


class GraphStep:
    def __init__(self, decoder: FastDecoder, slots: int, length: int, text_length: int = 0,
                 capture: bool | None = None, compile: bool = False, compile_backend: str | Callable | None = None,
                 per_row: bool | None = None):
        """``slots`` requests of up to ``length`` positions (prefix included) and texts of ``text_length``
        tokens (both grow if a request needs more). ``capture`` (default: on CUDA): replay CUDA graphs;
        ``compile``: the step through ``torch.compile`` (``compile_backend``, default the decoder's), captured on
        CUDA; ``per_row`` (default: compiled on CUDA): each row reads only its own keys
        (``musicgen.engine.row_attention``), while the step is compiled."""
        self.decoder, self.slots, self.rows = decoder, slots, ROWS_PER_SLOT * slots
        device = decoder.device
        self.capture = device.type == "cuda" if capture is None else capture
        self._per_row = (compile and device.type == "cuda") if per_row is None else per_row
        self._per_row = self._per_row and row_attention.available()
        self.ids = torch.full((self.rows, decoder.num_codebooks, 1), 0, dtype=torch.long, device=device)
        self.pos = torch.zeros(self.rows, dtype=torch.long, device=device)
        self.advance = torch.zeros(self.rows, dtype=torch.long, device=device)  # 1 on rows that decode
        self.text_lengths = [0] * slots  # each slot's text tokens (host numbers: what the text bucket reads)
        self.length = 0
        self.caches: list = []
        self._fn = None
        text_length = round_up(text_length, TEXT_BUCKET)
        self.text: list[CrossKV] | None = decoder.new_text(self.rows, text_length) if decoder.cross else None
        self._grow(length)
        self.compile_backend = compile_backend or decoder.compile_backend
        self._fn = self._compiled() if compile else decoder.fixed_step
        self.graphs: dict[tuple[int, int, int], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.pool = None
        self.shapes: set[tuple[int, int, int]] = set()  # the (active slots, keys, text) shapes decoded so far
        # what the last ``record`` took, in seconds: every bucket's first run ("warm_up": compiling the step,
        # when compiled) and the graphs' capture ("capture", CUDA); and what it fell back from, if anything
        self.timings: dict[str, float] = {}
        self.fallbacks: list[str] = []

    # ------------------------------------------------------------ shapes
    def slot_buckets(self) -> list[int]:
        """Active-slot counts a step is run for: powers of two, and every slot."""
        counts, n = [], 1
        while n < self.slots:
            counts.append(n)
            n *= 2
        return counts + [self.slots]

    def text_buckets(self) -> list[int]:
        """Text positions a step's cross-attention reads: powers of two times ``TEXT_BUCKET`` below the text
        buffers' length, and that length (0 alone without cross-attention)."""
        if self.text is None:
            return [0]
        size, counts = self.text[0].k.shape[2], []
        n = TEXT_BUCKET
        while n < size:
            counts.append(n)
            n *= 2
        return counts + [size]

    def key_buckets(self) -> list[int]:
        """Key extents a step attends over: multiples of ``LENGTH_BUCKET`` up to the cache's length, or the
        whole cache alone when each row reads only its own keys."""
        return [self.length] if self.per_row else list(range(LENGTH_BUCKET, self.length + 1, LENGTH_BUCKET))

    def buckets(self) -> list[tuple[int, int, int]]:
        """Every (active slots, keys, text positions) shape a step can take."""
        return [(s, k, t) for s in self.slot_buckets() for k in self.key_buckets() for t in self.text_buckets()]

    def bucket(self, slots: int, length: int, text: int = 0) -> tuple[int, int, int]:
        return (next(s for s in self.slot_buckets() if s >= slots),
                self.length if self.per_row else round_up(length, LENGTH_BUCKET),
                next(t for t in self.text_buckets() if t >= text))

    @property
    def per_row(self) -> bool:
        """Whether each row reads only its own keys (FlexAttention: fused only when compiled)."""
        return self._per_row and self.compiled

    # ------------------------------------------------------------ a request's rows
    def rows_of(self, slot: int, rows: int = ROWS_PER_SLOT) -> slice:
        return slice(ROWS_PER_SLOT * slot, ROWS_PER_SLOT * slot + rows)

    def ensure(self, length: int, text_length: int = 0) -> None:
        """Room for ``length`` positions and a text of ``text_length`` tokens in every slot (grown by whole
        buckets: every graph is recorded again, the rows in flight carried over)."""
        grown = self._grow(length)
        if self.text is not None and text_length > self.text[0].k.shape[2]:
            old, size = self.text, round_up(text_length, TEXT_BUCKET)
            with torch.inference_mode(False):  # plain tensors wherever it grows, as at setup
                self.text = self.decoder.new_text(self.rows, size)
            for new, kv in zip(self.text, old):
                new.k[:, :, : kv.k.shape[2]] = kv.k
                new.v[:, :, : kv.v.shape[2]] = kv.v
                new.mask[..., : kv.mask.shape[3]] = kv.mask
                new.mask[..., kv.mask.shape[3] :] = torch.finfo(kv.mask.dtype).min
            log.info("text buffers grown to %d tokens per row", size)
            if self.compiled:
                self._mark_static()
            grown = True
        if grown and self.graphs:
            self.record()

    def _grow(self, needed: int) -> bool:
        if needed <= self.length:
            return False
        self.caches, self.length = grow_caches(self.decoder, self.caches, self.rows, needed)
        if self._fn is not None and self.compiled:  # None while the constructor allocates
            self._mark_static()
        return True

    def start(self, slot: int, rows: int, text: list[CrossKV] | None) -> list[CrossKV] | None:
        """A request's window begins in ``slot`` (``rows``: 1 or 2): its text keys/values go to the slot's
        rows (both rows, with one), its rows stop decoding until ``prefilled``. Returns its rows of the text
        buffers (the prefill's segment text)."""
        self.advance[self.rows_of(slot)] = 0
        self.text_lengths[slot] = 0 if text is None else text[0].k.shape[2]
        if text is None:
            return None
        self.ensure(self.length, text[0].k.shape[2])
        self.decoder.write_text(self.text, self.rows_of(slot), text)
        return [CrossKV(kv.k[self.rows_of(slot, rows)], kv.v[self.rows_of(slot, rows)],
                        kv.mask[self.rows_of(slot, rows)]) for kv in self.text]

    def prefill(self, slot: int, ids: torch.Tensor, prefix: torch.Tensor | None,
                text: list[CrossKV] | None) -> torch.Tensor:
        """The window's first columns ``ids`` (rows, K, L) after ``prefix``, in the slot's rows (eager: once a
        window); from here on its rows decode from the next position."""
        rows = ids.shape[0]
        length = ids.shape[-1] + (0 if prefix is None else prefix.shape[1])
        self.ensure(length + 1)
        segment = Segment(self.rows_of(slot, rows), torch.arange(length, device=self.decoder.device), length, text)
        logits = self.decoder.prefill(ids, segment, prefix, self.caches)
        both = self.rows_of(slot)
        self.pos[both] = length
        self.advance[both] = 1
        return logits

    def open_window(self, slot: int, window) -> tuple[torch.Tensor, int, list[CrossKV] | None]:
        """A sequence's window (``musicgen.engine.sequence.WindowRun``) begins in ``slot``: its text written, its
        prefix and first columns prefilled. Returns the logits of its last prefilled position, the positions
        filled, and the slot's rows of the text buffers."""
        cond = window.cond
        prefix_len = 0 if cond.prefix is None else cond.prefix.shape[1]
        self.ensure(prefix_len + window.length)
        text = None if cond.text_states is None else self.decoder.text_kv(cond.text_states, cond.text_mask)
        views = self.start(slot, window.rows, text)
        ids = window.prefill_ids()
        return self.prefill(slot, ids, cond.prefix, views), prefix_len + ids.shape[-1], views

    def set_column(self, slot: int, ids: torch.Tensor) -> None:
        """The column ``ids`` (rows, K, 1) the slot decodes next (one row fills both)."""
        self.ids[self.rows_of(slot)] = ids

    def leave(self, slot: int) -> None:
        both = self.rows_of(slot)
        self.advance[both] = 0
        self.pos[both] = 0
        self.text_lengths[slot] = 0

    # ------------------------------------------------------------ the step
    def decode(self, slots: int, length: int) -> torch.Tensor:
        """One column for the rows of the first ``slots`` slots whose longest row holds ``length`` positions
        after it (host numbers: no device read), their texts read up to the longest one's bucket. Returns
        (R, K, vocab) float32 logits, a buffer reused by the next call; each decoding row's position then
        advances by one, on the device."""
        key = self.bucket(slots, length, max(self.text_lengths[:slots]))
        self.shapes.add(key)
        graph = self.graphs.get(key) if self.capture else None
        if graph is not None:
            graph[0].replay()
            logits = graph[1]
        else:
            logits = self._run(key)
        self.pos.add_(self.advance)
        return logits

    def _run(self, key: tuple[int, int, int]) -> torch.Tensor:
        slots, keys, text = key
        active = ROWS_PER_SLOT * slots
        if not self.compiled:
            return self._fn(self.ids, self.pos, active, self.caches, self.text, keys, text)
        # sizes are symbols, each its own: two that happen to be equal once (a text bucket and a layer's
        # width) must not be assumed equal forever, or a later shape would compile again
        with shape_config.patch(use_duck_shape=False):
            return self._fn(self.ids, self.pos, active, self.caches, self.text, keys, text, self.per_row)

    def _compiled(self) -> Callable:
        """The step through ``torch.compile``: one graph (no break: a host sync would be one), its sizes
        symbolic (every bucket shares it). The weights, caches, tables and text buffers are static
        addresses, read in place."""
        self._mark_static()
        return torch.compile(self.decoder.fixed_step, fullgraph=True, dynamic=True, backend=self.compile_backend)

    def _mark_static(self) -> None:
        """Every buffer the step reads in place has a fixed address; the weights and tables a fixed shape too."""
        for tensor in self.static_tensors():
            torch._dynamo.mark_static_address(tensor)
        for tensor in self._fixed_tensors():
            torch._dynamo.mark_static(tensor)

    def _fixed_tensors(self) -> list[torch.Tensor]:
        return [*self.decoder.weights(), self.decoder.embed_table, self.decoder._position_table,
                self.decoder._key_positions, self.decoder.offsets]

    def static_tensors(self) -> list[torch.Tensor]:
        """Every tensor the step reads or writes in place, other than the column and positions."""
        tensors = self._fixed_tensors()
        tensors += [t for cache in self.caches for t in (cache.k, cache.v)]
        tensors += [t for kv in self.text or [] for t in (kv.k, kv.v, kv.mask)]
        return tensors

    @property
    def compiled(self) -> bool:
        return self._fn != self.decoder.fixed_step  # bound methods compare by function and instance

    def disable_compile(self) -> None:
        """The eager step from now on (graphs recorded again)."""
        self._fn = self.decoder.fixed_step
        if self.graphs:
            self.record()

    def record(self) -> None:
        """Run every bucket once (compiling the step, when compiled) and, on CUDA, record its graph. Call it
        in the thread that will replay the graphs, before any request decodes (the warm-up writes idle
        rows; rows in flight get what their next step writes anyway). A compiler failure falls back to the
        eager step, a capture failure to replaying nothing, each with one warning; with per-row key reads,
        a failure first falls back to the dense read, still compiled."""
        try:
            self._record()
        except Exception as exc:
            self.fallbacks.append(reason(exc))
            if self.per_row:
                warn_fallback(exc, "reading keys up to the longest active row from now on",
                              "the per-row attention (FlexAttention) step failed")
                self._per_row = False
            elif self.compiled:
                warn_fallback(exc, "decoding without torch.compile from now on")
                self._fn = self.decoder.fixed_step
            elif self.capture:
                warn_fallback(exc, "decoding without CUDA graphs from now on", "the CUDA graph capture failed")
                self.capture = False
            else:
                raise
            self.record()

    def _record(self) -> None:
        self.graphs, self.timings = {}, {}
        started = time.monotonic()
        if not self.capture:
            for key in self.buckets():
                self._run(key)
            self.timings["warm_up"] = time.monotonic() - started
            return
        self.pool = torch.cuda.graph_pool_handle()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for key in self.buckets():
                self._run(key)  # warm-up (and compilation) outside the capture
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        self.timings["warm_up"] = time.monotonic() - started
        started = time.monotonic()
        graphs = {}
        for key in self.buckets():
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool):
                out = self._run(key)
            graphs[key] = (graph, out)
        torch.cuda.synchronize()
        self.graphs = graphs
        self.timings["capture"] = time.monotonic() - started


def grow_caches(decoder: FastDecoder, caches: list[KVCache], rows: int, needed: int) -> tuple[list[KVCache], int]:
    """KV caches of ``rows`` rows holding at least ``needed`` positions (whole ``LENGTH_BUCKET``s): ``caches``
    when they do, else new ones with their positions carried over. Returns (caches, their length)."""
    length = caches[0].shape[2] if caches else 0
    if needed <= length:
        return caches, length
    with torch.inference_mode(False):  # plain tensors wherever they grow (one kind for the compiled step)
        grown = decoder.new_caches(rows, round_up(needed, LENGTH_BUCKET))
    for new, old in zip(grown, caches):
        new.k[:, :, :length].copy_(old.k)
        new.v[:, :, :length].copy_(old.v)
    if caches:
        log.info("decode cache grown to %d positions per row", grown[0].shape[2])
    return grown, grown[0].shape[2]


def warn_fallback(exc: BaseException, then: str, what: str = "the compiled decode step failed") -> None:
    """One warning line: what failed, why, and what decoding does instead."""
    log.warning("%s (%s); %s", what, reason(exc), then)
