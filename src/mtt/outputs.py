"""TensorMaps at the boundary: per-atom values of a batch to metatomic outputs.

These functions are TorchScript-compatible; every exported model calls them in ``forward``.
They implement metatomic's ``selected_atoms`` contract (LAMMPS passes local and ghost atoms and
selects the local ones): a per-system output is the sum over the selected atoms, a per-atom
output has one row per selected atom, in the order of ``selected_atoms``.
"""

from typing import Optional

import torch
from metatensor.torch import Labels, TensorBlock, TensorMap


def selected_atom_indices(n_atoms: torch.Tensor, selected_atoms: Optional[Labels]) -> torch.Tensor:
    """Batch-wide indices of the selected atoms (all atoms when ``selected_atoms`` is None)."""
    total = int(n_atoms.sum())
    if selected_atoms is None:
        return torch.arange(total, device=n_atoms.device)
    offsets = torch.cumsum(n_atoms, 0) - n_atoms
    values = selected_atoms.values.to(n_atoms.device).to(torch.int64)
    return offsets[values[:, 0]] + values[:, 1]


def scalar_tensormap(
    per_atom: torch.Tensor,
    system_index: torch.Tensor,
    n_atoms: torch.Tensor,
    property_name: str,
    per_atom_output: bool,
    selected_atoms: Optional[Labels],
    system_terms: Optional[torch.Tensor] = None,
) -> TensorMap:
    """A one-block TensorMap of a per-atom scalar (``[N]``), per atom or summed per system
    (plus ``system_terms``, ``[n_systems]``, if given: see :mod:`mtt.lean_gradients`)."""
    device = per_atom.device
    index = selected_atom_indices(n_atoms, selected_atoms)
    values = per_atom[index]
    properties = Labels([property_name], torch.zeros((1, 1), dtype=torch.int32, device=device))
    if per_atom_output:
        offsets = torch.cumsum(n_atoms, 0) - n_atoms
        systems = system_index[index]
        sample_values = torch.stack([systems, index - offsets[systems]], dim=1)
        samples = Labels(["system", "atom"], sample_values.to(torch.int32))
        block_values = values.reshape(-1, 1)
    else:
        n_systems = n_atoms.shape[0]
        summed = torch.zeros(n_systems, dtype=per_atom.dtype, device=device)
        summed = summed.index_add(0, system_index[index], values)
        if system_terms is not None:
            summed = summed + system_terms
        samples = Labels(
            ["system"], torch.arange(n_systems, device=device, dtype=torch.int32).reshape(-1, 1)
        )
        block_values = summed.reshape(-1, 1)
    block = TensorBlock(block_values, samples, [], properties)
    keys = Labels(["_"], torch.zeros((1, 1), dtype=torch.int32, device=device))
    return TensorMap(keys, [block])


def _xyz(name: str, device: torch.device) -> Labels:
    return Labels([name], torch.arange(3, dtype=torch.int32, device=device).reshape(-1, 1))


def force_tensormap(
    forces: torch.Tensor,
    system_index: torch.Tensor,
    n_atoms: torch.Tensor,
    property_name: str,
    selected_atoms: Optional[Labels],
) -> TensorMap:
    """Per-atom vectors ``[N, 3]`` (metatomic's ``non_conservative_force``): samples
    ``system, atom`` (the selected atoms), one component ``xyz``, values ``[n, 3, 1]``."""
    device = forces.device
    index = selected_atom_indices(n_atoms, selected_atoms)
    offsets = torch.cumsum(n_atoms, 0) - n_atoms
    systems = system_index[index]
    sample_values = torch.stack([systems, index - offsets[systems]], dim=1)
    block = TensorBlock(
        forces[index].reshape(-1, 3, 1),
        Labels(["system", "atom"], sample_values.to(torch.int32)),
        [_xyz("xyz", device)],
        Labels([property_name], torch.zeros((1, 1), dtype=torch.int32, device=device)),
    )
    keys = Labels(["_"], torch.zeros((1, 1), dtype=torch.int32, device=device))
    return TensorMap(keys, [block])


def stress_tensormap(
    per_atom: torch.Tensor,
    system_index: torch.Tensor,
    n_atoms: torch.Tensor,
    volumes: torch.Tensor,
    property_name: str,
    selected_atoms: Optional[Labels],
) -> TensorMap:
    """Per-system stress (metatomic's ``non_conservative_stress``) from per-atom virial
    contributions ``[N, 3, 3]``: the sum over the selected atoms divided by the cell volume
    ``[S]``; samples ``system``, components ``xyz_1`` and ``xyz_2``, values ``[S, 3, 3, 1]``."""
    device = per_atom.device
    index = selected_atom_indices(n_atoms, selected_atoms)
    n_systems = n_atoms.shape[0]
    summed = torch.zeros(n_systems, 3, 3, dtype=per_atom.dtype, device=device)
    summed = summed.index_add(0, system_index[index], per_atom[index])
    stress = summed / volumes.to(per_atom.dtype).reshape(-1, 1, 1)
    samples = Labels(
        ["system"], torch.arange(n_systems, device=device, dtype=torch.int32).reshape(-1, 1)
    )
    block = TensorBlock(
        stress.reshape(n_systems, 3, 3, 1),
        samples,
        [_xyz("xyz_1", device), _xyz("xyz_2", device)],
        Labels([property_name], torch.zeros((1, 1), dtype=torch.int32, device=device)),
    )
    keys = Labels(["_"], torch.zeros((1, 1), dtype=torch.int32, device=device))
    return TensorMap(keys, [block])
