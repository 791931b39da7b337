"""SOAP power spectrum (rotation-invariant two-neighbour correlations of the atomic density)."""

import math
from typing import List, Tuple

import torch
from torch import Tensor

from .radial import RadialBasis, cosine_cutoff
from .spherical_harmonics import spherical_harmonics_by_l


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

        # upper triangle (k1 <= k2) of the K x K matrix, as indices into the flattened matrix;
        # integer buffers so they follow `.to(device)` but not `.to(dtype)`
        tri = torch.triu_indices(self.n_channels, self.n_channels)
        self.register_buffer("tri_linear", tri[0] * self.n_channels + tri[1], persistent=False)
        self.register_buffer("tri_off_diagonal", tri[0] != tri[1], persistent=False)

    def _edge_terms(
        self, edge_vectors: Tensor, centers: Tensor, neighbor_species: Tensor
    ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """Per-edge ``R_n(r) f(r)``, all ``Y_lm(u)``, centre and neighbour species."""
        # pairs at or beyond the cutoff contribute exactly nothing (nor to gradients): drop them
        r = torch.linalg.vector_norm(edge_vectors, dim=-1)
        inside = torch.nonzero(r < self.cutoff).squeeze(-1)
        r = r.index_select(0, inside)
        edge_vectors = edge_vectors.index_select(0, inside)
        centers = centers.index_select(0, inside)
        neighbor_species = neighbor_species.index_select(0, inside)

        radial = self.radial(r) * cosine_cutoff(r, self.cutoff, self.cutoff_width).unsqueeze(-1)
        sph = spherical_harmonics_by_l(edge_vectors / r.unsqueeze(-1), self.max_angular)
        return radial, torch.cat(sph, dim=1), centers, neighbor_species

    def _density(
        self, radial: Tensor, sph: Tensor, centers: Tensor, species: Tensor, n_atoms: int
    ) -> Tensor:
        """Density coefficients ``c[i, (a, n), (l, m)]``, shape ``[n_atoms, K, (L + 1)^2]``.

        Each atom's edges are laid out in a padded ``[n_atoms, width, ...]`` block (padding is
        zero), so the sum over neighbours of ``R_an Y_lm`` is one batched matrix product: much
        cheaper, also in the backward passes, than per-edge outer products and scatters.
        """
        one_hot = torch.nn.functional.one_hot(species, self.n_species).to(radial.dtype)
        channels = (one_hot.unsqueeze(2) * radial.unsqueeze(1)).reshape(-1, self.n_channels)
        order = torch.argsort(centers, stable=True)
        sorted_centers = centers.index_select(0, order)
        counts = torch.bincount(sorted_centers, minlength=n_atoms)
        width = int(counts.max()) if sorted_centers.shape[0] > 0 else 0
        slot = torch.arange(order.shape[0], device=centers.device) - (
            torch.cumsum(counts, 0) - counts
        ).index_select(0, sorted_centers)
        left = torch.zeros(
            (n_atoms, width, self.n_channels), dtype=radial.dtype, device=radial.device
        ).index_put([sorted_centers, slot], channels.index_select(0, order))
        right = torch.zeros(
            (n_atoms, width, sph.shape[1]), dtype=radial.dtype, device=radial.device
        ).index_put([sorted_centers, slot], sph.index_select(0, order))
        return torch.bmm(left.transpose(1, 2), right)

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
        radial, sph, centers, species = self._edge_terms(edge_vectors, centers, neighbor_species)
        density = self._density(radial, sph, centers, species, n_atoms)
        k2 = self.n_channels * self.n_channels

        # sqrt(2) on the off-diagonal entries, computed in the input dtype
        pair_weight = 1.0 + (math.sqrt(2.0) - 1.0) * self.tri_off_diagonal.to(radial.dtype)

        features: List[Tensor] = []
        for ell in range(self.max_angular + 1):
            c_l = density[:, :, ell * ell : (ell + 1) * (ell + 1)]
            # contract m: rotations act on m by an orthogonal matrix, which cancels here
            p_l = torch.bmm(c_l, c_l.transpose(1, 2)).reshape(n_atoms, k2)
            p_l = p_l.index_select(1, self.tri_linear)
            features.append(p_l * (pair_weight / math.sqrt(2.0 * ell + 1.0)))
        return torch.cat(features, dim=1)
