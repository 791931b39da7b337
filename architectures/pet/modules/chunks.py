"""Chunks of atoms for pet's lean gradients (``Pet.energies_and_vector_gradient``).

The layers of pet act on each atom's tokens independently, so any set of atoms with their
edges can be run on its own; these helpers cut a graph into such chunks and hold the per-edge
and per-atom inputs every chunk reads. TorchScript classes, so that the exported model carries
them.

Atoms are grouped by their number of neighbours: each chunk pads its tokens only to the
largest neighbourhood *in the chunk*, not in the whole system. Every linear layer and the
attention of a transformer run on padded tokens, so this is work saved wherever the
neighbour counts vary: 18 % of the tokens in a 1000-atom Si cell at 4.5 Å (16 to 24
neighbours), far more at surfaces, in molecules and in LAMMPS' ghost shells.
"""

from typing import List, Tuple

import torch
from torch import Tensor

from .neighbors import TokenLayout, neighbor_slots, token_layout

# tokens (atoms x (1 + max neighbours)) per chunk of the lean gradients. With pet's default
# sizes in float32 a TorchScript chunk keeps ~75 KB per token (~75 MB). Measured on 1000 Si
# atoms (25 tokens each): 2048 tokens were no faster and ~90 MB larger, 512 were 1.5x slower
# (per-chunk overheads)
TOKENS_PER_CHUNK = 1024


@torch.jit.script
class Chunk:
    """Some atoms, their edges (grouped by centre, in the atoms' order), each edge's row-
    major slot in the chunk's dense ``[atoms, width]`` token layout (column 0: the centre),
    and where the chunk's tokens are (see ``token_layout``)."""

    def __init__(self, atoms: Tensor, edges: Tensor, slots: Tensor, width: int):
        self.atoms = atoms
        self.edges = edges
        self.slots = slots
        self.width = width
        self.layout: TokenLayout = token_layout(slots, atoms.shape[0], width)


def chunks_by_neighbour_count(edge_i: Tensor, n_atoms: int, tokens_per_chunk: int) -> List[Chunk]:
    """Atoms sorted by neighbour count, cut greedily into chunks of at most
    ``tokens_per_chunk`` padded tokens (at least one atom each)."""
    counts = torch.bincount(edge_i, minlength=n_atoms)
    order = torch.argsort(counts, stable=True)
    rank = torch.empty_like(order).index_copy_(
        0, order, torch.arange(n_atoms, device=edge_i.device)
    )
    global_slots, global_width = neighbor_slots(edge_i, n_atoms)
    column = global_slots - edge_i * global_width
    centre_rank = rank.index_select(0, edge_i)
    edge_order = torch.argsort(centre_rank, stable=True)
    sorted_counts: List[int] = counts.index_select(0, order).tolist()
    first_edge: List[int] = [0]
    for count in sorted_counts:
        first_edge.append(first_edge[-1] + count)

    chunks: List[Chunk] = []
    start = 0
    while start < n_atoms:
        stop = start + 1
        # counts ascend, so the last atom sets the chunk's width
        while stop < n_atoms and (stop + 1 - start) * (1 + sorted_counts[stop]) <= tokens_per_chunk:
            stop += 1
        width = 1 + sorted_counts[stop - 1]
        edges = edge_order[first_edge[start] : first_edge[stop]]
        slots = (centre_rank.index_select(0, edges) - start) * width + column.index_select(0, edges)
        chunks.append(Chunk(order[start:stop], edges, slots, width))
        start = stop
    return chunks


@torch.jit.script
class LayerInputs:
    """What every layer reads besides the messages: per-edge geometry features, cutoff
    weights and neighbour species, per-atom species (all without autograd graph), and the
    chunks."""

    def __init__(
        self,
        geometry: Tensor,
        cutoffs: Tensor,
        species: Tensor,
        neighbor_species: Tensor,
        chunks: List[Chunk],
    ):
        self.geometry = geometry
        self.cutoffs = cutoffs
        self.species = species
        self.neighbor_species = neighbor_species
        self.chunks = chunks

    def rows(self, chunk: Chunk) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """The chunk's geometry features, cutoff weights, species and neighbour species."""
        return (
            self.geometry.index_select(0, chunk.edges),
            self.cutoffs.index_select(0, chunk.edges),
            self.species.index_select(0, chunk.atoms),
            self.neighbor_species.index_select(0, chunk.edges),
        )
