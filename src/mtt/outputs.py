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
) -> TensorMap:
    """A one-block TensorMap of a per-atom scalar (``[N]``), per atom or summed per system."""
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
        samples = Labels(
            ["system"], torch.arange(n_systems, device=device, dtype=torch.int32).reshape(-1, 1)
        )
        block_values = summed.reshape(-1, 1)
    block = TensorBlock(block_values, samples, [], properties)
    keys = Labels(["_"], torch.zeros((1, 1), dtype=torch.int32, device=device))
    return TensorMap(keys, [block])
