"""Forces and stress of an exported model in memory that does not grow with the model's depth.

A simulation engine (ASE's or LAMMPS' metatomic interface) gets forces and stress by calling
``backward()`` on the total energy the model returns. Left to autograd, every intermediate of
the forward pass is kept until then: for a transformer such as ``pet``, about a megabyte per
atom, so a few thousand atoms fill a workstation.

An architecture that can compute the gradient of its energy with respect to the edge vectors
itself (``EnergyModel.energies_and_vector_gradient``: layer by layer and a few atoms at a time,
recomputing what it needs, so only one chunk's intermediates are alive at once) returns the
energy *detached* plus a zero-valued term whose gradient is that vector gradient:

    E_s = E_s(detached) + sum_{edges e of s} g_e . (r_e - stop_gradient(r_e))

The second term is exactly zero, and its derivative with respect to anything upstream of the
edge vectors ``r_e`` (positions, cell, the engine's strain) is ``g_e`` chained through
``dr_e/d(...)``: the same first derivatives as the full graph, to rounding. Only *first*
derivatives are right: the term is linear in ``r_e``, so forces built from it are constants to
autograd (an autograd Hessian fails with "element 0 of tensors does not require grad") and
derivatives of the stress, which holds ``r_e`` itself, miss every term through ``g_e``.
``mtt export --second-derivatives`` keeps the full graph for them.

One such term is built per system and per energy target, so any combination of systems and
targets the engine differentiates is exact; per-atom energy outputs (whose gradients would
need one term per atom) take the ordinary path.
"""

import torch


def linked_energies(
    gradient: torch.Tensor,
    vectors: torch.Tensor,
    edge_system: torch.Tensor,
    n_systems: int,
) -> torch.Tensor:
    """``[n_systems]`` zeros whose gradient with respect to ``vectors`` is ``gradient``.

    :param gradient: ``[E, 3]`` derivative of the system's energy with respect to each edge
        vector (no autograd graph)
    :param vectors: ``[E, 3]`` edge vectors, connected to positions and cells
    :param edge_system: ``[E]`` system of each edge
    """
    per_edge = (gradient.detach() * (vectors - vectors.detach())).sum(dim=1)
    zeros = torch.zeros(n_systems, dtype=vectors.dtype, device=vectors.device)
    return zeros.index_add(0, edge_system, per_edge)
