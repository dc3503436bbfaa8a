"""Request-side GPU work (text encoder, EnCodec, Demucs, melody chroma) kept off the decode loop's path.

Each request runs its own model work in its own thread (``musicgen.serving.service``). On a GPU that work gets a CUDA
stream of its own, so the decode loop's steps (on the loop thread's default stream) do not queue behind a
request's EnCodec chunk or Demucs segment, and at most ``workers`` such works run at once, so that concurrent
requests cannot together exhaust the memory the plan left for them between two decode steps
(``musicgen.serving.memory``). Hand-off between the streams:

- into the work: the side stream first waits for the default stream (codes the decode loop produced);
- out of it: the request's thread waits for the side stream to finish (only that thread blocks), and each
  tensor handed to the decode loop is marked as used on the default stream (``record_stream``), so the
  caching allocator does not give its memory to later side-stream work while the loop still reads it.

On a CPU only the bound remains (none by default); the streams are no-ops.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Iterator

import torch


class RequestWork:
    def __init__(self, device: torch.device, workers: int | None = None):
        """``workers``: request-side works at once (None: unbounded)."""
        self.device = device
        self.workers = workers
        self._slots = threading.BoundedSemaphore(workers) if workers else None
        self._lock = threading.Lock()
        self.running = 0  # works running now
        self.peak = 0  # the most that ever ran at once

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        """Run the enclosed request-side work: after a free worker place, on a side stream on CUDA; its
        results are complete on exit."""
        if self._slots is not None:
            self._slots.acquire()
        with self._lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
        try:
            if self.device.type != "cuda":
                yield
                return
            stream = torch.cuda.Stream(self.device)
            stream.wait_stream(torch.cuda.default_stream(self.device))
            with torch.cuda.stream(stream):
                yield
            stream.synchronize()
        finally:
            with self._lock:
                self.running -= 1
            if self._slots is not None:
                self._slots.release()

    def hand_off(self, tensors: Iterable[torch.Tensor | None]) -> None:
        """Mark tensors made by request-side work as used by the decode loop (its thread's default stream)."""
        if self.device.type != "cuda":
            return
        loop = torch.cuda.default_stream(self.device)
        for tensor in tensors:
            if tensor is not None and tensor.is_cuda:
                tensor.record_stream(loop)
