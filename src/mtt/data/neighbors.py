"""Neighbour lists with vesin, in the layout metatomic expects.

Training computes each structure's list once (see :func:`mtt.data.graph.atoms_to_graph`);
evaluation of any exported model attaches lists to metatomic ``System`` objects with
:func:`attach_neighbor_lists`. Only ``vesin`` (not ``vesin.metatomic``) is imported here: a model
saved in a process that loaded ``vesin_torch`` would record it as a required extension.
"""

from typing import List, Tuple

import numpy as np
import torch
import vesin
from metatensor.torch import Labels, TensorBlock
from metatomic.torch import NeighborListOptions, System, register_autograd_neighbors

from ..errors import MttError
from .reading import periodic_heights

# more periodic images of a cell than this within the cutoff is a cutoff in the wrong unit (or
# a cell given in the wrong unit): vesin would run for hours, deaf to Ctrl-C, and run out of
# memory. A cutoff of 50 cell heights in each of three directions is about a million images.
MAX_PERIODIC_IMAGES = 1_000_000


def neighbor_pairs(
    positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, cutoff: float, full_list: bool
) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Pairs ``(i, j, shifts, vectors)`` with ``|x_j - x_i + shifts @ cell| < cutoff``."""
    calculator = vesin.NeighborList(cutoff=float(cutoff), full_list=full_list)
    pbc = np.asarray(pbc, dtype=bool)
    refuse_too_many_images(np.asarray(cell, dtype=np.float64), pbc, float(cutoff))
    i, j, shifts, vectors = calculator.compute(
        points=np.asarray(positions, dtype=np.float64),
        box=np.asarray(cell, dtype=np.float64),
        periodic=pbc.tolist(),
        quantities="ijSD",
        copy=True,
    )
    return i.astype(np.int64), j.astype(np.int64), shifts.astype(np.int64), vectors


def refuse_too_many_images(cell: np.ndarray, pbc: np.ndarray, cutoff: float) -> None:
    """Along each periodic direction the images within ``cutoff`` are about
    ``2 cutoff / h + 1``, ``h`` the distance between the cell's lattice planes."""
    heights = periodic_heights(cell, pbc)
    if len(heights) == 0 or (heights <= 0).any():
        return  # no periodic direction, or a flat cell: vesin refuses it with its own message
    images = np.prod(2.0 * np.ceil(cutoff / heights) + 1.0)
    if images > MAX_PERIODIC_IMAGES:
        raise MttError(
            f"the cutoff {cutoff:g} reaches {images:.3g} periodic images of a cell "
            f"{heights.min():.3g} high; is the cutoff (or the cell) in the length unit of "
            "the data?"
        )


def _neighbor_block(system: System, cutoff: float, full_list: bool) -> TensorBlock:
    positions = system.positions.detach().cpu().to(torch.float64).numpy()
    cell = system.cell.detach().cpu().to(torch.float64).numpy()
    pbc = system.pbc.cpu().numpy()
    i, j, shifts, vectors = neighbor_pairs(positions, cell, pbc, cutoff, full_list)
    samples = np.concatenate([i[:, None], j[:, None], shifts], axis=1)
    dtype, device = system.positions.dtype, system.positions.device
    return TensorBlock(
        values=torch.tensor(vectors, dtype=dtype, device=device).reshape(-1, 3, 1),
        samples=Labels(
            ["first_atom", "second_atom", "cell_shift_a", "cell_shift_b", "cell_shift_c"],
            torch.tensor(samples, dtype=torch.int32, device=device),
        ),
        components=[Labels.range("xyz", 3).to(device)],
        properties=Labels.range("distance", 1).to(device),
    )


def attach_neighbor_lists(
    system: System, requests: List[NeighborListOptions], length_unit: str = ""
) -> None:
    """Compute each requested list and attach it, differentiable w.r.t. positions and cell.

    ``length_unit`` is the unit of the system's positions where it may differ from the
    model's (``mtt eval`` of a model trained in bohr on structures in Å): each list is then
    computed with the request's cutoff converted to that unit, and attached under the
    request itself, which the model looks up after converting the system to its own unit.
    """
    for options in requests:
        cutoff = options.cutoff
        if length_unit and options.length_unit:
            cutoff = options.engine_cutoff(length_unit)
        block = _neighbor_block(system, cutoff, options.full_list)
        register_autograd_neighbors(system, block, check_consistency=False)
        system.add_neighbor_list(options, block)
