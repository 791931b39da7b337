"""Forces and stress as exact gradients of the energy, for a batch :class:`Graph`.

Forces are ``-dE/dx``. The stress follows from a homogeneous strain ε applied to positions and
cells, ``x -> x (1 + ε)``: ``σ = (1/V) dE/dε`` (ASE's sign convention), the same trick metatomic's
ASE calculator and LAMMPS use, so training and engines agree; its symmetric part, as in
metatomic's ASE calculator (only matters for models that are not exactly rotation-invariant).

Two ways to the same numbers: :func:`energies_and_gradients` differentiates any energy function
by autograd; :func:`energies_and_gradients_from_edges` takes a model's own gradient of the
energy with respect to the edge vectors and only chains it to positions and strain (the edge
vectors are linear in both), so that training needs a single backward pass through the model.
"""

from typing import Callable, Dict, List, Optional, Tuple

import torch

from .data.graph import Graph, edge_vectors


def _wanted(quantities: List[str]) -> Tuple[List[str], List[str]]:
    """The energy names whose forces, and whose stress, are asked for."""
    want_forces = [q.rsplit("/", 1)[0] for q in quantities if q.endswith("/forces")]
    want_stress = [q.rsplit("/", 1)[0] for q in quantities if q.endswith("/stress")]
    return want_forces, want_stress


def _strained(graph: Graph, forces: bool, stress: bool) -> Tuple[Graph, torch.Tensor, torch.Tensor]:
    """The graph with leaf positions and (for the stress) a zero strain applied to positions
    and cells, and the two leaves."""
    positions = graph.positions.detach().requires_grad_(forces)
    strain = torch.zeros_like(graph.cells).requires_grad_(stress)
    if stress:
        deformation = torch.eye(3, dtype=strain.dtype, device=strain.device) + strain
        graph = graph._replace(
            positions=torch.bmm(positions.unsqueeze(1), deformation[graph.system_index]).squeeze(1),
            cells=torch.bmm(graph.cells, deformation),
        )
    else:
        graph = graph._replace(positions=positions)
    return graph, positions, strain


def _store(
    results: Dict[str, torch.Tensor],
    graph: Graph,
    name: str,
    grads: List[torch.Tensor],
    forces: bool,
    stress: bool,
) -> None:
    if forces:
        results[f"{name}/forces"] = -grads[0]
    if stress:
        results[f"{name}/stress"] = symmetric(grads[-1]) / periodic_volumes(graph)[:, None, None]


def symmetric(gradient: torch.Tensor) -> torch.Tensor:
    """The symmetric part of ``dE/dε`` (``[..., 3, 3]``): only a symmetric strain deforms, an
    antisymmetric one rotates. Exactly rotation-invariant models have no antisymmetric part;
    others (pet) do, and the stress is, as metatomic's ASE calculator computes it, the
    symmetric part, which labels are."""
    return 0.5 * (gradient + gradient.transpose(-1, -2))


def energies_and_gradients(
    energy_fn: Callable[[Graph], Dict[str, torch.Tensor]],
    graph: Graph,
    quantities: List[str],
    create_graph: bool,
) -> Dict[str, torch.Tensor]:
    """Energies ``[S]`` from ``energy_fn`` plus the requested ``<name>/forces`` (``[N, 3]``)
    and ``<name>/stress`` (``[S, 3, 3]``, zero for structures that are not fully periodic)."""
    want_forces, want_stress = _wanted(quantities)
    graph, positions, strain = _strained(graph, len(want_forces) > 0, len(want_stress) > 0)
    energies = energy_fn(graph)
    results = {name: energies[name] for name in energies}
    for name in sorted(set(want_forces) | set(want_stress)):
        inputs = ([positions] if name in want_forces else []) + (
            [strain] if name in want_stress else []
        )
        grads = torch.autograd.grad(
            energies[name].sum(), inputs, create_graph=create_graph, retain_graph=True
        )
        _store(results, graph, name, list(grads), name in want_forces, name in want_stress)
    return results


def energies_and_gradients_from_edges(
    energy_fn: Callable[
        [Graph, torch.Tensor, List[str]],
        Tuple[Dict[str, torch.Tensor], Dict[str, torch.Tensor]],
    ],
    graph: Graph,
    quantities: List[str],
) -> Dict[str, torch.Tensor]:
    """As :func:`energies_and_gradients` with ``create_graph=True``, for a model that computes
    the gradient of its energy with respect to the edge vectors itself, as a differentiable
    function: ``energy_fn(graph, vectors, names)`` returns the energies ``[S]`` by name and,
    for each of ``names``, the gradient of their sum with respect to ``vectors`` ``[E, 3]``.
    Forces and stress are that gradient chained through ``edge_vectors`` (linear in the
    positions and the strain), so they stay differentiable for a loss on them."""
    want_forces, want_stress = _wanted(quantities)
    graph, positions, strain = _strained(graph, len(want_forces) > 0, len(want_stress) > 0)
    vectors = edge_vectors(graph)
    names = sorted(set(want_forces) | set(want_stress))
    energies, vector_grads = energy_fn(graph, vectors, names)
    results = {name: energies[name] for name in energies}
    for name in names:
        inputs = ([positions] if name in want_forces else []) + (
            [strain] if name in want_stress else []
        )
        grad: Optional[torch.Tensor] = vector_grads[name]
        grads = torch.autograd.grad(
            [vectors], inputs, [grad], create_graph=True, retain_graph=True, allow_unused=True
        )
        # a batch without edges: the energy does not depend on the positions at all
        found = [torch.zeros_like(x) if g is None else g for g, x in zip(grads, inputs)]
        _store(results, graph, name, found, name in want_forces, name in want_stress)
    return results


def periodic_volumes(graph: Graph) -> torch.Tensor:
    """Cell volumes; infinite for structures that are not periodic in every direction, so
    their (meaningless) stress comes out as zero and is masked in the loss."""
    volumes = torch.abs(torch.linalg.det(graph.cells.detach()))
    periodic = graph.pbc.all(dim=1) & (volumes > 0)
    return torch.where(periodic, volumes, torch.full_like(volumes, float("inf")))
