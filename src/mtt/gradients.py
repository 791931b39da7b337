"""Forces and stress as exact gradients of the energy, for a batch :class:`Graph`.

Forces are ``-dE/dx``. The stress follows from a homogeneous strain ε applied to positions and
cells, ``x -> x (1 + ε)``: ``σ = (1/V) dE/dε`` (ASE's sign convention), the same trick metatomic's
ASE calculator and LAMMPS use, so training and engines agree.
"""

from typing import Callable, Dict, List

import torch

from .data.graph import Graph


def energies_and_gradients(
    energy_fn: Callable[[Graph], Dict[str, torch.Tensor]],
    graph: Graph,
    quantities: List[str],
    create_graph: bool,
) -> Dict[str, torch.Tensor]:
    """Energies ``[S]`` from ``energy_fn`` plus the requested ``<name>/forces`` (``[N, 3]``)
    and ``<name>/stress`` (``[S, 3, 3]``, zero for structures that are not fully periodic)."""
    want_forces = [q.rsplit("/", 1)[0] for q in quantities if q.endswith("/forces")]
    want_stress = [q.rsplit("/", 1)[0] for q in quantities if q.endswith("/stress")]
    positions = graph.positions.detach().requires_grad_(len(want_forces) > 0)
    strain = torch.zeros_like(graph.cells).requires_grad_(len(want_stress) > 0)
    if want_stress:
        deformation = torch.eye(3, dtype=strain.dtype, device=strain.device) + strain
        graph = graph._replace(
            positions=torch.bmm(positions.unsqueeze(1), deformation[graph.system_index]).squeeze(1),
            cells=torch.bmm(graph.cells, deformation),
        )
    else:
        graph = graph._replace(positions=positions)
    energies = energy_fn(graph)
    results = {name: energies[name] for name in energies}
    for name in sorted(set(want_forces) | set(want_stress)):
        inputs = ([positions] if name in want_forces else []) + (
            [strain] if name in want_stress else []
        )
        grads = torch.autograd.grad(
            energies[name].sum(), inputs, create_graph=create_graph, retain_graph=True
        )
        if name in want_forces:
            results[f"{name}/forces"] = -grads[0]
        if name in want_stress:
            results[f"{name}/stress"] = grads[-1] / periodic_volumes(graph)[:, None, None]
    return results


def periodic_volumes(graph: Graph) -> torch.Tensor:
    """Cell volumes; infinite for structures that are not periodic in every direction, so
    their (meaningless) stress comes out as zero and is masked in the loss."""
    volumes = torch.abs(torch.linalg.det(graph.cells.detach()))
    periodic = graph.pbc.all(dim=1) & (volumes > 0)
    return torch.where(periodic, volumes, torch.full_like(volumes, float("inf")))
