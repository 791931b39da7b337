"""Heads for generic targets (``mtt::<name>``): scalars, vectors and symmetric tensors.

Any architecture that provides rotation-invariant per-atom features gets these heads. Scalars
are a small network of the features. Vectors and rank-2 tensors are built to rotate with the
structure, whatever the architecture: each atom's output is a sum over its neighbours of
invariant weights times ``r̂_ij`` (vectors) or ``r̂_ij ⊗ r̂_ij`` plus an isotropic part (symmetric
tensors), the weights being a network of the centre's features times a radial basis of
``r_ij`` that vanishes smoothly at the cutoff.
"""

import math
from typing import List, Optional

import torch
from metatensor.torch import Labels, TensorBlock, TensorMap

from .outputs import selected_atom_indices


def _network(n_in: int, width: int, n_out: int) -> torch.nn.Sequential:
    return torch.nn.Sequential(
        torch.nn.Linear(n_in, width), torch.nn.SiLU(), torch.nn.Linear(width, n_out)
    )


class GenericHead(torch.nn.Module):
    """Per-atom values ``[N, C, k]`` (C = 1, 3 or 9 components, k sub-targets)."""

    def __init__(
        self,
        n_features: int,
        rank: int,
        num_subtargets: int,
        cutoff: float,
        width: int = 32,
        n_radial: int = 8,
    ):
        super().__init__()
        self.rank = rank
        self.k = num_subtargets
        self.n_radial = n_radial
        self.cutoff = float(cutoff)
        n_out = num_subtargets if rank == 0 else num_subtargets * n_radial
        self.network = _network(n_features, width, n_out)
        # the isotropic (trace) part of a rank-2 tensor is an invariant of the centre alone
        self.isotropic = _network(n_features, width, num_subtargets if rank == 2 else 1)

    def forward(
        self, features: torch.Tensor, vectors: torch.Tensor, centers: torch.Tensor
    ) -> torch.Tensor:
        n_atoms = features.shape[0]
        if self.rank == 0:
            return self.network(features).reshape(n_atoms, 1, self.k)
        weights = self._edge_weights(features, vectors, centers)  # [E, k]
        r = torch.linalg.vector_norm(vectors, dim=1).clamp(min=1e-12)
        unit = vectors / r.unsqueeze(1)
        if self.rank == 1:
            directions = unit  # [E, 3]
        else:
            directions = (unit.unsqueeze(2) * unit.unsqueeze(1)).reshape(-1, 9)
        values = directions.unsqueeze(2) * weights.unsqueeze(1)  # [E, C, k]
        out = torch.zeros(
            n_atoms, directions.shape[1], self.k, dtype=features.dtype, device=features.device
        ).index_add(0, centers, values)
        if self.rank == 2:
            eye = torch.eye(3, dtype=features.dtype, device=features.device).reshape(1, 9, 1)
            out = out + eye * self.isotropic(features).unsqueeze(1)
        return out

    def _edge_weights(self, features, vectors, centers) -> torch.Tensor:
        """Invariant weight of each pair: the centre's coefficients times a Bessel radial
        basis with a smooth cutoff, so pairs at the cutoff contribute nothing."""
        r = torch.linalg.vector_norm(vectors, dim=1)
        inside = r < self.cutoff
        safe = torch.where(inside, r, torch.full_like(r, 0.5 * self.cutoff))
        n = torch.arange(1, self.n_radial + 1, dtype=r.dtype, device=r.device)
        radial = torch.sin(n * math.pi * safe.unsqueeze(1) / self.cutoff) / safe.unsqueeze(1)
        switch = 0.5 * (1 + torch.cos(math.pi * safe / self.cutoff))
        radial = radial * (switch * inside.to(r.dtype)).unsqueeze(1)
        coefficients = self.network(features)[centers].reshape(-1, self.k, self.n_radial)
        return (coefficients * radial.unsqueeze(1)).sum(dim=2)


def generic_in_units(raw: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """A head's per-atom output ``[N, C, k]`` (numbers of order one) in the target's units:
    times the scale, plus the shift for scalars and the shift times the identity for rank-2
    tensors (``training.composition.generic_normalization``); a vector's shift is zero."""
    values = raw * scale.to(raw.dtype)
    if raw.shape[1] == 1:
        return values + shift.to(raw.dtype)
    if raw.shape[1] == 9:
        identity = torch.eye(3, dtype=raw.dtype, device=raw.device).reshape(1, 9, 1)
        return values + shift.to(raw.dtype) * identity
    return values


def reduce_atoms(
    values: torch.Tensor, system_index: torch.Tensor, n_atoms: torch.Tensor, reduction: str
) -> torch.Tensor:
    """Per-structure ``[S, C, k]`` from per-atom ``[N, C, k]`` values."""
    n_systems = n_atoms.shape[0]
    shape = [n_systems, values.shape[1], values.shape[2]]
    if reduction == "max":
        index = system_index.reshape(-1, 1, 1).expand(values.shape)
        out = torch.full(shape, -1e30, dtype=values.dtype, device=values.device)
        return out.scatter_reduce(0, index, values, "amax", include_self=False)
    out = torch.zeros(shape, dtype=values.dtype, device=values.device)
    out = out.index_add(0, system_index, values)
    if reduction == "mean":
        out = out / n_atoms.to(values.dtype).clamp(min=1).reshape(-1, 1, 1)
    return out


def generic_tensormap(
    values: torch.Tensor,
    system_index: torch.Tensor,
    n_atoms: torch.Tensor,
    rank: int,
    per_atom: bool,
    reduction: str,
    selected_atoms: Optional[Labels],
) -> TensorMap:
    """A TensorMap of per-atom generic values ``[N, C, k]``: per atom (rows of the selected
    atoms) or reduced over the selected atoms of each structure."""
    device = values.device
    index = selected_atom_indices(n_atoms, selected_atoms)
    chosen = values[index]
    systems = system_index[index]
    if per_atom:
        offsets = torch.cumsum(n_atoms, 0) - n_atoms
        samples = Labels(
            ["system", "atom"], torch.stack([systems, index - offsets[systems]], 1).to(torch.int32)
        )
        block_values = chosen
    else:
        counts = torch.zeros_like(n_atoms).index_add(0, systems, torch.ones_like(systems))
        block_values = reduce_atoms(chosen, systems, counts, reduction)
        samples = Labels(
            ["system"],
            torch.arange(n_atoms.shape[0], device=device, dtype=torch.int32).reshape(-1, 1),
        )
    k = values.shape[2]
    components: List[Labels] = []
    xyz = torch.arange(3, device=device, dtype=torch.int32).reshape(-1, 1)
    if rank == 1:
        components = [Labels(["xyz"], xyz)]
    elif rank == 2:
        components = [Labels(["xyz_1"], xyz), Labels(["xyz_2"], xyz)]
    shape: List[int] = [block_values.shape[0]] + [3] * rank + [k]
    properties = Labels(
        ["subtarget"], torch.arange(k, device=device, dtype=torch.int32).reshape(-1, 1)
    )
    block = TensorBlock(block_values.reshape(shape), samples, components, properties)
    keys = Labels(["_"], torch.zeros((1, 1), dtype=torch.int32, device=device))
    return TensorMap(keys, [block])
