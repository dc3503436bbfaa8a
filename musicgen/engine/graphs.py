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

With ``sampling`` (the decode loop's form) the step also samples: each attached window's settings, delayed
token sequence, next column and noise live in per-slot device buffers, and after the logits one batched
sampler (``musicgen.engine.sampling.SlotSampling``) applies every slot's guidance, temperature, top-k/top-p
and exponential race, writes each token into its window's free cells and feeds it back as the next column.
Under CUDA graphs each slot draws from a generator of its own, registered with every graph (each replay
draws fresh noise), which takes over its request's generator state at ``attach`` and hands it back at
``detach``: a seed draws the same noise as sampling on the host, token for token. So a step is one replay
and a few host operations, whatever the number of requests (eagerly, one noise draw per sampling request).

So there are at most log2(slots) + 1 row buckets times (cache length / ``LENGTH_BUCKET``) key buckets (one
with per-row reads) times log2(text length / ``TEXT_BUCKET``) + 1 text buckets (one without cross-attention)
shapes; on CUDA each gets its CUDA graph at setup (``record``, called in the decode loop's own thread), and
requests join and leave between steps without recording anything. Nothing in a step reads the device from the
host: positions, per-row lengths, the mask and the sampled tokens stay on the device; the host tracks how far
each request got.

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
from musicgen.engine.sampling import SlotSampling
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
                 per_row: bool | None = None, sampling: bool | None = False, slot_generators: bool | None = None):
        """``slots`` requests of up to ``length`` positions (prefix included) and texts of ``text_length``
        tokens (both grow if a request needs more). ``capture`` (default: on CUDA): replay CUDA graphs;
        ``compile``: the step through ``torch.compile`` (``compile_backend``, default the decoder's), captured on
        CUDA; ``per_row`` (default: compiled on CUDA): each row reads only its own keys
        (``musicgen.engine.row_attention``), while the step is compiled; ``sampling`` (None: when capturing):
        each step also samples the next column of every attached window (``attach``) and feeds it back, inside
        the CUDA graph (on a CPU, one sampler for every slot costs more than each request's own), with
        ``slot_generators`` (default: when capturing) each slot drawing from a generator of its own."""
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
        self.sampling = self.capture if sampling is None else sampling
        self.windows: list = [None] * slots  # the window attached to each slot (sampled in the step)
        self.seq: torch.Tensor | None = None  # their tokens (``_sampling_state``)
        self._sampling_error: Exception | None = None  # what failed in sampling while recording, if it did
        self._grow(length)
        if self.sampling:
            self._sampling_state(self.capture if slot_generators is None else slot_generators)
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
        if self.seq is not None:  # the windows' tokens: as many columns as the cache
            old, self.seq = self.seq, self.seq.new_zeros(self.slots, self.seq.shape[1], self.length)
            self.seq[..., : old.shape[2]] = old
            for slot, window in enumerate(self.windows):
                if window is not None:
                    window.seq = self.seq[slot, :, : window.length]
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

    def begin(self, slot: int, sequence) -> tuple[int, list[CrossKV] | None]:
        """A sequence's (``musicgen.engine.sequence.Sequence``) next window in ``slot``, as the decode loop starts
        it: opened and prefilled (``open_window``), its first column sampled on the host (``sequence.consume``),
        and attached to the step when the step samples (unless that column ended the window). Returns the
        positions filled and the slot's rows of the text buffers."""
        window = sequence.next_window()
        logits, filled, text = self.open_window(slot, window)
        sequence.consume(logits)
        if self.sampling and not window.done:
            self.attach(slot, window, sequence.generator)
        return filled, text

    def set_column(self, slot: int, ids: torch.Tensor) -> None:
        """The column ``ids`` (rows, K, 1) the slot decodes next (one row fills both)."""
        self.ids[self.rows_of(slot)] = ids

    def leave(self, slot: int) -> None:
        both = self.rows_of(slot)
        self.advance[both] = 0
        self.pos[both] = 0
        self.text_lengths[slot] = 0
        self.windows[slot] = None
        if self.sampling:  # the request's generator is not handed back: it has left
            self.request_generators[slot] = None

    # ------------------------------------------------------------ sampling inside the step
    def _sampling_state(self, slot_generators: bool) -> None:
        """What a step that samples reads and writes, at fixed addresses: each slot's settings, its window's
        delayed token sequence, the next column to sample and which cells of it are free, and its noise."""
        decoder, device = self.decoder, self.decoder.device
        codebooks = decoder.num_codebooks
        self.sampler = SlotSampling(self.slots, device)
        self.seq = torch.zeros(self.slots, codebooks, self.length, dtype=torch.long, device=device)
        self.col = torch.zeros(self.slots, dtype=torch.long, device=device)
        self.first_free = torch.zeros(self.slots, codebooks, dtype=torch.long, device=device)
        self.last_free = torch.zeros(self.slots, codebooks, dtype=torch.long, device=device)
        self.noise = torch.ones(self.slots, codebooks, decoder.vocab_out, dtype=torch.float32, device=device)
        # a CUDA graph draws from generators registered with it when it is recorded: one per slot, which takes
        # over its request's generator state while the request's window is attached; eagerly, each request's own
        self.slot_generators = [torch.Generator(device) for _ in range(self.slots)] if slot_generators else None
        self.request_generators: list = [None] * self.slots

    def attach(self, slot: int, window, generator: torch.Generator | None) -> None:
        """From the next step on, the step samples the window's columns itself (a window of a sequence,
        prefilled in ``slot`` and its first column sampled): its tokens move to the slot's row of ``seq``
        (``window.seq`` becomes that view), its settings and next column to the device, and its sampling noise
        comes from ``generator`` (the request's; under CUDA graphs the slot's generator takes over its state
        until ``detach``)."""
        self.seq[slot, :, : window.length] = window.seq
        window.seq = self.seq[slot, :, : window.length]
        self.col[slot] = window.s
        self.first_free[slot] = window.first_free
        self.last_free[slot] = window.last_free
        self.sampler.set(slot, window.params, window.rows)
        self.set_column(slot, window.step_ids())
        self.windows[slot] = window
        self.request_generators[slot] = generator
        if self.slot_generators is None:
            return
        if generator is not None:
            self.slot_generators[slot].set_state(generator.get_state())
        else:
            self.slot_generators[slot].seed()

    def detach(self, slot: int) -> None:
        """The slot's window is no longer sampled by the step (it is done, or sampled on the host from now on);
        the request's generator takes back the state the slot's generator reached."""
        generator = self.request_generators[slot]
        if self.slot_generators is not None and generator is not None and self._draws(slot):
            generator.set_state(self.slot_generators[slot].get_state())
        self.windows[slot], self.request_generators[slot] = None, None

    def _draws(self, slot: int) -> bool:
        """Whether the slot's window draws noise when sampled (it is attached and not greedy)."""
        window = self.windows[slot]
        return window is not None and not window.params.greedy

    def stop_sampling(self) -> None:
        """Sample on the host from now on: every attached window is detached (its tokens stay in the slot's
        row of ``seq``, its request's generator takes back its state)."""
        for slot, window in enumerate(self.windows):
            if window is not None:
                self.detach(slot)
        self.sampling = False

    def _captured_sampling(self, logits: torch.Tensor, slots: int) -> None:
        """``_sample`` while recording: a failure is remembered as the sampling's (``record`` falls back from
        sampling in the step, not from compiling or capturing it)."""
        if self.sampling:
            try:
                self._sample(logits, slots)
            except Exception as exc:
                self._sampling_error = exc
                raise

    def _sampling_snapshot(self) -> tuple | None:
        """What a warm-up run of the sampling changes: the tokens, next columns and column fed back, and the
        slots' generators."""
        if not self.sampling:
            return None
        return [t.clone() for t in (self.seq, self.col, self.ids)], [g.get_state() for g in self.slot_generators or []]

    def _restore_sampling(self, saved: tuple | None) -> None:
        if saved is not None:
            for tensor, copy in zip((self.seq, self.col, self.ids), saved[0]):
                tensor.copy_(copy)
            for generator, state in zip(self.slot_generators or [], saved[1]):
                generator.set_state(state)

    def _sample(self, logits: torch.Tensor, slots: int) -> None:
        """Each of the first ``slots`` slots' next column from the step's logits, written into its window's
        cells that are free at that column (prompt and delay cells keep their tokens) and fed back as the
        next step's column; the slots that decode move to their next column. Only device work: no host read,
        no branch on a request's settings (with slot generators, as under a CUDA graph, every slot draws its
        noise)."""
        for slot in range(slots):
            if self.slot_generators is not None:
                self.noise[slot].exponential_(1, generator=self.slot_generators[slot])
            elif self._draws(slot):
                self.noise[slot].exponential_(1, generator=self.request_generators[slot])
        chosen = self.sampler.sample(logits[0 : 2 * slots : 2], logits[1 : 2 * slots : 2], self.noise[:slots])
        col, seq = self.col[:slots], self.seq[:slots]
        stepping = self.advance[0 : 2 * slots : 2]
        at = col.clamp(max=seq.shape[2] - 1)[:, None, None].expand(-1, seq.shape[1], 1)
        free = (col[:, None] >= self.first_free[:slots]) & (col[:, None] < self.last_free[:slots])
        free &= stepping[:, None] > 0
        column = torch.where(free, chosen, seq.gather(2, at).squeeze(2))
        seq.scatter_(2, at, column[..., None])
        self.ids[: 2 * slots] = column[:, None].expand(-1, ROWS_PER_SLOT, -1).reshape(2 * slots, -1, 1)
        col.add_(stepping)

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
            if self.sampling:
                self._sample(logits, key[0])
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
        a failure first falls back to the dense read, still compiled; sampling that cannot be captured falls
        back to sampling on the host."""
        try:
            self._record()
        except Exception as exc:
            self.fallbacks.append(reason(exc))
            # a sampling failure inside a capture may surface as the capture's own error as it ends
            if self._sampling_error is not None:
                warn_fallback(self._sampling_error, "sampling each request on the host from now on",
                              "sampling inside the CUDA graph failed")
                self.stop_sampling()
            elif self.per_row:
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
        self.graphs, self.timings, self._sampling_error = {}, {}, None
        started = time.monotonic()
        if not self.capture:
            for key in self.buckets():
                self._run(key)
            self.timings["warm_up"] = time.monotonic() - started
            return
        self.pool = torch.cuda.graph_pool_handle()
        saved = self._sampling_snapshot()  # before the side stream waits: the warm-up runs after the copy
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        try:
            with torch.cuda.stream(side):
                for key in self.buckets():
                    out = self._run(key)  # warm-up (and compilation) outside the capture
                    self._captured_sampling(out, key[0])
        finally:
            torch.cuda.current_stream().wait_stream(side)
            torch.cuda.synchronize()
            self._restore_sampling(saved)  # the warm-up sampled nothing for the windows in flight
        self.timings["warm_up"] = time.monotonic() - started
        started = time.monotonic()
        graphs = {}
        for key in self.buckets():
            graph = torch.cuda.CUDAGraph()
            if self.sampling:  # every replay draws fresh noise from each slot's generator
                try:
                    for generator in self.slot_generators[: key[0]]:
                        graph.register_generator_state(generator)
                except Exception as exc:
                    self._sampling_error = exc
                    raise
            with torch.cuda.graph(graph, pool=self.pool):
                out = self._run(key)
                self._captured_sampling(out, key[0])
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
