"""Smooth cutoff function and radial features of the edge tokens."""

import math

import torch
from torch import Tensor


def cutoff_function(r: Tensor, cutoff: float, width: float) -> Tensor:
    """Smooth switch from 1 to 0 over ``[cutoff - width, cutoff]``, exactly 0 beyond.

    ``f(r) = (1 + cos(pi t)) / 2`` with ``t = (r - cutoff + width) / width`` in the switching
    region. Its first derivative vanishes at both ends, so energies *and* forces stay continuous
    when a neighbour crosses the cutoff sphere (every edge enters PET weighted by ``f``).
    """
    t = ((r - (cutoff - width)) / width).clamp(0.0, 1.0)
    switch = 0.5 * (1.0 + torch.cos(math.pi * t))
    # exactly zero (value and gradient) at and beyond the cutoff, whatever cos(pi) rounds to
    return torch.where(r < cutoff, switch, torch.zeros_like(switch))


class GaussianBasis(torch.nn.Module):
    """``num_radial`` Gaussians of the distance, centred evenly on ``[0, cutoff]``.

    Smooth everywhere (no ``1/r``), so the token embedding is smooth in the positions; they
    need not vanish at the cutoff since the cutoff enters through the attention weights.
    """

    def __init__(self, num_radial: int, cutoff: float):
        super().__init__()
        self.num_radial = num_radial
        self.cutoff = float(cutoff)
        # width ~ spacing of the centres, so neighbouring Gaussians overlap
        self.inverse_width = float(max(num_radial - 1, 1)) / self.cutoff
        self.register_buffer("steps", torch.arange(num_radial, dtype=torch.int64), persistent=False)

    def forward(self, r: Tensor) -> Tensor:
        """:param r: ``[E]`` distances. :return: ``[E, num_radial]``."""
        centres = self.steps.to(r.dtype) * (self.cutoff / max(self.num_radial - 1, 1))
        return torch.exp(-(((r.unsqueeze(-1) - centres) * self.inverse_width) ** 2))
