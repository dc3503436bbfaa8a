"""Continuous batching: one decode loop, on a thread of its own, serves every active request.

Decoding is memory-bandwidth bound: a step reads every decoder weight once whether it serves one request or
eight, so the requests in flight share each step. A request's sequence (``musicgen.sequence``) gets a slot —
two rows of a KV cache preallocated for every slot (conditional and unconditional) — prefills its window alone
when it joins or starts a new window, then decodes one column per shared step at its own positions, reading
only its own keys and text, with its own sampling settings and generator. It leaves at its end (or when
cancelled) and its slot goes to the next request at once; nobody waits for anybody.

Batching does not change results: each sequence's attention is computed alone, the int8 engine quantizes
activations per row, and float precisions run every step at the full slot width (padding rows), so that
their matrix products see the same shapes whoever else is decoding. A request gives the same bytes alone or
beside others.

The decode loop runs no Python the requests brought: progress, log lines and window events are queued and
delivered in the waiting caller's thread (where Cog routes a prediction's logs).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import deque

import torch

from .backends import FastBackend
from .decoder import Segment
from .kv_cache import KVCache
from .sequence import Cancelled, Sequence

log = logging.getLogger(__name__)

ROWS_PER_SLOT = 2  # conditional + unconditional
CACHE_BUCKET = 256  # the cache length grows in steps of this many positions (a longer melody prefix)


class Job:
    """A request in the scheduler: its sequence, and what its caller waits on."""

    def __init__(self, sequence: Sequence):
        self.sequence = sequence
        # the caller's callbacks run in the caller's thread; the loop queues what they should receive
        self._callbacks = (sequence.progress, sequence.note, sequence.on_window)
        self.events: queue.SimpleQueue = queue.SimpleQueue()
        sequence.progress = self._progress
        sequence.note = lambda line: self.events.put(("note", line))
        sequence.on_window = lambda event: self.events.put(("window", event))
        self.cancelled = threading.Event()
        self.slot: int | None = None
        self.filled = 0  # positions of its cache rows written so far in the current window
        self.text = None  # its text's cross-attention keys/values for the current window
        self.codes: torch.Tensor | None = None
        self.error: BaseException | None = None

    def _progress(self, done: int, total: int) -> None:
        # at most one event per percent (a decode step takes a millisecond on small models: waking the
        # caller for each would cost more than the step)
        if done == total or done * 100 // total != (done - 1) * 100 // total:
            self.events.put(("progress", done, total))

    def cancel(self) -> None:
        self.cancelled.set()

    def finish(self, codes: torch.Tensor | None = None, error: BaseException | None = None) -> None:
        self.codes, self.error = codes, error
        self.events.put(("end",))

    def wait(self, cancel: threading.Event | None = None) -> torch.Tensor:
        """The codes, once decoded; meanwhile the queued progress, log lines and window events are handed
        to the caller's callbacks, in this thread. ``cancel`` (or an exception raised in this thread, such as
        Cog's cancellation) cancels the job."""
        progress, note, on_window = self._callbacks
        try:
            while True:
                if cancel is not None and cancel.is_set():  # checked whether events flow or not
                    self.cancel()
                try:
                    event = self.events.get(timeout=0.05)
                except queue.Empty:
                    continue
                if event[0] == "end":
                    break
                if event[0] == "progress" and progress is not None:
                    progress(*event[1:])
                elif event[0] == "note" and note is not None:
                    note(event[1])
                elif event[0] == "window" and on_window is not None:
                    on_window(event[1])
        except BaseException:
            self.cancel()
            raise
        if self.error is not None:
            raise self.error
        return self.codes


class Scheduler:
    def __init__(self, engine, slots: int):
        """A decode loop over ``engine``'s decoder with ``slots`` concurrent requests (their KV cache
        preallocated). The static (CUDA-graph) step and the reference backend decode one request at a time."""
        self.engine = engine
        backend = engine.backend
        self.batching = isinstance(backend, FastBackend) and not (backend.decoder.static or backend.decoder.compiled)
        self.slots = max(1, slots) if self.batching else 1
        self.active: list[Job | None] = [None] * self.slots
        self.waiting: deque[Job] = deque()
        self.wake = threading.Condition()
        if self.batching:
            decoder = backend.decoder
            self.decoder = decoder
            # int8 rows are independent of the batch; float matmuls see a fixed batch size
            self.fixed_rows = None if decoder.layers[0].fc1.kind == "int8-dynamic" else ROWS_PER_SLOT * self.slots
            prefix = 0
            if engine.is_melody:  # the melody prefix: chroma frames and the text
                prefix = engine.model.config.chroma_length + 64
            self.caches: list[KVCache] = []
            self.length = 0
            self._cache_length(backend.window_len + prefix)
        self.closed = False
        self.threads = torch.get_num_threads()  # the decode loop's intra-op threads
        self.thread = threading.Thread(target=self._loop, name="musicgen-decode", daemon=True)
        self.thread.start()

    def close(self) -> None:
        """End the decode loop (requests still in it fail with Cancelled) and wait for its thread: a thread
        still inside torch when the interpreter exits aborts the process."""
        with self.wake:
            self.closed = True
            self.wake.notify()
        if threading.current_thread() is not self.thread:
            self.thread.join(timeout=30)

    def submit(self, sequence: Sequence) -> Job:
        job = Job(sequence)
        with self.wake:
            self.waiting.append(job)
            self.wake.notify()
        return job

    def run(self, sequence: Sequence, cancel: threading.Event | None = None) -> torch.Tensor:
        """Decode ``sequence`` beside whatever else is decoding; its codes (K, P + n_new)."""
        return self.submit(sequence).wait(cancel)

    # ---------------------------------------------------------------- the loop
    def _loop(self) -> None:
        torch.set_num_threads(self.threads)  # this thread's own OpenMP team (a new thread would take the last setting)
        with torch.inference_mode():
            while True:
                with self.wake:
                    if self.closed:
                        for job in [*self.waiting, *(j for j in self.active if j is not None)]:
                            job.finish(error=Cancelled("the model was closed"))
                        self.waiting.clear()
                        return
                    self._admit()
                    if not any(self.active):
                        self.wake.wait()
                        continue
                try:
                    if self.batching:
                        self._iterate()
                    else:
                        self._run_alone(next(job for job in self.active if job is not None))
                except Exception as exc:  # never leave a caller waiting on a loop that stopped
                    log.exception("the decode loop failed")
                    for job in [j for j in self.active if j is not None]:
                        self._leave(job, error=exc)

    def _admit(self) -> None:
        for job in [j for j in self.waiting if j.cancelled.is_set()]:
            self.waiting.remove(job)
            job.finish(error=Cancelled("cancelled while waiting"))
        for slot in range(self.slots):
            if self.active[slot] is None and self.waiting:
                job = self.waiting.popleft()
                job.slot = slot
                self.active[slot] = job

    def _leave(self, job: Job, codes: torch.Tensor | None = None, error: BaseException | None = None) -> None:
        self.active[job.slot] = None
        if isinstance(error, Cancelled):
            log.info("request cancelled after %d of %d steps; its slot is free", job.sequence.steps,
                     job.sequence.total_steps)
        job.finish(codes, error)

    def _run_alone(self, job: Job) -> None:
        """One request, start to end, on the engine's own backend (checking for cancellation every step)."""
        try:
            self._leave(job, self.engine.run(job.sequence, job.cancelled.is_set))
        except Exception as exc:
            self._leave(job, error=exc)

    def _iterate(self) -> None:
        """Start the windows that need starting (each prefilled alone), then one step for all the others."""
        stepping = []
        for job in [j for j in self.active if j is not None]:
            if job.cancelled.is_set():
                self._leave(job, error=Cancelled("cancelled"))
                continue
            try:
                if job.sequence.window is None:
                    self._start_window(job)
                if job.sequence.window is not None:
                    stepping.append(job)
            except Exception as exc:  # this request's own failure; the others go on
                log.exception("request failed in the decode loop")
                self._leave(job, error=exc)
        if not stepping:
            return
        segments = [self._segment(job, torch.tensor([job.filled], device=self.decoder.device), job.filled + 1)
                    for job in stepping]
        ids = torch.cat([job.sequence.window.step_ids() for job in stepping])
        if self.fixed_rows is not None and ids.shape[0] < self.fixed_rows:
            ids = torch.cat([ids, ids[:1].expand(self.fixed_rows - ids.shape[0], -1, -1)])
        try:
            logits = self.decoder.step(ids, segments, self.caches)
        except Exception as exc:  # the shared step failed: every request in it fails with the reason
            log.exception("the decode step failed")
            for job in stepping:
                self._leave(job, error=exc)
            return
        start = 0
        for job in stepping:
            rows = job.sequence.window.rows
            job.filled += 1
            self._consume(job, logits[start : start + rows])
            start += rows

    def _start_window(self, job: Job) -> None:
        window = job.sequence.next_window()
        cond = window.cond
        prefix_len = 0 if cond.prefix is None else cond.prefix.shape[1]
        self._cache_length(prefix_len + window.length)
        job.text = None if cond.text_states is None else self.decoder.text_kv(cond.text_states, cond.text_mask)
        length = prefix_len + window.prefill_ids().shape[-1]
        job.filled = length
        segment = self._segment(job, torch.arange(length, device=self.decoder.device), length)
        self._consume(job, self.decoder.prefill(window.prefill_ids(), segment, cond.prefix, self.caches))

    def _segment(self, job: Job, pos: torch.Tensor, kv_len: int) -> Segment:
        first = ROWS_PER_SLOT * job.slot
        return Segment(slice(first, first + job.sequence.window.rows), pos, kv_len, job.text)

    def _consume(self, job: Job, logits: torch.Tensor) -> None:
        sequence = job.sequence
        sequence.consume(logits)
        if sequence.window.done:
            sequence.finish_window()
            if sequence.done:
                self._leave(job, sequence.codes())

    def _cache_length(self, needed: int) -> None:
        """The scheduler's own KV cache holds ``needed`` positions for every slot (grown by whole buckets,
        the rows in flight carried over)."""
        if needed <= self.length:
            return
        length = -(-needed // CACHE_BUCKET) * CACHE_BUCKET
        grown = self.decoder.new_caches(ROWS_PER_SLOT * self.slots, length)
        for new, old in zip(grown, self.caches):
            new.k[:, :, : self.length].copy_(old.k)
            new.v[:, :, : self.length].copy_(old.v)
        if self.caches:
            log.info("decode cache grown to %d positions per row", length)
        self.caches, self.length = grown, length

