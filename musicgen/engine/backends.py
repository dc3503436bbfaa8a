"""The decoders the engine can drive, behind one interface: ``musicgen.engine.decoder``'s fast decoder (default) and
transformers' own modules (the parity reference)."""

from __future__ import annotations

import logging
from typing import Protocol

import torch

from musicgen.engine.conditioning import Conditioning
from musicgen.engine.decoder import FastDecoder, Segment
from musicgen.engine.graphs import GraphStep, warn_fallback
from musicgen.engine.quant import int8_dynamic_available

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
    """The lean decoder of ``musicgen.engine.decoder``; positions are tracked here, on the host (the extent of the
    cache to read) and as a device tensor (the step's input, updated in place).

    With ``static`` (default: on CUDA) the step is the fixed-shape one of ``musicgen.engine.graphs`` (one slot:
    CUDA graphs on CUDA), the form the scheduler decodes every request in; else the segments' step, which
    reads only the filled part of the cache (cheapest on a CPU)."""

    def __init__(self, hf_decoder, precision: str, compile: bool, static: bool | None, window_len: int,
                 compile_backend="inductor", device: torch.device | None = None):
        """``window_len``: token columns in a full window (the fixed-shape step's cache holds that much)."""
        on_cpu = (device or torch.device("cpu")).type == "cpu"
        if compile and precision == "int8" and on_cpu and int8_dynamic_available():
            # fbgemm's int8 GEMM takes packed weights, an opaque object torch.compile cannot trace
            log.info("MUSICGEN_COMPILE: the decode step stays eager in int8 on a CPU (its quantized matmuls "
                     "cannot be compiled); MUSICGEN_PRECISION=bf16 or fp32 compiles")
            compile = False
        self.decoder = FastDecoder(hf_decoder, precision, compile=compile and not static,
                                   compile_backend=compile_backend, device=device)
        self.static = self.decoder.device.type == "cuda" if static is None else static
        self.compile = compile
        self.window_len = window_len
        self.graph: GraphStep | None = None  # the one-slot fixed-shape step, made on first use
        self._pos = torch.zeros(1, dtype=torch.long, device=self.decoder.device)

    def graph_step(self, slots: int, length: int, text_length: int = 0, sampling: bool | None = False) -> GraphStep:
        """A fixed-shape step of ``slots`` slots over this decoder, compiled when the backend is (``sampling``:
        it samples each attached window's next column too; None: when it records CUDA graphs)."""
        return GraphStep(self.decoder, slots, length, text_length, compile=self.compile, sampling=sampling)

    def start(self, cond: Conditioning, length: int) -> None:
        self.rows, self.prefix, self.filled = cond.rows, cond.prefix, 0
        prefix_len = 0 if cond.prefix is None else cond.prefix.shape[1]
        text = None if cond.text_states is None else self.decoder.text_kv(cond.text_states, cond.text_mask)
        if self.static:
            if self.graph is None:
                self.graph = self.graph_step(1, max(length, self.window_len) + prefix_len)
                self.graph.record()
            self.graph.ensure(prefix_len + length)
            self.text = self.graph.start(0, self.rows, text)
            return
        self.decoder.setup_caches(cond.rows, prefix_len + length)
        self.text = text

    def prefill(self, ids: torch.Tensor) -> torch.Tensor:
        length = ids.shape[-1] + (0 if self.prefix is None else self.prefix.shape[1])
        if self.static:
            self.filled = length
            return self.graph.prefill(0, ids, self.prefix, self.text)
        pos = torch.arange(self.filled, self.filled + length, device=self.decoder.device)
        self.filled += length
        return self.decoder.prefill(ids, Segment(slice(0, self.rows), pos, self.filled, self.text), self.prefix)

    def step(self, ids: torch.Tensor) -> torch.Tensor:
        self.filled += 1
        try:
            return self._step(ids)
        except Exception as exc:  # a compiler failure after warm-up: decode eagerly from here on
            if not self.compiled:
                raise
            warn_fallback(exc, "decoding without torch.compile from now on")
            self.disable_compile()
            return self._step(ids)

    def _step(self, ids: torch.Tensor) -> torch.Tensor:
        if self.static:
            self.graph.set_column(0, ids)
            return self.graph.decode(1, self.filled)[: self.rows]
        self._pos.fill_(self.filled - 1)
        return self.decoder.step(ids, [Segment(slice(0, self.rows), self._pos, self.filled, self.text)])

    @property
    def compiled(self) -> bool:
        return self.graph.compiled if self.static and self.graph is not None else self.decoder.compiled

    def disable_compile(self) -> None:
        self.compile = False
        self.decoder.disable_compile()
        if self.graph is not None:
            self.graph.disable_compile()
