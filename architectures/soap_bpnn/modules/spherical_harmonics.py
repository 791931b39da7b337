"""Real spherical harmonics as one matrix product with Cartesian monomials of a unit vector.

For a unit vector ``u = (x, y, z) = (sin(t) cos(p), sin(t) sin(p), cos(t))`` the real spherical
harmonics are (without the Condon-Shortley phase)::

    Y_l0    = N_l0 P_l(z)
    Y_lm    = sqrt(2) N_lm Q_l^m(z) sin^m(t) cos(m p)      m > 0
    Y_l,-m  = sqrt(2) N_lm Q_l^m(z) sin^m(t) sin(m p)      m > 0

with ``N_lm = sqrt((2l + 1) / (4 pi) (l - m)! / (l + m)!)`` and ``Q_l^m = P_l^m / sin^m(t)`` a
polynomial in ``z``. The factors ``sin^m(t) cos(m p)`` and ``sin^m(t) sin(m p)`` are the real and
imaginary parts of ``(x + i y)^m``: every ``Y_lm`` is a polynomial of ``(x, y, z)``, with no
angles, so nothing is singular at the poles and derivatives of any order exist.

On the unit sphere ``x^2 + y^2 + z^2 = 1``, so multiplying the terms of degree ``d < l`` by
powers of it turns ``Y_lm`` into a *homogeneous* polynomial of degree ``l``, and again by
powers of it into one of degree ``L`` or ``L - 1`` (``L = max_angular``, the one with the parity
of ``l``). So all harmonics up to ``L`` are one constant matrix applied to the monomials
``x^a y^b z^c`` of degrees ``L - 1`` and ``L`` (``(L + 1)^2`` of them, as many as harmonics)::

    Y(u) = monomials(u) @ C

The coefficients ``C`` are computed once, in float64, by running the usual recurrences on
polynomials (:func:`harmonic_coefficients`). Evaluating is a handful of products of columns
and one matrix product, and its backward is as cheap: much less work than the recurrences on
``[E]`` vectors, and the SOAP density can even be accumulated in the monomial basis and
converted afterwards (``c = (sum_j R_j monomials_j) @ C``, see ``soap.py``). With this
convention ``Y_1 = sqrt(3 / (4 pi)) * (y, z, x)`` (the usual real-harmonics order).
"""

import math
from typing import Callable, Dict, List, Tuple

import torch
from torch import Tensor

Monomial = Tuple[int, int, int]
Polynomial = Dict[Monomial, float]


def monomial_degrees(max_angular: int) -> List[int]:
    """The degrees of the monomials the harmonics up to ``max_angular`` are written in."""
    return [d for d in (max_angular - 1, max_angular) if d >= 0]


def monomials_of_degree(degree: int) -> List[Monomial]:
    """Exponents ``(a, b, c)`` of ``x^a y^b z^c`` with ``a + b + c = degree``, a fixed order."""
    return [
        (a, b, degree - a - b) for a in range(degree, -1, -1) for b in range(degree - a, -1, -1)
    ]


def _add(p: Polynomial, q: Polynomial, factor: float = 1.0) -> Polynomial:
    out = dict(p)
    for key, value in q.items():
        out[key] = out.get(key, 0.0) + factor * value
    return out


def _multiply(p: Polynomial, q: Polynomial) -> Polynomial:
    out: Polynomial = {}
    for (a, b, c), u in p.items():
        for (d, e, f), v in q.items():
            key = (a + d, b + e, c + f)
            out[key] = out.get(key, 0.0) + u * v
    return out


def _homogeneous(p: Polynomial, degree: int) -> Polynomial:
    """``p`` with each term of degree ``d`` multiplied by ``(x^2 + y^2 + z^2)^((degree - d)/2)``
    (the same function on the unit sphere); ``p``'s degrees must have the parity of ``degree``."""
    r2: Polynomial = {(2, 0, 0): 1.0, (0, 2, 0): 1.0, (0, 0, 2): 1.0}
    out: Polynomial = {}
    for key, value in p.items():
        term: Polynomial = {key: value}
        for _ in range((degree - sum(key)) // 2):
            term = _multiply(term, r2)
        out = _add(out, term)
    return out


def monomial_derivatives(max_angular: int) -> Tensor:
    """``D`` (float64, ``[(L + 1)^2, 3 Ml]``) with the derivatives of the monomials::

        d monomial_m / d u_axis = sum_q lower_q(u) D[m, axis * Ml + q]

    where ``lower`` are the monomials one degree lower than those of :func:`monomial_degrees`
    (``Ml`` of them, see :meth:`SphericalHarmonics.monomials_and_lower`): the derivative of
    ``x^a y^b z^c`` with respect to ``x`` is ``a x^(a-1) y^b z^c``, and so on."""
    monomials = [m for d in monomial_degrees(max_angular) for m in monomials_of_degree(d)]
    lower = [m for d in monomial_degrees(max_angular) if d >= 1 for m in monomials_of_degree(d - 1)]
    index = {monomial: q for q, monomial in enumerate(lower)}
    derivatives = torch.zeros(len(monomials), 3 * len(lower), dtype=torch.float64)
    for row, monomial in enumerate(monomials):
        for axis in range(3):
            if monomial[axis] > 0:
                reduced = list(monomial)
                reduced[axis] -= 1
                column = axis * len(lower) + index[(reduced[0], reduced[1], reduced[2])]
                derivatives[row, column] = float(monomial[axis])
    return derivatives


def _legendre_polynomials(max_angular: int) -> List[List[Polynomial]]:
    """``Qbar_l^m(z) = N_lm P_l^m(z) / sin^m(t)`` as polynomials in z, stored as ``q[m][l - m]``.

    Recurrences (normalisation folded in):
        Qbar_m^m     = sqrt((2m + 1) / (2m)) Qbar_{m-1}^{m-1},   Qbar_0^0 = 1 / sqrt(4 pi)
        Qbar_{m+1}^m = sqrt(2m + 3) z Qbar_m^m
        Qbar_l^m     = a_lm z Qbar_{l-1}^m - b_lm Qbar_{l-2}^m
    with a_lm = sqrt((4l^2 - 1) / (l^2 - m^2)),
         b_lm = sqrt((2l + 1) ((l - 1)^2 - m^2) / ((2l - 3) (l^2 - m^2))).
    """
    z: Polynomial = {(0, 0, 1): 1.0}
    q: List[List[Polynomial]] = []
    q_mm = 1.0 / math.sqrt(4.0 * math.pi)
    for m in range(max_angular + 1):
        if m > 0:
            q_mm *= math.sqrt((2.0 * m + 1.0) / (2.0 * m))
        column: List[Polynomial] = [{(0, 0, 0): q_mm}]
        if m + 1 <= max_angular:
            column.append({(0, 0, 1): math.sqrt(2.0 * m + 3.0) * q_mm})
        for ell in range(m + 2, max_angular + 1):
            a = math.sqrt((4.0 * ell * ell - 1.0) / (ell * ell - m * m))
            b = math.sqrt(
                (2.0 * ell + 1.0)
                * ((ell - 1.0) * (ell - 1.0) - m * m)
                / ((2.0 * ell - 3.0) * (ell * ell - m * m))
            )
            previous = {k: a * v for k, v in _multiply(z, column[ell - m - 1]).items()}
            column.append(_add(previous, column[ell - m - 2], -b))
        q.append(column)
    return q


def _azimuthal_polynomials(max_angular: int) -> List[Tuple[Polynomial, Polynomial]]:
    """``(Re, Im)`` of ``(x + i y)^m`` for m = 0..max_angular."""
    parts: List[Tuple[Polynomial, Polynomial]] = [({(0, 0, 0): 1.0}, {})]
    for _ in range(max_angular):
        c, s = parts[-1]
        # (c + i s) (x + i y) = (x c - y s) + i (x s + y c)
        x: Polynomial = {(1, 0, 0): 1.0}
        y: Polynomial = {(0, 1, 0): 1.0}
        parts.append(
            (
                _add(_multiply(x, c), _multiply(y, s), -1.0),
                _add(_multiply(x, s), _multiply(y, c)),
            )
        )
    return parts


def harmonic_coefficients(max_angular: int) -> Tensor:
    """``C`` (float64) with ``Y(u) = monomials(u) @ C`` on the unit sphere.

    Rows: the monomials of :func:`monomial_degrees`, degree by degree, each in the order of
    :func:`monomials_of_degree`. Columns: ``(l, m)``, l-major, ``m = -l..l``.
    """
    q = _legendre_polynomials(max_angular)
    xy = _azimuthal_polynomials(max_angular)
    degrees = monomial_degrees(max_angular)
    rows: Dict[Monomial, int] = {}
    for degree in degrees:
        for monomial in monomials_of_degree(degree):
            rows[monomial] = len(rows)
    coefficients = torch.zeros(len(rows), (max_angular + 1) ** 2, dtype=torch.float64)
    sqrt2 = math.sqrt(2.0)
    for ell in range(max_angular + 1):
        target = max_angular if (max_angular - ell) % 2 == 0 else max_angular - 1
        for m in range(-ell, ell + 1):
            if m == 0:
                polynomial = q[0][ell]
            else:
                part = xy[abs(m)][1 if m < 0 else 0]
                polynomial = {
                    k: sqrt2 * v for k, v in _multiply(q[abs(m)][ell - abs(m)], part).items()
                }
            for monomial, value in _homogeneous(polynomial, target).items():
                coefficients[rows[monomial], ell * ell + ell + m] += value
    return coefficients


class SphericalHarmonics(torch.nn.Module):
    """Orthonormal real spherical harmonics ``Y_lm(u)`` of unit vectors up to ``max_angular``.

    ``forward(u)`` returns ``[E, (max_angular + 1) ** 2]``, l-major, ``m = -l..l`` within each
    ``l``; :meth:`monomials` and the float64 buffer ``coefficients`` give the two factors of
    ``Y = monomials(u) @ coefficients``. Buffers are constants, not saved in state dicts.
    """

    def __init__(self, max_angular: int):
        super().__init__()
        if max_angular < 0:
            raise ValueError(f"max_angular must be >= 0, got {max_angular}")
        self.max_angular = max_angular
        self.n_monomials = (max_angular + 1) ** 2
        self.register_buffer("coefficients", harmonic_coefficients(max_angular), persistent=False)
        # integer-valued: exact in any float dtype
        self.register_buffer("derivatives", monomial_derivatives(max_angular), persistent=False)

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> "SphericalHarmonics":
        # constants stay float64 whatever the module's dtype: `.to(float32)` would round them,
        # and a model made float32 and back to float64 (`mtt export --dtype float64` of a
        # float32 checkpoint) would only be float32-accurate
        module = super()._apply(fn, recurse)
        exact = harmonic_coefficients(self.max_angular)
        self.coefficients = exact.to(self.coefficients.device)
        self.derivatives = monomial_derivatives(self.max_angular).to(self.coefficients.device)
        return module

    def _by_degree(self, unit_vectors: Tensor) -> List[Tensor]:
        """Monomials of each degree ``0..L``, in the order of :func:`monomials_of_degree`: those
        of degree ``d`` are ``x`` times all those of degree ``d - 1``, then ``y`` times the last
        ``d`` of them (those without ``x``), then ``z`` times the last one (``z^(d - 1)``):
        three broadcast products."""
        blocks = [torch.ones_like(unit_vectors[:, :1])]
        if self.max_angular > 0:
            blocks.append(unit_vectors)
        x = unit_vectors[:, 0:1]
        y = unit_vectors[:, 1:2]
        z = unit_vectors[:, 2:3]
        for degree in range(2, self.max_angular + 1):
            previous = blocks[-1]
            blocks.append(
                torch.cat([x * previous, y * previous[:, -degree:], z * previous[:, -1:]], dim=1)
            )
        return blocks

    def monomials(self, unit_vectors: Tensor) -> Tensor:
        """``[E, (max_angular + 1) ** 2]``: ``x^a y^b z^c`` of degrees ``L - 1`` and ``L``."""
        blocks = self._by_degree(unit_vectors)
        return torch.cat(blocks[-2:], dim=1)

    def monomials_and_lower(self, unit_vectors: Tensor) -> Tuple[Tensor, Tensor]:
        """The monomials and those one degree lower (``L - 2`` and ``L - 1``; the rows of
        ``derivatives``), ``[E, Ml]``, empty for ``L = 0``: two views of one ``[E, ...]``
        tensor of the degrees ``L - 2..L``, which shares degree ``L - 1``."""
        blocks = self._by_degree(unit_vectors)
        if self.max_angular == 0:
            return blocks[0], unit_vectors[:, :0]
        kept = blocks[-3:] if self.max_angular > 1 else blocks
        joined = torch.cat(kept, dim=1)
        if self.max_angular == 1:
            return joined, joined[:, :1]
        n_lowest = kept[0].shape[1]
        return joined[:, n_lowest:], joined[:, : n_lowest + kept[1].shape[1]]

    def forward(self, unit_vectors: Tensor) -> Tensor:
        return self.monomials(unit_vectors) @ self.coefficients.to(unit_vectors.dtype)


def real_spherical_harmonics(unit_vectors: Tensor, max_angular: int) -> Tensor:
    """Orthonormal real spherical harmonics ``Y_lm(u)`` of unit vectors (not TorchScript; use
    :class:`SphericalHarmonics` in models).

    :param unit_vectors: ``[E, 3]`` unit vectors (the polynomials are only harmonics on the sphere)
    :param max_angular: largest ``l``
    :return: ``[E, (max_angular + 1) ** 2]``, l-major, ``m = -l..l`` within each ``l``
    """
    return SphericalHarmonics(max_angular).to(unit_vectors.device)(unit_vectors)
