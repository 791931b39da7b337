"""The transformer of PET: attention over each atom's tokens, with the cutoff in the weights.

Tokens of one atom are its centre token (always weight 1) and one token per neighbour (weight
``f(r)``, the smooth cutoff function; padding has weight 0). The attention of query ``q`` on
key ``k`` is

    a_qk = w_k exp(s_qk) / sum_k' w_k' exp(s_qk')

so a neighbour's influence on every other token goes to zero continuously (and with zero
derivative) as it reaches the cutoff, and padding contributes exactly nothing. The centre
token keeps the denominator positive, even for atoms without neighbours.
"""

import math

import torch
from torch import Tensor


class CutoffAttention(torch.nn.Module):
    """Multi-head self-attention with key weights ``w`` (see the module docstring)."""

    def __init__(self, d_model: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.d_head = d_model // num_heads
        self.qkv = torch.nn.Linear(d_model, 3 * d_model)
        self.out = torch.nn.Linear(d_model, d_model)

    def forward(self, x: Tensor, weights: Tensor, real: Tensor) -> Tensor:
        """:param x: ``[A, T, d]`` tokens; :param weights: ``[A, T]`` key weights;
        :param real: ``[A, T]`` bool, false for padding. :return: ``[A, T, d]``."""
        n_atoms, n_tokens, d_model = x.shape
        qkv = self.qkv(x).reshape(n_atoms, n_tokens, 3, self.num_heads, self.d_head)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [A, H, T, d_head]
        # w_k exp(s_qk) / sum_k' w_k' exp(s_qk') = softmax_k(s_qk + log w_k): one softmax,
        # which keeps a single [A, H, T, T] tensor for the backward (exp, product and
        # quotient kept three). Padding and zero weights get log w = -inf, i.e. exactly zero
        # attention and zero gradient; the centre token (w = 1) keeps every row finite.
        usable = real & (weights > 0)
        log_weights = torch.where(
            usable,
            torch.log(torch.where(usable, weights, torch.ones_like(weights))),
            torch.full_like(weights, float("-inf")),
        )
        logits = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.d_head)
        attention = torch.softmax(logits + log_weights[:, None, None, :], dim=-1)
        mixed = torch.matmul(attention, v).transpose(1, 2).reshape(n_atoms, n_tokens, d_model)
        return self.out(mixed)


class TransformerLayer(torch.nn.Module):
    """Pre-norm transformer block: ``x + attention(LN x)``, then ``x + MLP(LN x)``.

    Layer norms act on single tokens (smooth functions of them), so they keep the energy
    smooth; only the attention mixes tokens, with cutoff weights.
    """

    def __init__(self, d_model: int, num_heads: int, d_feedforward: int):
        super().__init__()
        self.norm_attention = torch.nn.LayerNorm(d_model)
        self.attention = CutoffAttention(d_model, num_heads)
        self.norm_feedforward = torch.nn.LayerNorm(d_model)
        self.feedforward = torch.nn.Sequential(
            torch.nn.Linear(d_model, d_feedforward),
            torch.nn.SiLU(),
            torch.nn.Linear(d_feedforward, d_model),
        )

    def forward(self, x: Tensor, weights: Tensor, real: Tensor) -> Tensor:
        x = x + self.attention(self.norm_attention(x), weights, real)
        return x + self.feedforward(self.norm_feedforward(x))


class Transformer(torch.nn.Module):
    """A stack of :class:`TransformerLayer` and a final layer norm."""

    def __init__(self, d_model: int, num_heads: int, d_feedforward: int, num_layers: int):
        super().__init__()
        self.layers = torch.nn.ModuleList(
            TransformerLayer(d_model, num_heads, d_feedforward) for _ in range(num_layers)
        )
        self.norm = torch.nn.LayerNorm(d_model)

    def forward(self, x: Tensor, weights: Tensor, real: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x, weights, real)
        return self.norm(x)
