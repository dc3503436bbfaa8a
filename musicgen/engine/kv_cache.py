"""Preallocated attention state for the decoder: the self-attention keys/values of every row, and the
cross-attention keys/values of the text each row is conditioned on.

Positions are always tensors. A 1-D ``pos`` (L,) is shared by all rows (one request, its CFG rows at the same
place); a 2-D ``pos`` (rows, L) gives each row its own positions, so rows can hold different requests at
different points of their sequences. The same code writes a one-token step and a whole prefill, eagerly or
inside a compiled (CUDA-graph) step, where the buffers keep one address for the life of the cache.
"""

from __future__ import annotations

import torch


class KVCache(torch.nn.Module):
    """Keys and values (rows, heads, length, head_dim) for ``rows`` sequences of up to ``length`` positions."""

    def __init__(self, rows: int, heads: int, length: int, head_dim: int, dtype: torch.dtype,
                 device: torch.device, static: bool = False):
        """``static``: mark the buffers as fixed addresses for ``torch.compile`` (what a CUDA graph replays)."""
        super().__init__()
        shape = (rows, heads, length, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        if static:
            torch._dynamo.mark_static_address(self.k)
            torch._dynamo.mark_static_address(self.v)

    @property
    def shape(self) -> torch.Size:
        return self.k.shape

    def reset(self) -> None:
        """Forget every position (a masked read of the whole cache then sees zeros, never stale state)."""
        self.k.zero_()
        self.v.zero_()

    def update(self, pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               rows: slice | torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Write ``k``, ``v`` (n, heads, L, head_dim) into ``rows`` of the cache (a slice, an index tensor
        (n,), or all rows) at positions ``pos`` ((L,) for every row, or (n, L) per row); return the whole
        cache (keys, values)."""
        k, v = k.to(self.k.dtype), v.to(self.v.dtype)
        if pos.dim() == 1 and not isinstance(rows, torch.Tensor):
            keys, values = (self.k, self.v) if rows is None else (self.k[rows], self.v[rows])
            keys.index_copy_(2, pos, k)
            values.index_copy_(2, pos, v)
        else:
            if rows is None:
                rows = torch.arange(k.shape[0], device=k.device)
            elif isinstance(rows, slice):
                rows = torch.arange(rows.start, rows.stop, device=k.device)
            pos = pos.expand(k.shape[0], -1)
            self.k[rows[:, None], :, pos] = k.transpose(1, 2)  # advanced indices first: (n, L, heads, head_dim)
            self.v[rows[:, None], :, pos] = v.transpose(1, 2)
        return self.k, self.v


class CrossKV:
    """The text's cross-attention keys/values for one layer (rows, heads, text length, head_dim), with the
    additive mask of the text's padding (rows, 1, 1, text length), computed once per window."""

    def __init__(self, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor):
        self.k, self.v, self.mask = k, v, mask
