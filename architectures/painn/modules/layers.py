"""PaiNN's message and update blocks, on plain tensors.

Every atom carries scalar features ``s`` ``[N, F]`` and vector features ``v``, stored here as
``[3, N, F]`` (Cartesian axis first: multiplying by per-atom or per-pair scalars then
broadcasts over the outermost axis, which is several times faster on CPUs than over a middle
one). Rotations act on the Cartesian axis of ``v`` only. The blocks keep the two kinds
apart: vectors are only ever (i) multiplied by invariant scalars, (ii) mixed by linear maps
*over the feature axis* (``torch.nn.Linear`` without bias acting on the last axis), or (iii)
created from unit edge vectors ``r_ij / |r_ij|``, and scalars only see vectors through
rotation-invariant norms and dot products. So ``s`` is exactly invariant and ``v`` exactly
equivariant, whatever the weights.
"""

from typing import Tuple

import torch
from torch import Tensor


def _mlp(n_in: int, width: int, n_out: int) -> torch.nn.Sequential:
    return torch.nn.Sequential(
        torch.nn.Linear(n_in, width), torch.nn.SiLU(), torch.nn.Linear(width, n_out)
    )


def vector_norm(v: Tensor, eps: float = 1e-8) -> Tensor:
    """``sqrt(|v|^2 + eps)`` over the Cartesian axis of ``[3, N, F]``: smooth at ``v = 0``
    (isolated atoms have zero vectors, and a plain norm has an infinite gradient there)."""
    return torch.sqrt((v * v).sum(dim=0) + eps)


class Message(torch.nn.Module):
    """Continuous-filter convolution from the neighbours ``j`` of each atom ``i``.

    ``(ds, a, b) = phi(s_j) * W(r_ij)`` split in three, with ``W`` a linear map of the radial
    basis times the smooth cutoff; then ``s_i += sum_j ds`` and
    ``v_i += sum_j (a v_j + b r_ij / |r_ij|)``.
    """

    def __init__(self, n_features: int, num_radial: int):
        super().__init__()
        self.n_features = n_features
        self.phi = _mlp(n_features, n_features, 3 * n_features)
        self.filter = torch.nn.Linear(num_radial, 3 * n_features)

    def forward(
        self,
        s: Tensor,
        v: Tensor,
        radial: Tensor,
        switch: Tensor,
        unit: Tensor,
        edge_i: Tensor,
        edge_j: Tensor,
    ) -> Tuple[Tensor, Tensor]:
        """:param radial: ``[E, R]`` basis; ``switch``: ``[E]`` cutoff function; ``unit``:
        ``[3, E]`` unit vectors from ``i`` to ``j``."""
        weights = self.filter(radial) * switch.unsqueeze(-1)
        x = self.phi(s).index_select(0, edge_j) * weights
        ds, a, b = torch.split(x, self.n_features, dim=-1)
        dv = v.index_select(1, edge_j) * a.unsqueeze(0) + unit.unsqueeze(-1) * b.unsqueeze(0)
        s = s.index_add(0, edge_i, ds)
        v = v.index_add(1, edge_i, dv)
        return s, v


class Update(torch.nn.Module):
    """Atom-wise exchange between the scalar and vector features of each atom.

    With ``U v`` and ``V v`` two linear maps over the feature axis and
    ``(a, b, c) = mlp(s, |V v|)``: ``v += a U v`` and ``s += b <U v, V v> + c``.
    """

    def __init__(self, n_features: int):
        super().__init__()
        self.n_features = n_features
        self.u = torch.nn.Linear(n_features, n_features, bias=False)
        self.v = torch.nn.Linear(n_features, n_features, bias=False)
        self.mlp = _mlp(2 * n_features, n_features, 3 * n_features)

    def forward(self, s: Tensor, v: Tensor) -> Tuple[Tensor, Tensor]:
        uv = self.u(v)
        vv = self.v(v)
        x = self.mlp(torch.cat([s, vector_norm(vv)], dim=-1))
        a, b, c = torch.split(x, self.n_features, dim=-1)
        v = v + a.unsqueeze(0) * uv
        s = s + b * (uv * vv).sum(dim=0) + c
        return s, v
