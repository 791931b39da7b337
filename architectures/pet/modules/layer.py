"""One message-passing layer of PET: edge tokens in, per-atom energies and edge tokens out."""

from typing import List, Optional, Tuple

import torch
from torch import Tensor

from .neighbors import TokenLayout
from .rows import add_rows_, pick_rows
from .transformer import Transformer, layer_norm_backward, layer_norm_saving, silu_backward


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
        layout: TokenLayout,
        weights: Tensor,
        real: Tensor,
    ) -> Tuple[Tensor, Tensor, List[Tensor], List[List[Tensor]]]:
        """:param geometry: ``[E, n_geometry]`` edge features; :param species: ``[A]``;
        :param neighbor_species: ``[E]``; :param messages: ``[E, d]``, or None for zeros (the
        first layer); :param layout: where the tokens are (see ``token_layout``);
        :param weights, real: ``[A, T]`` key weights and mask of the dense layout.
        :return: per-atom energies ``[A, n_targets]``, output edge tokens ``[E, d]``, and
        what :meth:`backward` needs: this layer's intermediates and the transformer's."""
        n_atoms = weights.shape[0]
        folded, table = self._folded_compression()
        hidden = torch.addmm(pick_rows(table, neighbor_species), geometry, folded.t())
        if messages is not None:  # None: zeros, which add nothing
            hidden = torch.addmm(
                hidden, messages, self.compress[0].weight[:, 2 * self.d_model :].t()
            )
        edges = self.compress[2](torch.nn.functional.silu(hidden))
        n_tokens = layout.index.shape[0]
        tokens = torch.zeros(n_tokens, self.d_model, dtype=geometry.dtype, device=geometry.device)
        tokens.index_copy_(0, layout.rows, edges)
        tokens.index_copy_(0, layout.centres, pick_rows(self.centre_embedding.weight, species))
        tokens, saved = self.transformer.forward_saving(tokens, layout.index, weights, real)
        token_weights = pick_rows(weights.reshape(-1), layout.index).unsqueeze(-1)
        pooled = torch.zeros(n_atoms, self.d_model, dtype=tokens.dtype, device=tokens.device)
        pooled = add_rows_(pooled, layout.atoms, tokens * token_weights)
        norm = self.head[0]
        normed, mean, rstd = layer_norm_saving(pooled, norm.weight, norm.bias, norm.eps)
        head_hidden = self.head[1](normed)
        energies = self.head[3](torch.nn.functional.silu(head_hidden))
        edge_tokens = pick_rows(tokens, layout.rows)
        saved_here = [hidden, tokens, token_weights, pooled, mean, rstd, head_hidden, folded]
        return energies, edge_tokens, saved_here, saved

    def _folded_compression(self) -> Tuple[Tensor, Tensor]:
        """The compression's first product of ``[geometry(g), embedding(s), message]``
        folded into the two layers before it: ``W_g geometry.weight`` (``[d, n_geometry]``)
        and, per species, ``W_s embedding + W_g geometry.bias + bias`` (``[n_species, d]``).
        Products of weights, computed once per call: the edges then take one
        ``[E, n_geometry]`` product and a row lookup where the three blocks took two
        ``[E, d] x [d, d]`` products, their concatenation and their gradients (the same
        function; the checkpoint keeps the separate layers)."""
        first = self.compress[0]
        d = self.d_model
        weight = first.weight
        folded = torch.matmul(weight[:, :d], self.geometry.weight)
        shift = torch.mv(weight[:, :d], self.geometry.bias) + first.bias
        table = torch.nn.functional.linear(
            self.neighbor_embedding.weight, weight[:, d : 2 * d], shift
        )
        return folded, table

    def backward(
        self,
        grad_energies: Tensor,
        grad_edge_tokens: Optional[Tensor],
        saved: List[Tensor],
        transformer_saved: List[List[Tensor]],
        layout: TokenLayout,
        weights: Tensor,
        real: Tensor,
        with_messages: bool,
    ) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
        """Gradients of the edge geometry features ``[E, n_geometry]``, the key weights
        ``[A, T]`` and (``with_messages``) the incoming messages ``[E, d]``, given those of
        the energies ``[A, n_targets]`` and of the output edge tokens (None: zero)."""
        hidden, tokens, token_weights, pooled, mean, rstd, head_hidden, folded = (
            saved[0],
            saved[1],
            saved[2],
            saved[3],
            saved[4],
            saved[5],
            saved[6],
            saved[7],
        )
        n_atoms, width = weights.shape
        grad_head = silu_backward(torch.matmul(grad_energies, self.head[3].weight), head_hidden)
        norm = self.head[0]
        grad_pooled = layer_norm_backward(
            torch.matmul(grad_head, self.head[1].weight),
            pooled,
            mean,
            rstd,
            norm.weight,
            norm.bias,
        )
        grad_pooled = pick_rows(grad_pooled, layout.atoms)  # each token's atom's
        grad_tokens = grad_pooled * token_weights
        grad_weights = torch.zeros(n_atoms * width, dtype=tokens.dtype, device=tokens.device)
        grad_weights.index_copy_(0, layout.index, (tokens * grad_pooled).sum(dim=-1))
        if grad_edge_tokens is not None:
            grad_tokens = add_rows_(grad_tokens, layout.rows, grad_edge_tokens)
        grad_tokens, grad_key_weights = self.transformer.backward(
            grad_tokens, transformer_saved, layout.index, weights, real
        )
        grad_edges = pick_rows(grad_tokens, layout.rows)
        grad_hidden = silu_backward(torch.matmul(grad_edges, self.compress[2].weight), hidden)
        grad_geometry = torch.matmul(grad_hidden, folded)
        grad_messages: Optional[Tensor] = None
        if with_messages:
            first = self.compress[0].weight
            grad_messages = torch.matmul(grad_hidden, first[:, 2 * self.d_model :])
        return grad_geometry, grad_weights.reshape(n_atoms, width) + grad_key_weights, grad_messages
