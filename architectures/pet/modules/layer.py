"""One message-passing layer of PET: edge tokens in, per-atom energies and edge tokens out."""

from typing import Optional, Tuple

import torch
from torch import Tensor

from .transformer import Transformer


class PetLayer(torch.nn.Module):
    """Builds every atom's tokens, runs the transformer over them, and reads an energy.

    The token of edge ``i -> j`` compresses its geometry features, the species of ``j`` and
    the message: the output token of ``j -> i`` from the previous layer (zeros in the first
    layer). Atom ``i``'s centre token is the embedding of its species. The energy head reads
    the centre's pooled representation, its own output token plus the cutoff-weighted sum of
    its edges' output tokens (smooth at the cutoff).
    """

    def __init__(
        self,
        n_geometry: int,
        n_species: int,
        n_targets: int,
        d_model: int,
        num_heads: int,
        d_feedforward: int,
        num_attention_layers: int,
    ):
        super().__init__()
        self.d_model = d_model
        self.geometry = torch.nn.Linear(n_geometry, d_model)
        self.neighbor_embedding = torch.nn.Embedding(n_species, d_model)
        self.centre_embedding = torch.nn.Embedding(n_species, d_model)
        # unit-norm embeddings, of the size of the geometry term: torch's N(0, 1) entries
        # (norm sqrt(d)) drown the geometry, and forces were slower to start learning
        for embedding in (self.neighbor_embedding, self.centre_embedding):
            torch.nn.init.normal_(embedding.weight, std=d_model**-0.5)
        self.compress = torch.nn.Sequential(
            torch.nn.Linear(3 * d_model, d_model),
            torch.nn.SiLU(),
            torch.nn.Linear(d_model, d_model),
        )
        self.transformer = Transformer(d_model, num_heads, d_feedforward, num_attention_layers)
        self.head = torch.nn.Sequential(
            torch.nn.LayerNorm(d_model),
            torch.nn.Linear(d_model, d_model),
            torch.nn.SiLU(),
            torch.nn.Linear(d_model, n_targets),
        )

    def forward(
        self,
        geometry: Tensor,
        species: Tensor,
        neighbor_species: Tensor,
        messages: Optional[Tensor],
        slots: Tensor,
        weights: Tensor,
        real: Tensor,
    ) -> Tuple[Tensor, Tensor]:
        """:param geometry: ``[E, n_geometry]`` edge features; :param species: ``[A]``;
        :param neighbor_species: ``[E]``; :param messages: ``[E, d]``, or None for zeros (the
        first layer); :param slots: ``[E]`` dense index of each edge (see
        ``neighbor_slots``); :param weights, real: ``[A, T]``.
        :return: per-atom energies ``[A, n_targets]`` and output edge tokens ``[E, d]``."""
        n_atoms, width = weights.shape
        edges = self._compress(
            self.geometry(geometry), self.neighbor_embedding(neighbor_species), messages
        )
        centre_slots = torch.arange(n_atoms, device=slots.device) * width
        tokens = torch.zeros(
            n_atoms * width, self.d_model, dtype=geometry.dtype, device=geometry.device
        )
        tokens = tokens.index_copy(0, slots, edges)
        tokens = tokens.index_copy(0, centre_slots, self.centre_embedding(species))
        tokens = self.transformer(tokens.reshape(n_atoms, width, self.d_model), weights, real)
        pooled = (tokens * weights.unsqueeze(-1)).sum(dim=1)
        return self.head(pooled), tokens.reshape(n_atoms * width, self.d_model)[slots]

    def _compress(self, geometry: Tensor, species: Tensor, messages: Optional[Tensor]) -> Tensor:
        """``compress([geometry, species, messages])``, each ``[E, d]``."""
        if messages is not None:
            return self.compress(torch.cat([geometry, species, messages], dim=1))
        # zero messages contribute nothing to the first product: skip their third of it
        first = self.compress[0]
        hidden = torch.nn.functional.linear(
            torch.cat([geometry, species], dim=1), first.weight[:, : 2 * self.d_model], first.bias
        )
        return self.compress[2](self.compress[1](hidden))
