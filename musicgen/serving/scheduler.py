"""Continuous batching: one decode loop, on a thread of its own, serves every active request.

Decoding is memory-bandwidth bound: a step reads every decoder weight once whether it serves one request or
eight, so the requests in flight share each step. A request's sequence (``musicgen.engine.sequence``) gets a slot —
two rows of a KV cache preallocated for every slot (conditional and unconditional) — prefills its window alone
when it joins or starts a new window, then decodes one column per shared step at its own positions, reading
only its own keys and text, with its own sampling settings and generator. It leaves at its end (or when
cancelled) and its slot goes to the next request at once; nobody waits for anybody.

Two forms of the shared step:

- the segments' step (CPU default): each sequence's attention is computed alone over the filled part of its
  cache, the int8 engine quantizes activations per row, and float precisions run every step at the full
  slot width (padding rows), so that their matrix products see the same shapes whoever else is decoding. A
  request gives the same bytes alone or beside others.
- the fixed-shape step (``musicgen.engine.graphs``; CUDA default, CUDA graphs): every slot's rows in one call per
  layer, positions on the device, no host sync; it samples every request's next column itself (inside the
  graph, with each request's generator state), so a step costs the host one call whatever the number of
  requests, and each seed gets the tokens sampling on the host would give it. Its matrix products always take
  every slot's rows (a row's result does not depend on the others); attention runs over the active slots'
  rows, each row reading its own keys only when compiled on CUDA (``musicgen.engine.row_attention``), else keys
  up to the longest active row, rounded to buckets, each row masked past its own position. The order an
  attention kernel sums a row's keys in may depend on who else decodes (equal on CPU in the tests; not
  promised on CUDA, whose kernels choose their split by shape).

When the shared step fails (out of memory), the memory it held is released and each request's column is
decoded alone; only a request whose own step fails again fails.

The decode loop runs no Python the requests brought: progress, log lines and window events are queued and
delivered in the waiting caller's thread (where Cog routes a prediction's logs).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque

import torch

from musicgen.engine.backends import FastBackend
from musicgen.engine.decoder import Segment
from musicgen.engine.graphs import ROWS_PER_SLOT, grow_caches
from musicgen.serving.memory import ModelShapes
from musicgen.engine.sequence import Cancelled, Sequence
from musicgen.errors import reason

log = logging.getLogger(__name__)


class Job:
    """A request in the scheduler: its sequence, and what its caller waits on."""

    def __init__(self, sequence: Sequence):
        self.sequence = sequence
        # the caller's callbacks run in the caller's thread; the loop queues what they should receive
        self._callbacks = (sequence.progress, sequence.note, sequence.on_window, sequence.on_frames)
        self.events: queue.SimpleQueue = queue.SimpleQueue()
        sequence.progress = self._progress
        sequence.note = lambda line: self.events.put(("note", line))
        sequence.on_window = lambda event: self.events.put(("window", event))
        if sequence.on_frames is not None:  # streaming: the completed frames, decoded to audio by the caller
            sequence.on_frames = lambda frames: self.events.put(("frames", frames))
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
        progress, note, on_window, on_frames = self._callbacks
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
                elif event[0] == "frames":
                    on_frames(event[1])
        except BaseException:
            self.cancel()
            raise
        if self.error is not None:
            raise self.error
        return self.codes


class Scheduler:
    def __init__(self, engine, slots: int, sample_in_step: bool | None = None):
        """A decode loop over ``engine``'s decoder with ``slots`` concurrent requests (their KV cache
        preallocated): the fixed-shape step when the engine's backend is static (recorded here, in the loop's
        thread, before this returns), else the segments' step. The reference backend decodes one request at
        a time. ``sample_in_step`` (default: under CUDA graphs): the fixed-shape step samples every request's
        next column itself (inside its CUDA graph), else each request samples after it, on its own."""
        self.engine = engine
        backend = engine.backend
        self.batching = isinstance(backend, FastBackend)
        self.slots = max(1, slots) if self.batching else 1
        self.active: list[Job | None] = [None] * self.slots
        self.waiting: deque[Job] = deque()
        self.wake = threading.Condition()
        self.graph = None
        if self.batching:
            decoder = backend.decoder
            self.decoder = decoder
            # int8 rows are independent of the batch; float matmuls see a fixed batch size
            self.fixed_rows = None if decoder.layers[0].fc1.kind == "int8-dynamic" else ROWS_PER_SLOT * self.slots
            prefix = 0
            if engine.is_melody:  # the melody prefix: chroma frames and the text
                prefix = engine.model.config.chroma_length + 64
            if backend.static:
                # every buffer at the longest request's size from the start (what the memory plan counts):
                # growing one mid-serving would hold two copies and record every graph again
                shapes = ModelShapes.of(engine.model.config, engine.window_frames)
                self.graph = backend.graph_step(self.slots, shapes.cache_positions,
                                                shapes.text_tokens if shapes.cross_attention else 0,
                                                sampling=sample_in_step)
                self.caches = self.graph.caches
            else:
                self.caches, self.length = grow_caches(decoder, [], ROWS_PER_SLOT * self.slots,
                                                       backend.window_len + prefix)
        self.closed = False
        self.steps = 0  # shared decode steps run so far (what the benches divide bytes and time by)
        self.threads = torch.get_num_threads()  # the decode loop's intra-op threads
        self._ready = threading.Event()
        self._setup_error: BaseException | None = None
        self.thread = threading.Thread(target=self._loop, name="musicgen-decode", daemon=True)
        self.thread.start()
        self._ready.wait()
        if self._setup_error is not None:
            raise self._setup_error

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
            try:
                if self.graph is not None:  # compiled and captured in the thread that replays it
                    started = time.monotonic()
                    self.graph.record()
                    log.info("decode step ready for %d slot(s): %d shapes, %s%s, in %.1f s", self.slots,
                             len(self.graph.buckets()), "compiled" if self.graph.compiled else "eager",
                             ", CUDA graphs" if self.graph.graphs else "", time.monotonic() - started)
            except BaseException as exc:
                self._setup_error = exc
                return
            finally:
                self._ready.set()
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
        for slot in range(self.slots):  # the lowest free slot first: the fixed-shape step's rows stay few
            if self.active[slot] is None and self.waiting:
                job = self.waiting.popleft()
                job.slot = slot
                self.active[slot] = job

    def _leave(self, job: Job, codes: torch.Tensor | None = None, error: BaseException | None = None) -> None:
        self.active[job.slot] = None
        if self.graph is not None:
            self.graph.leave(job.slot)
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
        try:
            logits = self._shared_step(stepping)
        except Exception as exc:  # out of memory, most likely: free what the step held, then each alone
            log.warning("the shared decode step of %d request(s) failed (%s); decoding each alone", len(stepping),
                        reason(exc))
            del exc
            if self.decoder.device.type == "cuda":
                torch.cuda.empty_cache()
            self._each_alone(stepping)
            return
        self.steps += 1
        for i, job in enumerate(stepping):
            job.filled += 1
            if logits is None:  # the step sampled every job's column itself
                job.sequence.sampled()
                self._column_done(job)
            else:
                self._consume(job, logits[i])

    def _rows(self, job: Job) -> slice:
        first = ROWS_PER_SLOT * job.slot
        return slice(first, first + job.sequence.window.rows)

    def _shared_step(self, stepping: list[Job]) -> list[torch.Tensor] | None:
        """One column for every stepping job: each job's logits (its rows), in order; None when the step
        sampled every job's next column itself (one call, nothing per job)."""
        if self.graph is not None and self.graph.sampling:
            self.graph.decode(max(job.slot for job in stepping) + 1, max(job.filled for job in stepping) + 1)
            return None
        if self.graph is not None:
            for job in stepping:
                self.graph.set_column(job.slot, job.sequence.window.step_ids())
            slots = max(job.slot for job in stepping) + 1
            logits = self.graph.decode(slots, max(job.filled for job in stepping) + 1)
            return [logits[self._rows(job)] for job in stepping]
        segments = [self._segment(job) for job in stepping]
        ids = torch.cat([job.sequence.window.step_ids() for job in stepping])
        logits = self.decoder.step(self._padded(ids), segments, self.caches)
        return list(logits[: sum(segment.size for segment in segments)].split([s.size for s in segments]))

    def _each_alone(self, stepping: list[Job]) -> None:
        """Each job's column decoded alone in the segments' step (over the same caches); a job whose own
        step fails again fails, the others go on. The fixed-shape step's positions advance after."""
        caches = self.graph.caches if self.graph is not None else self.caches
        sampling = self.graph is not None and self.graph.sampling
        for job in stepping:
            if sampling:  # sampled on the host for this step
                self.graph.detach(job.slot)
            try:
                logits = self.decoder.step(self._padded(job.sequence.window.step_ids()), [self._segment(job)],
                                           caches)
            except Exception as exc:
                log.exception("request failed in the decode loop")
                self._leave(job, error=exc)
                continue
            if self.graph is not None:
                self.graph.pos[self.graph.rows_of(job.slot)] += 1
            job.filled += 1
            self._consume(job, logits[: job.sequence.window.rows])
            self._attach(job)

    def _padded(self, ids: torch.Tensor) -> torch.Tensor:
        """Float precisions decode every step at the full slot width (their matmuls' shapes fixed)."""
        if self.fixed_rows is not None and ids.shape[0] < self.fixed_rows:
            ids = torch.cat([ids, ids[:1].expand(self.fixed_rows - ids.shape[0], -1, -1)])
        return ids

    def _start_window(self, job: Job) -> None:
        if self.graph is not None:
            job.filled, job.text = self.graph.begin(job.slot, job.sequence)
            self._column_done(job)
            return
        window = job.sequence.next_window()
        cond = window.cond
        prefix_len = 0 if cond.prefix is None else cond.prefix.shape[1]
        length = prefix_len + window.prefill_ids().shape[-1]
        if prefix_len + window.length > self.length:
            self.caches, self.length = grow_caches(self.decoder, self.caches, ROWS_PER_SLOT * self.slots,
                                                   prefix_len + window.length)
        job.text = None if cond.text_states is None else self.decoder.text_kv(cond.text_states, cond.text_mask)
        job.filled = length
        segment = Segment(self._rows(job), torch.arange(length, device=self.decoder.device), length, job.text)
        self._consume(job, self.decoder.prefill(window.prefill_ids(), segment, cond.prefix, self.caches))

    def _segment(self, job: Job) -> Segment:
        """The job's next column as a segment of the segments' step."""
        pos = torch.tensor([job.filled], device=self.decoder.device)
        return Segment(self._rows(job), pos, job.filled + 1, job.text)

    def _attach(self, job: Job) -> None:
        """The fixed-shape step samples the job's window from its next step on (when it does so at all and
        the job is still decoding that window)."""
        graph = self.graph
        if graph is not None and graph.sampling and self.active[job.slot] is job and job.sequence.window is not None:
            graph.attach(job.slot, job.sequence.window, job.sequence.generator)

    def _consume(self, job: Job, logits: torch.Tensor) -> None:
        job.sequence.consume(logits)
        self._column_done(job)

    def _column_done(self, job: Job) -> None:
        sequence = job.sequence
        if sequence.window.done:
            if self.graph is not None and self.graph.windows[job.slot] is sequence.window:
                self.graph.detach(job.slot)  # its generator's state back to the request
            sequence.finish_window()
            if sequence.done:
                self._leave(job, sequence.codes())
