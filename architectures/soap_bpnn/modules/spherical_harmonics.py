"""Real spherical harmonics as polynomials of the Cartesian components of a unit vector.

For a unit vector ``u = (x, y, z) = (sin(t) cos(p), sin(t) sin(p), cos(t))`` the real spherical
harmonics are (without the Condon-Shortley phase)::

    Y_l0    = N_l0 P_l(z)
    Y_lm    = sqrt(2) N_lm Q_l^m(z) sin^m(t) cos(m p)      m > 0
    Y_l,-m  = sqrt(2) N_lm Q_l^m(z) sin^m(t) sin(m p)      m > 0

with ``N_lm = sqrt((2l + 1) / (4 pi) (l - m)! / (l + m)!)`` and ``Q_l^m = P_l^m / sin^m(t)`` a
polynomial in ``z``. The factors ``sin^m(t) cos(m p)`` and ``sin^m(t) sin(m p)`` are the real and
imaginary parts of ``(x + i y)^m``, polynomials in ``x`` and ``y``. Everything is a polynomial of
``(x, y, z)``: no angles, so nothing is singular at the poles and derivatives of any order exist.

To keep the numbers of order one we run the recurrences directly on ``Qbar_l^m = N_lm Q_l^m``.
With this convention ``Y_1 = sqrt(3 / (4 pi)) * (y, z, x)`` (the usual real-harmonics order).
"""

import math
from typing import List

import torch
from torch import Tensor


def _normalised_legendre(z: Tensor, max_angular: int) -> List[List[Tensor]]:
    """``Qbar_l^m(z) = N_lm P_l^m(z) / sin^m(t)``, returned as ``q[m][l - m]`` for l <= max_angular.

    Recurrences (normalisation folded in, see the module docstring):
        Qbar_m^m     = sqrt((2m + 1) / (2m)) Qbar_{m-1}^{m-1},   Qbar_0^0 = 1 / sqrt(4 pi)
        Qbar_{m+1}^m = sqrt(2m + 3) z Qbar_m^m
        Qbar_l^m     = a_lm z Qbar_{l-1}^m - b_lm Qbar_{l-2}^m
    with a_lm = sqrt((4l^2 - 1) / (l^2 - m^2)),
         b_lm = sqrt((2l + 1) ((l - 1)^2 - m^2) / ((2l - 3) (l^2 - m^2))).
    """
    q: List[List[Tensor]] = []
    q_mm = 1.0 / math.sqrt(4.0 * math.pi)  # Qbar_m^m is a constant
    for m in range(max_angular + 1):
        if m > 0:
            q_mm = q_mm * math.sqrt((2.0 * m + 1.0) / (2.0 * m))
        column: List[Tensor] = [torch.full_like(z, q_mm)]
        if m + 1 <= max_angular:
            column.append(math.sqrt(2.0 * m + 3.0) * q_mm * z)
        for ell in range(m + 2, max_angular + 1):
            a = math.sqrt((4.0 * ell * ell - 1.0) / (ell * ell - m * m))
            b = math.sqrt(
                (2.0 * ell + 1.0)
                * ((ell - 1.0) * (ell - 1.0) - m * m)
                / ((2.0 * ell - 3.0) * (ell * ell - m * m))
            )
            column.append(a * z * column[ell - m - 1] - b * column[ell - m - 2])
        q.append(column)
    return q


def _azimuthal_parts(x: Tensor, y: Tensor, max_angular: int) -> List[List[Tensor]]:
    """``[Re (x + iy)^m, Im (x + iy)^m]`` for m = 1..max_angular, stored at index m - 1.

    For a unit vector these are ``sin^m(t) cos(m p)`` and ``sin^m(t) sin(m p)``.
    """
    parts: List[List[Tensor]] = []
    if max_angular < 1:
        return parts
    c = x
    s = y
    parts.append([c, s])
    for _ in range(2, max_angular + 1):
        # (c + i s) (x + i y)
        c, s = x * c - y * s, x * s + y * c
        parts.append([c, s])
    return parts


def spherical_harmonics_by_l(unit_vectors: Tensor, max_angular: int) -> List[Tensor]:
    """Orthonormal real spherical harmonics of unit vectors, one ``[E, 2l + 1]`` block per ``l``.

    Within a block the order is ``m = -l..l``. Useful when each ``l`` is processed separately: no
    slicing of the full ``[E, (max_angular + 1) ** 2]`` tensor (whose backward is wasteful).
    """
    x = unit_vectors[:, 0]
    y = unit_vectors[:, 1]
    z = unit_vectors[:, 2]
    q = _normalised_legendre(z, max_angular)
    xy = _azimuthal_parts(x, y, max_angular)
    sqrt2 = math.sqrt(2.0)

    blocks: List[Tensor] = []
    for ell in range(max_angular + 1):
        columns: List[Tensor] = []
        for m in range(ell, 0, -1):  # m = -l..-1: sine parts
            columns.append(sqrt2 * q[m][ell - m] * xy[m - 1][1])
        columns.append(q[0][ell])
        for m in range(1, ell + 1):  # m = 1..l: cosine parts
            columns.append(sqrt2 * q[m][ell - m] * xy[m - 1][0])
        blocks.append(torch.stack(columns, dim=-1))
    return blocks


def real_spherical_harmonics(unit_vectors: Tensor, max_angular: int) -> Tensor:
    """Orthonormal real spherical harmonics ``Y_lm(u)`` of unit vectors.

    :param unit_vectors: ``[E, 3]`` unit vectors (the polynomials are only harmonics on the sphere)
    :param max_angular: largest ``l``
    :return: ``[E, (max_angular + 1) ** 2]``, l-major, ``m = -l..l`` within each ``l``
    """
    return torch.cat(spherical_harmonics_by_l(unit_vectors, max_angular), dim=-1)


class SphericalHarmonics(torch.nn.Module):
    """Module wrapper around :func:`real_spherical_harmonics` with a fixed ``max_angular``."""

    def __init__(self, max_angular: int):
        super().__init__()
        if max_angular < 0:
            raise ValueError(f"max_angular must be >= 0, got {max_angular}")
        self.max_angular = max_angular

    def forward(self, unit_vectors: Tensor) -> Tensor:
        return real_spherical_harmonics(unit_vectors, self.max_angular)
