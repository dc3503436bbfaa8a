"""The peak memory of the tensors torch operations create, on the CPU, where torch keeps no allocator statistics:
a dispatch mode that counts each new storage once while any tensor of it is alive. Used by the tests to check the
memory plan's bounds (``MultiBandDiffusion.working_bytes``) against what a decode really allocates."""

from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class PeakBytes(TorchDispatchMode):
    """``with PeakBytes() as peak: ...``; then ``peak.peak``: the most bytes of op-created tensors alive at once
    (inputs made before the block are not counted), ``peak.live``: those still alive."""

    def __init__(self):
        super().__init__()
        self._storages: dict[int, list[int]] = {}  # data pointer -> [tensors alive, bytes]
        self.live = self.peak = 0

    def _release(self, key: int) -> None:
        entry = self._storages[key]
        entry[0] -= 1
        if entry[0] == 0:
            del self._storages[key]
            self.live -= entry[1]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if not isinstance(tensor, torch.Tensor) or tensor.device.type == "meta":
                continue
            storage = tensor.untyped_storage()
            key = storage.data_ptr()
            if key not in self._storages:
                self._storages[key] = [0, storage.nbytes()]
                self.live += storage.nbytes()
                self.peak = max(self.peak, self.live)
            self._storages[key][0] += 1
            weakref.finalize(tensor, self._release, key)
        return out
