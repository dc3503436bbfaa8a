"""What a piece of code asks of PyTorch, counted by operator: the tests' check that a decode step reads nothing back
from the device, and ``bench/step_ops.py``'s count of the calls a step makes outside the decoder."""

from __future__ import annotations

from torch.utils._python_dispatch import TorchDispatchMode


class Ops(TorchDispatchMode):
    """Inside ``with Ops() as recorded:``, every ATen operator call: ``recorded.ops`` holds their names
    (``index_put_``, ``_local_scalar_dense``, …), ``recorded.count`` how many calls there were."""

    def __init__(self):
        super().__init__()
        self.ops: set[str] = set()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.add(func.overloadpacket.__name__)
        self.count += 1
        return func(*args, **(kwargs or {}))
