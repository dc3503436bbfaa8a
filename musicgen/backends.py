"""The decoders the engine can drive, behind one interface: ``musicgen.decoder``'s fast decoder (default) and
transformers' own modules (the parity reference)."""

from __future__ import annotations

import logging
from typing import Protocol

import torch

from .conditioning import Conditioning
from .decoder import FastDecoder, Segment

log = logging.getLogger(__name__)


class Backend(Protocol):
    """A decoder with its cache, driven one window at a time: ``start``, one ``prefill`` of the window's
    prompt columns, then one ``step`` per column. Each returns the next column's logits (rows, K, vocab),
    float32."""

    def start(self, cond: Conditioning, length: int) -> None:
        """Prepare for a window of ``length`` token columns under ``cond``."""

    def prefill(self, ids: torch.Tensor) -> torch.Tensor:
        """The window's first columns (rows, K, L)."""

    def step(self, ids: torch.Tensor) -> torch.Tensor:
        """The next column (rows, K, 1)."""


class ReferenceBackend:
    """transformers' own decoder modules with their dynamic cache (the parity reference)."""

    def __init__(self, hf_decoder):
        self.decoder = hf_decoder

    def start(self, cond: Conditioning, length: int) -> None:
        self.cond, self.cache = cond, None

    def _forward(self, ids: torch.Tensor, **kwargs) -> torch.Tensor:
        rows, k, length = ids.shape
        out = self.decoder(input_ids=ids.reshape(rows * k, length), past_key_values=self.cache, use_cache=True,
                           **kwargs)
        self.cache = out.past_key_values
        return out.logits[:, -1, :].float().reshape(rows, k, -1)

    def prefill(self, ids: torch.Tensor) -> torch.Tensor:
        if self.cond.prefix is not None:  # melody checkpoints read their prefix once, with the first tokens
            return self._forward(ids, encoder_hidden_states=self.cond.prefix)
        return self.step(ids)

    def step(self, ids: torch.Tensor) -> torch.Tensor:
        if self.cond.prefix is not None:
            return self._forward(ids)
        return self._forward(ids, encoder_hidden_states=self.cond.text_states,
                             encoder_attention_mask=self.cond.text_mask)


class FastBackend:
    """The lean decoder of ``musicgen.decoder``; positions are tracked here, on the host (the extent of the
    cache to read) and as a device tensor (the step's input, updated in place)."""

    def __init__(self, hf_decoder, precision: str, compile: bool, static: bool | None, window_len: int,
                 compile_backend="inductor", device: torch.device | None = None):
        """``window_len``: token columns in a full window; a static step always allocates that much cache."""
        self.decoder = FastDecoder(hf_decoder, precision, compile=compile, static=static,
                                   compile_backend=compile_backend, device=device)
        self.window_len = window_len
        self._pos = torch.zeros(1, dtype=torch.long, device=self.decoder.device)

    def start(self, cond: Conditioning, length: int) -> None:
        self.rows = cond.rows
        if self.decoder.static:
            # one cache shape (one compiled graph) for every request length, and always the two rows of
            # guidance: a request without it runs its row twice (decoding reads the weights once either way)
            length = max(length, self.window_len)
            cond = _with_rows(cond, STATIC_ROWS)
        self.prefix = cond.prefix
        prefix_len = 0 if cond.prefix is None else cond.prefix.shape[1]
        self.decoder.setup_caches(cond.rows, prefix_len + length)
        self.text = None if cond.text_states is None else self.decoder.text_kv(cond.text_states, cond.text_mask)
        self.filled = 0

    def _rows(self, ids: torch.Tensor) -> torch.Tensor:
        return ids if ids.shape[0] == self.decoder_rows else ids[:1].expand(self.decoder_rows, -1, -1)

    @property
    def decoder_rows(self) -> int:
        return STATIC_ROWS if self.decoder.static else self.rows

    def _segment(self, pos: torch.Tensor) -> Segment:
        return Segment(slice(0, self.decoder_rows), pos, None if self.decoder.static else self.filled, self.text)

    def prefill(self, ids: torch.Tensor) -> torch.Tensor:
        length = ids.shape[-1] + (0 if self.prefix is None else self.prefix.shape[1])
        pos = torch.arange(self.filled, self.filled + length, device=self.decoder.device)
        self.filled += length
        return self.decoder.prefill(self._rows(ids), self._segment(pos), self.prefix)[: self.rows]

    def step(self, ids: torch.Tensor) -> torch.Tensor:
        self._pos.fill_(self.filled)
        self.filled += 1
        ids, segment = self._rows(ids), self._segment(self._pos)
        try:
            logits = self.decoder.step(ids, [segment])
        except Exception as exc:  # a compiler failure after warm-up: decode eagerly from here on
            if not self.decoder.compiled:
                raise
            log.warning("the compiled decode step failed (%s: %s); decoding without torch.compile from now on",
                        type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
            self.decoder.disable_compile()
            logits = self.decoder.step(ids, [segment])
        return logits[: self.rows]


STATIC_ROWS = 2  # conditional + unconditional


def _with_rows(cond: Conditioning, rows: int) -> Conditioning:
    """``cond`` with its first row repeated up to ``rows`` rows."""
    if cond.rows == rows:
        return cond

    def grow(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t[:1].expand(rows, *t.shape[1:])

    return Conditioning(rows, grow(cond.text_states), grow(cond.text_mask), grow(cond.prefix))
