"""One request's token generation as a state machine, so that a decode loop can drive one request (the
engine) or many at once (the scheduler) with the same code.

A :class:`Sequence` walks the request's windows (audiocraft's layout: ``Engine.plan``), conditioning each on
the text and, on melody checkpoints, the melody at the window's place in time. A :class:`WindowRun` is one
window: the delayed codebook sequence (column 0 the start token, codebook k holding frame t at column
``t + 1 + delay(k)``), prompt cells forced, the rest sampled one column per decode step with the request's
own sampling settings and ``torch.Generator``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from musicgen.engine.conditioning import Conditioning, TextStates
from musicgen.engine.quant import one_thread
from musicgen.engine.sampling import SamplingParams, apply_cfg, sample_next


class Cancelled(Exception):
    """The request was cancelled before it finished."""


@dataclass(frozen=True)
class WindowEvent:
    """One generated window, reported to ``on_window``."""

    index: int  # 0-based
    count: int  # windows in this generation
    start_frame: int  # where the window starts in the clip (prompt included); the melody is read from here
    context: torch.Tensor  # (K, ctx) tokens the window was prompted with
    new: torch.Tensor  # (K, n) tokens it generated
    melody_chroma: torch.Tensor | None = None  # (frames, 12) the window was conditioned on (melody checkpoints)


class WindowRun:
    """``n_new`` frames after ``context`` (K, P) within one window: ``prefill_ids`` first, then ``consume``
    each call's logits and feed ``step_ids`` back, until ``done``."""

    def __init__(self, engine, cond: Conditioning, context: torch.Tensor, n_new: int, params: SamplingParams,
                 generator: torch.Generator | None):
        K, P = context.shape
        self.cond, self.params, self.generator = cond, params, generator
        self.P, self.N = P, P + n_new
        self.length = self.N + engine.max_delay + 1  # columns of the delayed sequence
        device = engine.device
        self.delays = engine.delays.to(device)
        self.seq = torch.full((K, self.length), engine.start_id, dtype=torch.long, device=device)
        if P:
            columns = torch.arange(P, device=device)[None] + 1 + self.delays[:, None]
            self.seq[torch.arange(K, device=device)[:, None], columns] = context.to(device)
        self.first_free = 1 + self.delays + P  # first column each codebook samples
        self.last_free = 1 + self.delays + self.N  # one past the last
        self.s = P + 1  # the next column to sample

    @property
    def rows(self) -> int:
        return self.cond.rows

    @property
    def done(self) -> bool:
        return self.s >= self.length

    def prefill_ids(self) -> torch.Tensor:
        """The window's first columns (start token and prompt), one copy per row: (rows, K, P + 1)."""
        return self.seq[None, :, : self.P + 1].expand(self.rows, -1, -1)

    def step_ids(self) -> torch.Tensor:
        """The column sampled last, for the next decode step: (rows, K, 1)."""
        return self.seq[None, :, self.s - 1 : self.s].expand(self.rows, -1, -1)

    def consume(self, logits: torch.Tensor) -> None:
        """Sample column ``s`` from the logits (rows, K, vocab) of the call that saw column ``s - 1``."""
        scores = logits[0] if self.rows == 1 else apply_cfg(logits[0], logits[1], self.params.cfg_scale)
        chosen = sample_next(scores, self.params, self.generator)
        free = (self.s >= self.first_free) & (self.s < self.last_free)
        self.seq[:, self.s] = torch.where(free, chosen, self.seq[:, self.s])
        self.s += 1

    def sampled(self) -> None:
        """Column ``s`` was sampled into ``seq`` by the decode step itself (``GraphStep.attach``)."""
        self.s += 1

    def tokens(self) -> torch.Tensor:
        """The window's frames, prompt included: (K, P + n_new)."""
        idx = torch.arange(self.N, device=self.seq.device)[None] + 1 + self.delays[:, None]
        return self.seq.gather(1, idx)


class Sequence:
    """A request's codes, window after window: ``next_window``, run it to ``done``, ``finish_window``; at the
    end ``codes()`` is the whole clip, prompt included (K, P + n_new)."""

    def __init__(self, engine, text: TextStates, n_new: int, params: SamplingParams,
                 generator: torch.Generator | None = None, prompt_codes: torch.Tensor | None = None,
                 melody: torch.Tensor | None = None, progress: Callable[[int, int], None] | None = None,
                 on_window: Callable[[WindowEvent], None] | None = None,
                 note: Callable[[str], None] | None = None):
        """``melody``: the mono chroma source (``Engine.melody_source``); ``progress``: (decode steps done,
        in total) after each column; ``note``: a line for the request's log."""
        self.engine, self.text, self.params, self.generator = engine, text, params, generator
        self.melody, self.progress, self.on_window, self.note = melody, progress, on_window, note
        prompt = torch.zeros(engine.num_codebooks, 0, dtype=torch.long) if prompt_codes is None else prompt_codes.long()
        self.plan = engine.plan(prompt.shape[1], n_new)
        self.total_steps = sum(n + engine.max_delay for _, n in self.plan)  # one decode step per column
        self.steps = 0
        self.out = [prompt.to(engine.device)]
        self.context = self.out[0]
        self.end = prompt.shape[1]  # frames of the clip so far (prompt included)
        self.index = 0
        self.cond: Conditioning | None = None
        self.chroma: torch.Tensor | None = None
        self.window: WindowRun | None = None
        # each window's melody chroma, computed here, in the request's own thread and on its device, before
        # the request joins a decode loop (an STFT per window would hold up every request in the loop)
        self.chromas = self._chromas()
        # streaming (``stream``): new frames handed on as they complete
        self.on_frames: Callable[[torch.Tensor], None] | None = None
        self.frames_every = 1
        self.sent = 0  # frames of the current window handed to on_frames (window coordinates)

    def stream(self, on_frames: Callable[[torch.Tensor], None], every: int) -> None:
        """Hand ``on_frames`` each run of new frames (K, n) as their last codebook is sampled, in the clip's
        order (the prompt not included), ``every`` frames or more at a time, and the rest at each window's
        end. It is called in the thread that decodes, so it should only hand the tensor on."""
        self.on_frames, self.frames_every = on_frames, max(1, every)

    def _chromas(self) -> list[torch.Tensor | None]:
        """The chroma each window is conditioned on: the melody at the window's place in time (one window:
        the melody as is); None without a melody."""
        if self.melody is None:
            return [None] * len(self.plan)
        engine, windowed = self.engine, len(self.plan) > 1
        melody = self.melody.to(engine.device)
        chromas, end = [], self.end
        with one_thread():  # the same bits whatever the thread's core count
            for ctx_len, n in self.plan:
                chromas.append(engine.melody_chroma(melody, end - ctx_len, engine.window_frames if windowed else None))
                end += n
        return chromas

    def tensors(self) -> list[torch.Tensor]:
        """The device tensors this sequence brings to a decode loop (``RequestWork.hand_off``)."""
        text = [self.text.hidden, self.text.mask]
        return [t for t in [*text, *self.out, *self.chromas] if t is not None]

    @property
    def done(self) -> bool:
        return self.index >= len(self.plan)

    def next_window(self) -> WindowRun:
        engine = self.engine
        ctx_len, n = self.plan[self.index]
        self.context = self.context[:, self.context.shape[1] - ctx_len :]
        windowed = len(self.plan) > 1
        if self.cond is None or (self.melody is not None and windowed):  # the melody at the window's time
            self.chroma = self.chromas[self.index]
            with one_thread():  # in the decode loop's thread: the same bits whatever its thread count
                self.cond = engine.conditioner.condition(self.text, self.chroma, self.params.cfg_scale)
        if windowed and self.note is not None:
            self.note(f"window {self.index + 1}/{len(self.plan)}: {ctx_len} frames of context, {n} new frames")
        self.window = WindowRun(engine, self.cond, self.context, n, self.params, self.generator)
        self.sent = ctx_len
        return self.window

    def consume(self, logits: torch.Tensor) -> None:
        """The current window's next column, from its logits; counts the step."""
        self.window.consume(logits)
        self._column_done()

    def sampled(self) -> None:
        """The decode step sampled the current window's next column itself; counts the step."""
        self.window.sampled()
        self._column_done()

    def _column_done(self) -> None:
        self.steps += 1
        if self.on_frames is not None:  # frame t is complete once column t + 1 + max delay is sampled
            complete = min(self.window.N, self.window.s - 1 - self.engine.max_delay)
            if complete - self.sent >= self.frames_every:
                self._send(complete)
        if self.progress is not None:
            self.progress(self.steps, self.total_steps)

    def finish_window(self) -> None:
        ctx_len, n = self.plan[self.index]
        if self.on_frames is not None and self.sent < self.window.N:
            self._send(self.window.N)
        tokens = self.window.tokens()
        self.out.append(tokens[:, ctx_len:])
        if self.on_window is not None:
            self.on_window(WindowEvent(self.index, len(self.plan), self.end - ctx_len, self.context,
                                       tokens[:, ctx_len:], self.chroma))
        self.context, self.end, self.window = tokens, self.end + n, None
        self.index += 1

    def _send(self, upto: int) -> None:
        window = self.window
        columns = torch.arange(self.sent, upto, device=window.seq.device)[None] + 1 + window.delays[:, None]
        self.on_frames(window.seq.gather(1, columns))
        self.sent = upto

    def codes(self) -> torch.Tensor:
        return torch.cat(self.out, dim=1)
