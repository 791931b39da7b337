"""Smooth cutoff function and radial basis for the SOAP density expansion."""

import math
from typing import Tuple

import torch
from torch import Tensor


def cosine_cutoff(r: Tensor, cutoff: float, width: float) -> Tensor:
    """Smooth switch from 1 to 0 over ``[cutoff - width, cutoff]``.

    ``f(r) = 1`` for ``r <= cutoff - width``, ``(1 + cos(pi t)) / 2`` with
    ``t = (r - cutoff + width) / width`` in between, and exactly 0 for ``r >= cutoff``. The first
    derivative is continuous (zero at both ends of the switching region), so energies and forces are
    continuous when a neighbour enters or leaves the cutoff sphere.

    :param r: distances, any shape
    :param cutoff: where the function reaches zero
    :param width: width of the switching region, ``0 < width <= cutoff``
    """
    t = ((r - (cutoff - width)) / width).clamp(0.0, 1.0)
    switch = 0.5 * (1.0 + torch.cos(math.pi * t))
    # `where` makes the value (and its gradient) exactly zero at and beyond the cutoff, whatever
    # the rounding of cos(pi) is
    return torch.where(r < cutoff, switch, torch.zeros_like(switch))


def cosine_cutoff_derivative(r: Tensor, cutoff: float, width: float) -> Tensor:
    """``d f / d r`` of :func:`cosine_cutoff`: ``-pi / (2 width) sin(pi t)`` inside the switching
    region, exactly 0 elsewhere (``sin(pi t)`` vanishes at both of its ends)."""
    t = ((r - (cutoff - width)) / width).clamp(0.0, 1.0)
    slope = (-0.5 * math.pi / width) * torch.sin(math.pi * t)
    return torch.where(r < cutoff, slope, torch.zeros_like(slope))


class RadialBasis(torch.nn.Module):
    """Spherical Bessel functions of order zero, one per ``n``, shared by all ``l``.

    ``R_n(r) = sqrt(2 / cutoff) sin(n pi r / cutoff) / r`` for ``n = 1..max_radial``. These are
    ``j_0(k_n r)`` (up to a constant) with ``k_n`` chosen so that they vanish at the cutoff, and are
    orthonormal on ``[0, cutoff]`` with the weight ``r^2`` (the radial measure in 3D). They do *not*
    include the smooth cutoff function: multiply by :func:`cosine_cutoff` to get a basis going
    smoothly to zero (the SOAP module does).

    Input distances must be strictly positive (neighbour lists never contain ``r = 0``).
    """

    def __init__(self, max_radial: int, cutoff: float):
        super().__init__()
        if max_radial < 1:
            raise ValueError(f"max_radial must be >= 1, got {max_radial}")
        if cutoff <= 0.0:
            raise ValueError(f"cutoff must be > 0, got {cutoff}")
        self.max_radial = max_radial
        self.cutoff = float(cutoff)
        self.normalisation = math.sqrt(2.0 / self.cutoff)
        # integer buffer: keeps its dtype when the module is moved with `.to(dtype)`
        self.register_buffer(
            "n", torch.arange(1, max_radial + 1, dtype=torch.int64), persistent=False
        )

    def forward(self, r: Tensor) -> Tensor:
        """:param r: ``[E]`` distances. :return: ``[E, max_radial]``."""
        k = self.n.to(r.dtype) * (math.pi / self.cutoff)  # wave numbers k_n = n pi / cutoff
        r = r.unsqueeze(-1)
        return self.normalisation * torch.sin(k * r) / r

    def times(self, r: Tensor, envelope: Tensor) -> Tensor:
        """``R_n(r) * envelope`` (``[E, max_radial]``) with a single pass over the result: the
        per-edge factor ``normalisation * envelope / r`` is formed on ``[E]`` first."""
        k = self.n.to(r.dtype) * (math.pi / self.cutoff)
        return torch.sin(r.unsqueeze(-1) * k) * (self.normalisation * envelope / r).unsqueeze(-1)

    def times_with_derivative(
        self, r: Tensor, envelope: Tensor, envelope_derivative: Tensor
    ) -> Tuple[Tensor, Tensor]:
        """``R_n(r) * envelope`` and its derivative with respect to ``r`` (``[E, max_radial]``
        each), for gradients computed without autograd. With ``f = normalisation * envelope /
        r``: ``d/dr (sin(k r) f) = k cos(k r) f + sin(k r) f'``."""
        k = self.n.to(r.dtype) * (math.pi / self.cutoff)
        factor = self.normalisation * envelope / r
        factor_derivative = self.normalisation * envelope_derivative / r - factor / r
        phase = r.unsqueeze(-1) * k
        sine = torch.sin(phase)
        values = sine * factor.unsqueeze(-1)
        derivative = torch.cos(phase) * (k * factor.unsqueeze(-1)) + sine * (
            factor_derivative.unsqueeze(-1)
        )
        return values, derivative
