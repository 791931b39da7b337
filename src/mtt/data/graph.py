"""The default native data of an architecture: a batch of structures as plain tensors.

MatterTune's backbone idea: an architecture says how an ``ase.Atoms`` becomes its training data
(``atoms_to_data``) and how a list of those is batched (``collate_fn``). The default, used by
every architecture of this package, is the :class:`Graph` below: atoms and neighbour pairs of
several structures concatenated, with the pairs computed once per structure by vesin.

The exported model receives metatomic ``System`` objects instead; :func:`systems_to_graph`
turns them into the same :class:`Graph` inside TorchScript, so that training and inference run
the very same numerics. Edge vectors are always recomputed from positions, cells and integer
shifts (:func:`edge_vectors`), which keeps forces and stress exact in both paths.
"""

from typing import List, NamedTuple

import ase
import numpy as np
import torch
from metatomic.torch import NeighborListOptions, System

from ..errors import MttError
from .neighbors import neighbor_pairs


class Graph(NamedTuple):
    """Several structures' atoms and neighbour pairs, concatenated."""

    types: torch.Tensor  # [N] atomic numbers (int64)
    positions: torch.Tensor  # [N, 3]
    cells: torch.Tensor  # [S, 3, 3], rows are cell vectors; zero rows where not periodic
    pbc: torch.Tensor  # [S, 3] bool
    system_index: torch.Tensor  # [N] structure of each atom (int64)
    edge_i: torch.Tensor  # [E] centre atom (int64, index into the batch)
    edge_j: torch.Tensor  # [E] neighbour atom
    edge_shifts: torch.Tensor  # [E, 3] integer cell shifts, stored in the float dtype
    n_atoms: torch.Tensor  # [S] atoms per structure (int64)


def atoms_to_graph(
    atoms: ase.Atoms, cutoff: float, dtype: torch.dtype, min_distance: float = 0.0
) -> Graph:
    """One structure with its full neighbour list (pairs i->j and j->i) within ``cutoff``;
    atoms closer than ``min_distance`` are refused (see :data:`MIN_DISTANCE`)."""
    pbc = np.asarray(atoms.pbc, dtype=bool)
    # metatomic's convention: cell vectors of non-periodic directions are zero
    cell = np.asarray(atoms.cell[:], dtype=np.float64) * pbc[:, None]
    i, j, shifts, vectors = neighbor_pairs(atoms.positions, cell, pbc, cutoff, full_list=True)
    check_distances(i, j, vectors, min_distance)
    return Graph(
        types=torch.tensor(atoms.numbers, dtype=torch.int64),
        positions=torch.tensor(atoms.positions, dtype=dtype),
        cells=torch.tensor(cell, dtype=dtype).reshape(1, 3, 3),
        pbc=torch.tensor(pbc).reshape(1, 3),
        system_index=torch.zeros(len(atoms), dtype=torch.int64),
        edge_i=torch.from_numpy(i),
        edge_j=torch.from_numpy(j),
        edge_shifts=torch.from_numpy(shifts).to(dtype),
        n_atoms=torch.tensor([len(atoms)], dtype=torch.int64),
    )


# closer than this (in Å; far inside any bond) two atoms of training data are a mistake,
# duplicated or wrapped twice: atoms on top of each other make edge directions, and the
# loss, NaN
MIN_DISTANCE = 0.1


def check_distances(
    first: np.ndarray, second: np.ndarray, vectors: np.ndarray, min_distance: float
) -> None:
    lengths = np.linalg.norm(vectors, axis=1) if len(vectors) else np.zeros(0)
    if len(lengths) and lengths.min() < min_distance:
        k = int(np.argmin(lengths))
        raise MttError(
            f"atoms {first[k]} and {second[k]} are {lengths[k]:.3g} apart (less than "
            f"{min_distance:.3g} in the data's length unit, 0.1 Å: duplicated atoms?); fix "
            "or remove that structure"
        )


def collate_graphs(graphs: List[Graph]) -> Graph:
    """Concatenate structures, offsetting atom indices (one batch, no Python loop per atom)."""
    n_atoms = torch.cat([g.n_atoms for g in graphs])
    atom_offsets = torch.cumsum(n_atoms, 0) - n_atoms
    n_edges = torch.tensor([len(g.edge_i) for g in graphs])
    edge_offsets = torch.repeat_interleave(atom_offsets, n_edges)
    return Graph(
        types=torch.cat([g.types for g in graphs]),
        positions=torch.cat([g.positions for g in graphs]),
        cells=torch.cat([g.cells for g in graphs]),
        pbc=torch.cat([g.pbc for g in graphs]),
        system_index=torch.repeat_interleave(torch.arange(len(graphs)), n_atoms),
        edge_i=torch.cat([g.edge_i for g in graphs]) + edge_offsets,
        edge_j=torch.cat([g.edge_j for g in graphs]) + edge_offsets,
        edge_shifts=torch.cat([g.edge_shifts for g in graphs]),
        n_atoms=n_atoms,
    )


def graph_to(graph: Graph, device: torch.device, dtype: torch.dtype) -> Graph:
    """Move a graph to ``device``; floating point tensors take ``dtype``."""
    return Graph(
        *[
            t.to(device=device, dtype=dtype) if t.is_floating_point() else t.to(device)
            for t in graph
        ]
    )


def edge_vectors(graph: Graph) -> torch.Tensor:
    """``x_j - x_i + shift @ cell`` for every pair, differentiable w.r.t. positions and cells.

    ``index_select`` rather than indexing: its backward is a scatter-add, where indexing's is
    a much slower accumulating ``index_put``; one structure (MD) needs a single matrix product.
    """
    if graph.cells.shape[0] == 1:
        shift = graph.edge_shifts @ graph.cells[0]
    else:
        owner = graph.system_index.index_select(0, graph.edge_i)
        cells = graph.cells.index_select(0, owner)
        shift = torch.bmm(graph.edge_shifts.unsqueeze(1), cells).squeeze(1)
    positions = graph.positions
    return positions.index_select(0, graph.edge_j) - positions.index_select(0, graph.edge_i) + shift


def refuse_coincident_atoms(vectors: torch.Tensor, samples: torch.Tensor, system: int) -> None:
    """Two atoms at the same position (a duplicated atom) have no direction between them:
    the models' energies and forces would be NaN, which an engine carries on with (MD
    continues on NaN coordinates). One comparison per pair; the error names the atoms."""
    same = (vectors == 0.0).all(dim=1).reshape(-1)
    if samples.shape[0] > 0 and bool(same.any()):
        pair = samples[torch.nonzero(same)[0, 0]]
        first, second = int(pair[0]), int(pair[1])
        raise ValueError(
            f"atoms {first} and {second} of system {system} are at the same position: the "
            "model's energy is not defined there (a duplicated atom?)"
        )


def systems_to_graph(systems: List[System], options: NeighborListOptions) -> Graph:
    """The :class:`Graph` of metatomic systems, using their neighbour list for ``options``."""
    device = systems[0].positions.device
    dtype = systems[0].positions.dtype
    types: List[torch.Tensor] = []
    positions: List[torch.Tensor] = []
    cells: List[torch.Tensor] = []
    pbcs: List[torch.Tensor] = []
    system_index: List[torch.Tensor] = []
    edge_i: List[torch.Tensor] = []
    edge_j: List[torch.Tensor] = []
    shifts: List[torch.Tensor] = []
    n_atoms: List[int] = []
    offset = 0
    for index, system in enumerate(systems):
        n = len(system)
        neighbors = system.get_neighbor_list(options)
        samples = neighbors.samples.values
        refuse_coincident_atoms(neighbors.values, samples, index)
        types.append(system.types.to(torch.int64))
        positions.append(system.positions)
        cells.append(system.cell.unsqueeze(0))
        pbcs.append(system.pbc.unsqueeze(0))
        system_index.append(torch.full((n,), index, dtype=torch.int64, device=device))
        edge_i.append(samples[:, 0].to(torch.int64) + offset)
        edge_j.append(samples[:, 1].to(torch.int64) + offset)
        shifts.append(samples[:, 2:5].to(dtype))
        n_atoms.append(n)
        offset += n
    return Graph(
        types=torch.cat(types),
        positions=torch.cat(positions),
        cells=torch.cat(cells),
        pbc=torch.cat(pbcs),
        system_index=torch.cat(system_index),
        edge_i=torch.cat(edge_i),
        edge_j=torch.cat(edge_j),
        edge_shifts=torch.cat(shifts),
        n_atoms=torch.tensor(n_atoms, dtype=torch.int64, device=device),
    )
