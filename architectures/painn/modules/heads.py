"""Heads of generic targets that read PaiNN's own equivariant vector features.

Scalars (rank 0) are a small network of the invariant features ``s``. Vectors (rank 1) are
gated linear maps of the vector features, ``sum_c g_c(s) (W v)_c``; symmetric rank-2 tensors
are gated sums of outer products ``sum_c g_c(s) (W v)_c ⊗ (W v)_c`` plus an isotropic part
``h(s) I`` (the paper's polarizability has the same two parts). ``W`` mixes the feature axis
only, so vectors rotate as ``R v`` and tensors as ``R T R^T``, exactly.
"""

import torch
from torch import Tensor

from .layers import _mlp


class EquivariantHead(torch.nn.Module):
    """Per-atom values ``[N, C, k]`` (C = 1, 3 or 9 components, k sub-targets) from the scalar
    features ``[N, F]`` and vector features ``[N, 3, F]`` of the atoms."""

    def __init__(
        self, n_features: int, rank: int, num_subtargets: int, width: int = 32, channels: int = 8
    ):
        super().__init__()
        self.rank = rank
        self.k = num_subtargets
        self.channels = channels
        # scalars: the values; vectors and tensors: one gate per sub-target and channel
        n_out = num_subtargets if rank == 0 else num_subtargets * channels
        self.network = _mlp(n_features, width, n_out)
        # (modules a rank does not use are identities, so that no weight goes untrained)
        self.vectors: torch.nn.Module = torch.nn.Identity()
        if rank > 0:
            self.vectors = torch.nn.Linear(n_features, num_subtargets * channels, bias=False)
        # the isotropic (trace) part of a rank-2 tensor, an invariant of the atom
        self.isotropic: torch.nn.Module = torch.nn.Identity()
        if rank == 2:
            self.isotropic = _mlp(n_features, width, num_subtargets)

    def forward(self, s: Tensor, v: Tensor) -> Tensor:
        n_atoms = s.shape[0]
        if self.rank == 0:
            return self.network(s).reshape(n_atoms, 1, self.k)
        gates = self.network(s).reshape(n_atoms, 1, self.k, self.channels)
        vectors = self.vectors(v).reshape(n_atoms, 3, self.k, self.channels)
        if self.rank == 1:
            return (gates * vectors).sum(dim=-1)
        outer = torch.einsum("nakc,nbkc->nabk", vectors, vectors * gates)
        eye = torch.eye(3, dtype=s.dtype, device=s.device).reshape(1, 3, 3, 1)
        tensors = outer + eye * self.isotropic(s).reshape(n_atoms, 1, 1, self.k)
        return tensors.reshape(n_atoms, 9, self.k)
