"""What a decode step must read, and how close a measured speed comes to the memory bandwidth (docs/performance.md,
"Against the roofline").

Decoding is bound by memory bandwidth: every step reads every decoder weight once, whoever it serves, and each
request's rows read their own keys and values. So the least a step can read is

    weights as stored + sum over the rows decoding of (self-attention positions + cross-attended text tokens)
                        x layers x 2 (K and V) x hidden x bytes per cached value

and the fraction of the card a run achieves is (those bytes, summed over its steps) / wall time / the card's
measured copy bandwidth (bytes read plus bytes written per second by a device-to-device copy, the rate a
memory-bound kernel can at best reach). Everything else a step reads (activations, logits, masks) is small
beside these and is not counted, so the fraction is what the useful bytes achieve.
"""

from __future__ import annotations

import time

import torch

from musicgen.engine.graphs import ROWS_PER_SLOT


def kv_bytes_per_position(layers: int, hidden: int, state_bytes: int) -> int:
    """Bytes of keys and values one row caches per position, over every layer (melody in bf16:
    48 x 2 x 1536 x 2 = 294,912)."""
    return layers * 2 * hidden * state_bytes


def request_bytes(per_position: int, steps: int, prefix: int, text_tokens: int = 0,
                  rows: int = ROWS_PER_SLOT) -> int:
    """Keys and values a request's ``rows`` read over ``steps`` decode steps that start after ``prefix``
    prefilled positions (step i attends prefix + i positions), each step also cross-attending
    ``text_tokens`` (plain checkpoints; melody ones condition through the prefix)."""
    positions = steps * prefix + steps * (steps + 1) // 2 + steps * text_tokens
    return rows * per_position * positions


def run_bytes(weight_bytes: int, shared_steps: int, requests: list[int]) -> int:
    """What a run must read: the weights once per shared step, and every request's own keys and values."""
    return weight_bytes * shared_steps + sum(requests)


def fraction(bytes_read: float, seconds: float, bandwidth: float) -> float:
    """The share of ``bandwidth`` (bytes/s) that reading ``bytes_read`` in ``seconds`` achieved."""
    return bytes_read / seconds / bandwidth


def copy_bandwidth(device: torch.device, size: int = 1 << 30, repeats: int = 20) -> float:
    """Bytes read plus bytes written per second by a device-to-device copy of ``size`` bytes (the best of a
    few timed batches)."""
    src = torch.empty(size, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(3):
        dst.copy_(src)
        _sync(device)
        started = time.perf_counter()
        for _ in range(repeats):
            dst.copy_(src)
        _sync(device)
        best = min(best, (time.perf_counter() - started) / repeats)
    del src, dst
    return 2 * size / best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
