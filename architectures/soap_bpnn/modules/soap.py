"""SOAP power spectrum (rotation-invariant two-neighbour correlations of the atomic density)."""

import math
from typing import Callable, NamedTuple, Tuple

import torch
from torch import Tensor

from .radial import RadialBasis, cosine_cutoff, cosine_cutoff_derivative
from .spherical_harmonics import SphericalHarmonics, harmonic_coefficients


class DensityParts(NamedTuple):
    """What :meth:`SoapPowerSpectrum.vector_gradient` needs of a forward pass, on the neighbour
    grid of ``P = n_atoms * width`` rows (see ``_neighbor_grid``)."""

    rows: Tensor  # [E] grid row of each edge
    unit: Tensor  # [P, 3] unit vectors
    r: Tensor  # [P] distances
    species: Tensor  # [P] species index of the neighbour
    radial: Tensor  # [P, K] radial functions times cutoff, in the neighbour's species' channels
    radial_derivative: Tensor  # [P, max_radial] their derivative with respect to r
    monomials: Tensor  # [P, M]
    lower: Tensor  # [P, Ml] monomials one degree lower (their derivatives' factors)
    gram_rows: Tensor  # the matrices whose Gram matrices hold the features (see _gram_rows)


def padded_harmonics(max_angular: int) -> Tensor:
    """Monomials -> harmonics (float64), each l padded with zero columns to 2 L + 1 so that all
    l go through one batched product, and scaled by (2l + 1)^(-1/4): the power spectrum's
    1/sqrt(2l + 1) comes out of the product of two such columns. ``[(L + 1)^2,
    (L + 1) (2 L + 1)]``."""
    harmonics = harmonic_coefficients(max_angular)
    n_l, n_m = max_angular + 1, 2 * max_angular + 1
    padded = torch.zeros(harmonics.shape[0], n_l, n_m, dtype=torch.float64)
    for ell in range(n_l):
        block = harmonics[:, ell * ell : (ell + 1) * (ell + 1)]
        padded[:, ell, : 2 * ell + 1] = block * (2.0 * ell + 1.0) ** -0.25
    return padded.reshape(harmonics.shape[0], n_l * n_m)


class SoapPowerSpectrum(torch.nn.Module):
    """SOAP power spectrum of each atom's neighbourhood, computed from the edges of a graph.

    The neighbour density of atom ``i`` for neighbour species ``a`` is expanded as::

        c[i, a, n, l, m] = sum_{j in N(i), species(j) = a} R_n(r_ij) f_cut(r_ij) Y_lm(r_ij / r_ij)

    and the power spectrum contracts ``m`` (which makes it invariant under rotations and
    reflections)::

        p[i, l, (a, n), (a', n')] = sum_m c[i, a, n, l, m] c[i, a', n', l, m] / sqrt(2l + 1)

    ``p`` is symmetric in ``(a, n) <-> (a', n')``: only the upper triangle is kept, off-diagonal
    entries multiplied by ``sqrt(2)`` so the feature vector has the norm of the full matrix.
    Features are ordered l-major, then by triangle entry (row-major upper triangle of the
    ``K x K`` matrix with ``K = n_species * max_radial`` and channel index ``a * max_radial + n``).

    ``n_features = (max_angular + 1) * K * (K + 1) / 2``.
    """

    def __init__(
        self,
        cutoff: float,
        cutoff_width: float,
        max_radial: int,
        max_angular: int,
        n_species: int,
    ):
        super().__init__()
        if not 0.0 < cutoff_width <= cutoff:
            raise ValueError(
                f"cutoff_width must be in (0, cutoff], got cutoff_width={cutoff_width}, "
                f"cutoff={cutoff}"
            )
        if max_angular < 0:
            raise ValueError(f"max_angular must be >= 0, got {max_angular}")
        if n_species < 1:
            raise ValueError(f"n_species must be >= 1, got {n_species}")

        self.cutoff = float(cutoff)
        self.cutoff_width = float(cutoff_width)
        self.max_radial = max_radial
        self.max_angular = max_angular
        self.n_species = n_species
        self.n_channels = n_species * max_radial  # K
        self.n_pairs = self.n_channels * (self.n_channels + 1) // 2
        self.n_features = (max_angular + 1) * self.n_pairs

        self.radial = RadialBasis(max_radial, cutoff)
        self.harmonics = SphericalHarmonics(max_angular)

        self.register_buffer("padded_harmonics", padded_harmonics(max_angular), persistent=False)
        # The m contraction is a Gram matrix of the rows (k, l) of each atom's c[k, l, :].
        # Per (atom, l) it is K x K x (2L + 1) multiply-adds, which torch runs in a slow loop
        # of its own below 400 (e.g. K = 6, L = 4: 324; 5x slower than one BLAS product per
        # atom of all (k, l) rows, cross-l entries included). So: one product per atom when
        # K is that small, one per (atom, l) otherwise (no wasted cross-l entries).
        k, n_l, n_m = self.n_channels, max_angular + 1, 2 * max_angular + 1
        self.gram_per_atom = k * k * n_m < 400
        self.gram_size = (k * n_l) ** 2 if self.gram_per_atom else n_l * k * k  # per atom
        tri = torch.triu_indices(k, k)
        ell = torch.arange(n_l).repeat_interleave(tri.shape[1])
        k1, k2 = tri[0].repeat(n_l), tri[1].repeat(n_l)
        if self.gram_per_atom:  # rows (k, l) of a [K n_l, K n_l] matrix, flattened
            entries = (k1 * n_l + ell) * (k * n_l) + k2 * n_l + ell
        else:  # [n_l, K, K]
            entries = ell * k * k + k1 * k + k2
        # feature (l, k1 <= k2), l-major: its entry in the flattened Gram matrices; integer
        # buffers follow `.to(device)` but not `.to(dtype)`
        self.register_buffer("gram_entries", entries, persistent=False)
        self.register_buffer("off_diagonal", k1 != k2, persistent=False)
        # the same entries of the transposed matrices, for gradients
        if self.gram_per_atom:
            transposed = (k2 * n_l + ell) * (k * n_l) + k1 * n_l + ell
        else:
            transposed = ell * k * k + k2 * k + k1
        self.register_buffer("transposed_entries", transposed, persistent=False)

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> "SoapPowerSpectrum":
        # the constant stays float64, see SphericalHarmonics._apply
        module = super()._apply(fn, recurse)
        exact = padded_harmonics(self.max_angular)
        self.padded_harmonics = exact.to(self.padded_harmonics.device)
        return module

    def _neighbor_grid(
        self, edge_vectors: Tensor, centers: Tensor, neighbor_species: Tensor, n_atoms: int
    ) -> Tuple[Tensor, Tensor, Tensor]:
        """Edges laid out as ``[n_atoms * width]`` rows (``width`` = most edges of an atom), row
        ``i * width + k`` holding the ``k``-th edge of atom ``i`` in list order: vectors,
        neighbour species and the row of each edge.

        Empty rows get the vector ``(2 cutoff, 0, 0)``: beyond the cutoff, so they contribute
        exactly zero (and no gradient), like edges at or beyond the cutoff given by the engine.
        Everything per edge then runs on this grid, and the sum over neighbours is one batched
        matrix product, without scattering ``[E, ...]`` intermediates.
        """
        n_edges = centers.shape[0]
        counts = torch.bincount(centers, minlength=n_atoms)
        width = int(counts.max()) if n_edges > 0 else 0
        first = torch.cumsum(counts, 0) - counts
        rank = torch.arange(n_edges, device=centers.device)
        if n_edges > 1 and not bool((centers[1:] >= centers[:-1]).all()):
            order = torch.argsort(centers, stable=True)
            rank = torch.empty_like(rank).index_copy(
                0, order, rank - first.index_select(0, centers.index_select(0, order))
            )
        else:  # already grouped by centre: no sort
            rank = rank - first.index_select(0, centers)
        rows = centers * width + rank
        vectors = torch.zeros(
            (n_atoms * width, 3), dtype=edge_vectors.dtype, device=edge_vectors.device
        )
        vectors[:, 0] = 2.0 * self.cutoff
        vectors = vectors.index_copy(0, rows, edge_vectors)
        species = torch.zeros(n_atoms * width, dtype=torch.int64, device=centers.device)
        return vectors, species.index_copy(0, rows, neighbor_species), rows

    def _channels(self, radial: Tensor, species: Tensor) -> Tensor:
        """``[P, max_radial]`` radial functions -> ``[P, K]``, zero outside the channels of
        the neighbour's species."""
        if self.n_species == 1:
            return radial
        one_hot = torch.nn.functional.one_hot(species, self.n_species).to(radial.dtype)
        return (one_hot.unsqueeze(2) * radial.unsqueeze(1)).reshape(-1, self.n_channels)

    def _neighbor_sum(self, radial: Tensor, monomials: Tensor, n_atoms: int) -> Tensor:
        """Density coefficients in the monomial basis, ``sum_j R_an(r_ij) monomial(u_ij)``,
        shape ``[n_atoms, K, (L + 1)^2]`` (one batched product over the grid); times
        ``harmonics.coefficients`` they are ``c[i, (a, n), (l, m)]``."""
        width = radial.shape[0] // max(n_atoms, 1)
        return torch.bmm(
            radial.reshape(n_atoms, width, self.n_channels).transpose(1, 2),
            monomials.reshape(n_atoms, width, monomials.shape[1]),
        )

    def _gram_rows(self, summed: Tensor, n_atoms: int) -> Tensor:
        """The density ``c[i, k, l, m]`` (scaled and zero-padded in m, see
        :func:`padded_harmonics`) as the matrices whose Gram matrices hold the features:
        ``[n_atoms, K n_l, n_m]`` (rows ``(k, l)``) or ``[n_atoms n_l, K, n_m]``."""
        n_l, n_m, k = self.max_angular + 1, 2 * self.max_angular + 1, self.n_channels
        n_monomials = self.harmonics.n_monomials
        density = summed.reshape(n_atoms * k, n_monomials) @ self.padded_harmonics.to(summed.dtype)
        if self.gram_per_atom:
            return density.reshape(n_atoms, k * n_l, n_m)
        rows = density.reshape(n_atoms, k, n_l, n_m).transpose(1, 2)
        return rows.reshape(n_atoms * n_l, k, n_m)

    def _pair_weight(self, dtype: torch.dtype) -> Tensor:
        # sqrt(2) on the off-diagonal entries, computed in the input dtype
        return 1.0 + (math.sqrt(2.0) - 1.0) * self.off_diagonal.to(dtype)

    def _features(self, gram_rows: Tensor, n_atoms: int) -> Tensor:
        # contract m: rotations act on m by an orthogonal matrix, which cancels here
        gram = torch.bmm(gram_rows, gram_rows.transpose(1, 2)).reshape(n_atoms, self.gram_size)
        return gram.index_select(1, self.gram_entries) * self._pair_weight(gram.dtype)

    def forward(
        self, edge_vectors: Tensor, centers: Tensor, neighbor_species: Tensor, n_atoms: int
    ) -> Tensor:
        """Power spectrum features.

        :param edge_vectors: ``[E, 3]`` vectors from the centre to the neighbour (``r > 0``)
        :param centers: ``[E]`` int64, index of the centre atom of each edge
        :param neighbor_species: ``[E]`` int64 in ``0..n_species - 1``, species index of the
            neighbour
        :param n_atoms: number of atoms (rows of the output)
        :return: ``[n_atoms, n_features]``, same dtype as ``edge_vectors``
        """
        vectors, species, _ = self._neighbor_grid(edge_vectors, centers, neighbor_species, n_atoms)
        r = torch.linalg.vector_norm(vectors, dim=-1)
        radial = self.radial.times(r, cosine_cutoff(r, self.cutoff, self.cutoff_width))
        monomials = self.harmonics.monomials(vectors / r.unsqueeze(-1))
        summed = self._neighbor_sum(self._channels(radial, species), monomials, n_atoms)
        return self._features(self._gram_rows(summed, n_atoms), n_atoms)

    @torch.jit.export
    def forward_saving(
        self, edge_vectors: Tensor, centers: Tensor, neighbor_species: Tensor, n_atoms: int
    ) -> Tuple[Tensor, DensityParts]:
        """The features of :meth:`forward` (computed the same way, without autograd graph
        when the inputs need none) and what :meth:`vector_gradient` needs."""
        vectors, species, rows = self._neighbor_grid(
            edge_vectors, centers, neighbor_species, n_atoms
        )
        r = torch.linalg.vector_norm(vectors, dim=-1)
        radial, radial_derivative = self.radial.times_with_derivative(
            r,
            cosine_cutoff(r, self.cutoff, self.cutoff_width),
            cosine_cutoff_derivative(r, self.cutoff, self.cutoff_width),
        )
        unit = vectors / r.unsqueeze(-1)
        monomials, lower = self.harmonics.monomials_and_lower(unit)
        channels = self._channels(radial, species)
        gram_rows = self._gram_rows(self._neighbor_sum(channels, monomials, n_atoms), n_atoms)
        parts = DensityParts(
            rows, unit, r, species, channels, radial_derivative, monomials, lower, gram_rows
        )
        return self._features(gram_rows, n_atoms), parts

    @torch.jit.export
    def vector_gradient(self, parts: DensityParts, grad_features: Tensor) -> Tensor:
        """``[E, 3]``: the gradient of ``sum(features * grad_features)`` with respect to the
        edge vectors, by the chain rule written out (what autograd would do, in fewer passes
        and without keeping a graph): Gram matrices -> density -> per-edge radial functions and
        monomials -> distances and directions -> vectors.

        :param parts: of :meth:`forward_saving` for the same edges
        :param grad_features: ``[n_atoms, n_features]``
        """
        n_atoms = grad_features.shape[0]
        n_l, n_m, k = self.max_angular + 1, 2 * self.max_angular + 1, self.n_channels
        dtype = grad_features.dtype
        # features = gram[entries] * weight with gram = X X^T, so d/dX = (G + G^T) X with G
        # the gradient scattered to the entries (diagonal entries get it twice: d(x.x) = 2x)
        weighted = grad_features * self._pair_weight(dtype)
        square = k * n_l if self.gram_per_atom else k
        grad_gram = torch.zeros(n_atoms, self.gram_size, dtype=dtype, device=grad_features.device)
        grad_gram.index_add_(1, self.gram_entries, weighted)
        grad_gram.index_add_(1, self.transposed_entries, weighted)
        grad_rows = torch.bmm(grad_gram.reshape(-1, square, square), parts.gram_rows)
        if self.gram_per_atom:
            grad_density = grad_rows.reshape(n_atoms * k, n_l * n_m)
        else:
            grad_density = grad_rows.reshape(n_atoms, n_l, k, n_m).transpose(1, 2)
            grad_density = grad_density.reshape(n_atoms * k, n_l * n_m)
        # back through the harmonics: [n_atoms, K, M] gradient of the neighbour sums
        n_monomials = self.harmonics.n_monomials
        grad_summed = grad_density @ self.padded_harmonics.to(dtype).T
        grad_summed = grad_summed.reshape(n_atoms, k, n_monomials)

        width = parts.r.shape[0] // max(n_atoms, 1)
        # radial channels: sum_m grad_summed[i, k, m] monomials[e, m]
        # explicit sizes: without any pair (an isolated atom) width is 0 and -1 is ambiguous
        monomials = parts.monomials.reshape(n_atoms, width, n_monomials)
        grad_channels = torch.bmm(monomials, grad_summed.transpose(1, 2)).reshape(-1, k)
        if self.n_species > 1:
            one_hot = torch.nn.functional.one_hot(parts.species, self.n_species).to(dtype)
            grad_channels = grad_channels.reshape(-1, self.n_species, self.max_radial)
            grad_channels = (grad_channels * one_hot.unsqueeze(2)).sum(1)
        grad_r = (grad_channels * parts.radial_derivative).sum(1)
        vectors_gradient = parts.unit * grad_r.unsqueeze(1)
        if self.max_angular > 0:
            # directions: d monomial_m / du_a = sum_q lower_q D[m, (a, q)]
            # (spherical_harmonics.monomial_derivatives) and the monomials' gradient is
            # sum_k radial_k grad_summed[k, m]. Contracting lower first, per atom
            # [width, Ml] x [Ml, (k, a)], then radial per edge ([K] x [K, 3]), writes [E, 3K]
            # numbers where radial first would write [E, 3 Ml]: 2x faster
            n_lower = parts.lower.shape[1]
            folded = grad_summed @ self.harmonics.derivatives.to(dtype)  # [n_atoms, K, 3 Ml]
            folded = folded.reshape(n_atoms, k * 3, n_lower).transpose(1, 2)
            by_channel = torch.bmm(parts.lower.reshape(n_atoms, width, n_lower), folded)
            grad_unit = torch.bmm(
                parts.radial.reshape(-1, 1, k), by_channel.reshape(-1, k, 3)
            ).reshape(-1, 3)
            # u = v / r: du/dv = (1 - u u^T) / r
            along = (grad_unit * parts.unit).sum(1, keepdim=True)
            vectors_gradient = vectors_gradient + (
                grad_unit - along * parts.unit
            ) / parts.r.unsqueeze(1)
        return vectors_gradient.index_select(0, parts.rows)
