"""How many kernels one layer of the served decode step launches once compiled (docs/performance.md, "Kernels per
layer"): the step is compiled by inductor with one and with two decoder layers, and the launches in each
compiled program's ``call`` are counted; the difference is one layer's. Counting the program (not timing it)
means the figure holds on a machine where no timing means anything, and the same code counts Triton
launches on a GPU.

Launches counted: inductor's generated kernels (C++ on a CPU, Triton on a GPU: each fuses several
pointwise/reduction ops), external kernels (GEMMs and attention from BLAS/oneDNN/cuBLAS) and any ATen op
the compiler left as a fallback.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch._inductor.utils import run_and_get_code

from musicgen.engine.engine import Engine
from musicgen.engine.graphs import TEXT_BUCKET

GENERATED = re.compile(r"^\s+(?:cpp_fused_\w+\(|triton_\w+\.run\()", re.M)
EXTERN = re.compile(r"^\s+(?:buf\w+ = )?extern_kernels\.\w+\(", re.M)
FALLBACK = re.compile(r"^\s+(?:buf\w+ = )?torch\.ops\.\w+\.\w+", re.M)


@dataclass(frozen=True)
class Kernels:
    generated: int  # inductor's own fused kernels
    extern: int  # library kernels (GEMMs, attention)
    fallback: int  # ATen ops the compiler left as they are

    @property
    def total(self) -> int:
        return self.generated + self.extern + self.fallback

    def __sub__(self, other: Kernels) -> Kernels:
        return Kernels(self.generated - other.generated, self.extern - other.extern, self.fallback - other.fallback)


def step_kernels(load_model: Callable[[], tuple], layers: int, precision: str, device: torch.device,
                 slots: int = 2, keys: int = 256) -> Kernels:
    """The launches of one compiled fixed-shape step of ``slots`` active requests reading ``keys`` positions,
    the decoder cut to its first ``layers`` layers (``load_model()`` returns a fresh (model, tokenizer))."""
    model, tokenizer = load_model()
    inner = model.decoder.model.decoder
    inner.layers = torch.nn.ModuleList(list(inner.layers)[:layers])
    model.decoder.config.num_hidden_layers = layers
    engine = Engine(model.to(device), tokenizer, precision=precision, static_step=True)
    graph = engine.backend.graph_step(slots, keys, TEXT_BUCKET)
    graph._fn = graph._compiled()
    torch._dynamo.reset()  # a program compiled earlier in the process would be reused, its code not shown
    with torch.inference_mode():
        _, programs = run_and_get_code(graph._run, (slots, keys, TEXT_BUCKET if graph.text else 0))
    calls = [code[code.index("def call("):] for code in programs if "def call(" in code]
    count = lambda pattern: sum(len(pattern.findall(code)) for code in calls)  # noqa: E731
    return Kernels(count(GENERATED), count(EXTERN), count(FALLBACK))


def per_layer(load_model: Callable[[], tuple], precision: str, device: torch.device) -> Kernels:
    """One decoder layer's launches in the compiled step: the step with two layers less the step with one."""
    return step_kernels(load_model, 2, precision, device) - step_kernels(load_model, 1, precision, device)
