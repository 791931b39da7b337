"""Radial features of the edges: PaiNN's sine basis and a smooth cutoff function."""

import math

import torch
from torch import Tensor


def cutoff_function(r: Tensor, cutoff: float, width: float) -> Tensor:
    """Smooth switch from 1 to 0 over ``[cutoff - width, cutoff]``, exactly 0 beyond.

    ``f(r) = (1 + cos(pi t)) / 2`` with ``t = (r - cutoff + width) / width`` in the switching
    region; with ``width = cutoff`` this is the cosine cutoff of the PaiNN paper. Its first
    derivative vanishes at both ends, so energies *and* forces stay continuous when a
    neighbour crosses the cutoff sphere (every filter is multiplied by ``f``).
    """
    t = ((r - (cutoff - width)) / width).clamp(0.0, 1.0)
    switch = 0.5 * (1.0 + torch.cos(math.pi * t))
    # exactly zero (value and gradient) at and beyond the cutoff, whatever cos(pi) rounds to
    return torch.where(r < cutoff, switch, torch.zeros_like(switch))


class SineBasis(torch.nn.Module):
    """``sin(n pi r / cutoff) / r`` for ``n = 1 .. num_radial`` (PaiNN's radial basis).

    The zeroth-order spherical Bessel functions: smooth for ``r > 0``, finite as ``r -> 0``
    and zero at the cutoff.
    """

    def __init__(self, num_radial: int, cutoff: float):
        super().__init__()
        self.cutoff = float(cutoff)
        orders = torch.arange(1, num_radial + 1, dtype=torch.float64)
        self.register_buffer("orders", orders, persistent=False)

    def forward(self, r: Tensor) -> Tensor:
        """:param r: ``[E]`` distances (positive). :return: ``[E, num_radial]``."""
        r = r.unsqueeze(-1)
        frequencies = self.orders.to(r.dtype) * (math.pi / self.cutoff)
        return torch.sin(frequencies * r) / r
