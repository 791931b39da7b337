"""Row gathers and row scatter-adds, in the form each way of running pet computes best.

Eagerly and in TorchScript: ``index_select`` and ``index_add_``. Under torch.compile
(training with ``compile: true``) inductor turns ``index_select``'s gradient, ``index_add_``
and an embedding's gradient into a loop of atomic float additions on the CPU, which two
threads contend for (``index_put`` with ``accumulate``); ``gather`` and ``scatter_add_``
compute the same numbers, and inductor hands a ``scatter_add`` to ATen's kernel instead
(``torch._inductor.config.cpp.fallback_scatter_reduce_sum``). On the carbon benchmark's
batches a compiled training step took 5-6 % less time this way.
"""

import torch
from torch import Tensor


def compiling() -> bool:
    """Whether torch.compile is tracing this (never in TorchScript)."""
    if not torch.jit.is_scripting():  # TorchScript compiles this branch out
        return torch.compiler.is_compiling()
    return False


def pick_rows(x: Tensor, index: Tensor) -> Tensor:
    """``x[index]`` along the first dimension (``x`` with one or two dimensions)."""
    if compiling():
        if x.dim() == 1:
            return torch.gather(x, 0, index)
        return torch.gather(x, 0, index.unsqueeze(1).expand(index.shape[0], x.shape[1]))
    return x.index_select(0, index)


def add_rows_(x: Tensor, index: Tensor, rows: Tensor) -> Tensor:
    """Adds row ``i`` of ``rows`` (``[n, c]``) to row ``index[i]`` of ``x``, in place."""
    if compiling():
        return x.scatter_add_(0, index.unsqueeze(1).expand(rows.shape[0], rows.shape[1]), rows)
    return x.index_add_(0, index, rows)
