"""Per-row key reads for the fixed-shape decode step: each row reads only the key blocks its own position has
reached, whoever else decodes beside it.

The fixed-shape step (``musicgen.engine.graphs``) batches every request in flight into one attention call. With
a dense kernel every row reads the cache up to the longest active row (rounded to a bucket): beside a 30 s
request, a request that has just started reads 30 s of keys it masks away, up to ~1.5x the bytes the rows
need with staggered lengths. Reading the cache is most of a long step's traffic after the weights.

The choice, among the ways to give each row its own length:

- PyTorch's FlexAttention (``torch.nn.attention.flex_attention``), chosen: it ships with torch (nothing to
  install on a bare GPU image), its compiled decode kernel walks, per row, only the key blocks a ``BlockMask``
  lists, and that mask is built here from the rows' positions with tensor ops on the device — no host sync, so
  the step stays one CUDA graph. Rows read their keys in whole blocks of ``KEY_BLOCK`` positions: at most
  ``KEY_BLOCK - 1`` positions more than they need (``positions_read``), ≤ 1.1x over staggered 10–30 s rows.
  Because the mask, not the tensor's extent, bounds the reads, the step no longer needs one graph per key
  length: it takes the whole cache, and the graphs are one per (slot, text) bucket.
- per-slot key buckets: one graph per combination of the slots' lengths — thousands of graphs for 8 slots;
- a split-KV decode kernel from a package (flash-attn's ``flash_attn_with_kvcache``): its wheels must match the
  exact torch and CUDA build and are over 100 MiB, more than can travel to a bare machine.

FlexAttention runs fused only when compiled (eagerly it materialises every score: no saving), so the step
uses it only when compiled, on CUDA by default; if compiling it fails, the step falls back to the dense
read (``GraphStep.record``) and says so. On a CPU the served step is the segments' step, which already reads
each request's own keys. The step is compiled with symbolic sizes (one compilation serves every bucket), and
inductor's split-KV decode kernel needs a static batch, so it takes its main FlexAttention kernel: the same
blocks read, one program per row and head, no split of a row's keys. Whether a static batch (one compilation
per slot bucket) pays for itself is for a GPU run to measure.
"""

from __future__ import annotations

import inspect

import torch

KEY_BLOCK = 128  # positions per key block a row reads (FlexAttention's default sparse block)

try:
    from torch.nn.attention.flex_attention import BlockMask, flex_attention
except ImportError:  # an old torch: the dense read only
    BlockMask = flex_attention = None

# an inference-only mask need not build the transposed (query-block) index the backward pass uses
_NO_Q_BLOCKS = ({"compute_q_blocks": False} if BlockMask is not None
                and "compute_q_blocks" in inspect.signature(BlockMask.from_kv_blocks).parameters else {})


def available() -> bool:
    """Whether this torch has FlexAttention."""
    return flex_attention is not None


def row_blocks(pos: torch.Tensor, kv_len: int) -> BlockMask:
    """The blocks of keys each row reads for one decode step: row r (at position ``pos[r]``) reads the blocks
    up to the one holding its own position, under a causal mask (keys after its position hidden), and
    nothing after. ``kv_len``: the extent of the key tensor attended over, a multiple of ``KEY_BLOCK``. Built
    on the device from ``pos`` (rows,), without a host sync. Every block is given as a masked one (none as
    "full"): the mask costs one comparison per score, and inductor's CPU kernel miscompiles the mixed form."""
    rows, blocks = pos.shape[0], kv_len // KEY_BLOCK
    count = (torch.div(pos, KEY_BLOCK, rounding_mode="floor") + 1).to(torch.int32).view(rows, 1, 1)
    order = torch.arange(blocks, dtype=torch.int32, device=pos.device).expand(rows, 1, 1, blocks)

    def visible(batch, head, q_idx, kv_idx):
        return kv_idx <= pos[batch]

    return BlockMask.from_kv_blocks(count, order, BLOCK_SIZE=KEY_BLOCK, mask_mod=visible, seq_lengths=(1, kv_len),
                                    **_NO_Q_BLOCKS)


def attend(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: BlockMask) -> torch.Tensor:
    """softmax(q k^T / sqrt(D)) v over the blocks ``mask`` lists for each row (q: (rows, heads, 1, D))."""
    return flex_attention(q, keys, values, block_mask=mask)


def positions_read(mask: BlockMask) -> torch.Tensor:
    """The key positions each row of ``mask`` reads: (rows,) int64 (its blocks times their size)."""
    blocks = mask.kv_num_blocks.long() + (0 if mask.full_kv_num_blocks is None else mask.full_kv_num_blocks.long())
    return blocks.sum(dim=(1, 2)) * mask.BLOCK_SIZE[1]
