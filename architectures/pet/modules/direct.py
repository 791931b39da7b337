"""Direct (non-conservative) force and stress heads of PET, read from its edge tokens."""

from typing import Tuple

import torch
from torch import Tensor


def _edge_network(d_model: int, n_out: int) -> torch.nn.Sequential:
    return torch.nn.Sequential(
        torch.nn.LayerNorm(d_model),
        torch.nn.Linear(d_model, d_model),
        torch.nn.SiLU(),
        torch.nn.Linear(d_model, n_out),
    )


class DirectHeads(torch.nn.Module):
    """Forces and virials as learned weights of the edge vectors.

    Each edge ``i -> j`` (vector ``r_ij = x_j - x_i``) gets a weight per target from its output
    token, as a combination of radial features of its length ``sum_k c_k(token) g_k(r_ij)``,
    times the cutoff function ``f(r_ij)``:

    * force on ``i``: ``F_i = sum_j w_ij f(r_ij) r_ij``;
    * virial of ``i``: ``W_i = sum_j s_ij f(r_ij) r_ij ⊗ r_ij`` (symmetric), the stress being
      ``sum_i W_i / V``.

    Built from edge vectors, both are translation invariant, and like the energy they vanish
    smoothly (value and slope) when a neighbour leaves the cutoff. Rotations are learnt from
    rotated data, as for PET's energies.
    """

    def __init__(self, d_model: int, n_radial: int, n_targets: int):
        super().__init__()
        self.n_targets = n_targets
        self.n_radial = n_radial
        # coefficients of the radial features: a weight can then follow r_ij closely (bond
        # stretching) with species set by the token; on ethanol, a weight read from the
        # token alone had barely started to learn after 40 epochs of joint training
        self.forces = _edge_network(d_model, n_targets * n_radial)
        self.stress = _edge_network(d_model, n_targets * n_radial)

    def _edge_weights(self, coefficients: Tensor, radial: Tensor, cutoffs: Tensor) -> Tensor:
        """``[E, T]`` from the networks' ``[E, T * n_radial]`` coefficients."""
        coefficients = coefficients.reshape(-1, self.n_targets, self.n_radial)
        return (coefficients * radial.unsqueeze(1)).sum(dim=-1) * cutoffs.unsqueeze(-1)

    def forward(
        self,
        tokens: Tensor,
        radial: Tensor,
        vectors: Tensor,
        cutoffs: Tensor,
        centres: Tensor,
        n_atoms: int,
    ) -> Tuple[Tensor, Tensor]:
        """:param tokens: ``[E, d]`` output edge tokens; :param radial: ``[E, n_radial]``
        radial features; :param vectors: ``[E, 3]``; :param cutoffs: ``[E]``; :param
        centres: ``[E]`` atom ``i`` of each edge.
        :return: forces ``[A, n_targets, 3]`` and virials ``[A, n_targets, 3, 3]``."""
        n_targets = self.n_targets
        weights = self._edge_weights(self.forces(tokens), radial, cutoffs)  # [E, T]
        forces = torch.zeros(n_atoms, n_targets, 3, dtype=tokens.dtype, device=tokens.device)
        forces = forces.index_add(0, centres, weights.unsqueeze(-1) * vectors.unsqueeze(1))
        outer = vectors.unsqueeze(2) * vectors.unsqueeze(1)  # [E, 3, 3]
        stress_weights = self._edge_weights(self.stress(tokens), radial, cutoffs)
        virials = torch.zeros(
            n_atoms, n_targets, 3, 3, dtype=tokens.dtype, device=tokens.device
        ).index_add(0, centres, stress_weights[:, :, None, None] * outer.unsqueeze(1))
        return forces, virials
