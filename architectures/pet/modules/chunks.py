"""Chunks of atoms for pet's lean gradients (``Pet.energies_and_vector_gradient``).

The layers of pet act on each atom's tokens independently, so any set of atoms with their
edges can be run on its own; these helpers cut a graph into such chunks, contiguous in the
atoms, and hold the per-edge and per-atom inputs every chunk reads. TorchScript classes, so
that the exported model carries them.
"""

from typing import List, Optional

import torch
from torch import Tensor

# tokens (atoms x (1 + max neighbours)) per chunk of the lean gradients. With pet's default
# sizes in float32 a TorchScript chunk keeps ~75 KB per token (~75 MB). Measured on 1000 Si
# atoms (25 tokens each): 2048 tokens were no faster and ~90 MB larger, 512 were 1.5x slower
# (per-chunk overheads)
TOKENS_PER_CHUNK = 1024


@torch.jit.script
class EdgesByCentre:
    """Edges grouped by centre atom: those of atoms ``start:stop`` are one slice."""

    def __init__(self, order: Tensor, starts: List[int]):
        self.order = order
        self.starts = starts

    def edges(self, start: int, stop: int) -> Tensor:
        return self.order[self.starts[start] : self.starts[stop]]


def edges_by_centre(edge_i: Tensor, n_atoms: int) -> EdgesByCentre:
    counts = torch.bincount(edge_i, minlength=n_atoms)
    starts = torch.cat([torch.zeros_like(counts[:1]), torch.cumsum(counts, 0)])
    positions: List[int] = starts.tolist()
    return EdgesByCentre(torch.argsort(edge_i, stable=True), positions)


@torch.jit.script
class LayerInputs:
    """What every layer reads besides the messages: per-edge geometry, species and slots,
    per-atom cutoff weights and real-token masks, all without autograd graph."""

    def __init__(
        self,
        geometry: Tensor,
        species: Tensor,
        neighbor_species: Tensor,
        slots: Tensor,
        weights: Tensor,
        real: Tensor,
        width: int,
        by_centre: EdgesByCentre,
    ):
        self.geometry = geometry
        self.species = species
        self.neighbor_species = neighbor_species
        self.slots = slots
        self.weights = weights
        self.real = real
        self.width = width
        self.by_centre = by_centre

    def edges(self, start: int, stop: int) -> Tensor:
        return self.by_centre.edges(start, stop)


def or_zeros(gradient: Optional[Tensor], like: Tensor) -> Tensor:
    if gradient is None:
        return torch.zeros_like(like)
    return gradient


def add_rows(total: Tensor, rows: Tensor, gradient: Optional[Tensor]) -> None:
    if gradient is not None:
        total.index_add_(0, rows, gradient)
