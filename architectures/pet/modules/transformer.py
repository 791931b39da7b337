"""The transformer of PET: attention over each atom's tokens, with the cutoff in the weights.

Tokens of one atom are its centre token (always weight 1) and one token per neighbour (weight
``f(r)``, the smooth cutoff function; padding has weight 0). The attention of query ``q`` on
key ``k`` is

    a_qk = w_k exp(s_qk) / sum_k' w_k' exp(s_qk')

so a neighbour's influence on every other token goes to zero continuously (and with zero
derivative) as it reaches the cutoff, and padding contributes exactly nothing. The centre
token keeps the denominator positive, even for atoms without neighbours.

Tokens come packed, ``[N, d]`` (see ``token_layout``): layer norms, linear layers and
activations run on the ``N`` real tokens only, and the attention scatters its queries, keys
and values into the dense ``[A, T]`` layout for its batched products (padding: zeros, which
its ``-inf`` key weights mask).

Every module here also has ``forward_saving`` (the output and the intermediates its backward
needs) and ``backward`` (the gradient with respect to its *inputs*, for fixed weights), written
with the same native kernels autograd would call. Exported models use them for forces
(``Pet.energies_and_vector_gradient``): without autograd, an exported TorchScript model
differentiates through TorchScript's own symbolic formulas, which measured 20-30 % slower
per layer than these (SiLU's alone is seven elementwise passes instead of one). Training
differentiates the result of ``forward`` and ``backward`` once more, by autograd
(``Pet.energies_and_input_gradients``); in eager training the two native gradient kernels
(SiLU's, layer norm's) bring derivatives of their own (see :func:`_own_derivatives`).
"""

import math
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from .rows import compiling, pick_rows


def log_key_weights(weights: Tensor, real: Tensor) -> Tensor:
    """``log w`` of every key, ``-inf`` for padding and zero weights.

    ``w_k exp(s_qk) / sum_k' w_k' exp(s_qk') = softmax_k(s_qk + log w_k)``: one softmax, which
    keeps a single ``[A, H, T, T]`` tensor for the backward (exp, product and quotient kept
    three). ``-inf`` gives exactly zero attention and zero gradient; the centre token (w = 1)
    keeps every row finite."""
    usable = real & (weights > 0)
    return torch.where(
        usable,
        torch.log(torch.where(usable, weights, torch.ones_like(weights))),
        torch.full_like(weights, float("-inf")),
    )


def log_key_weights_backward(grad: Tensor, weights: Tensor, real: Tensor) -> Tensor:
    usable = real & (weights > 0)
    safe = torch.where(usable, weights, torch.ones_like(weights))
    return torch.where(usable, grad / safe, torch.zeros_like(grad))


def layer_norm_saving(
    x: Tensor, weight: Tensor, bias: Tensor, eps: float
) -> Tuple[Tensor, Tensor, Tensor]:
    """Layer norm over the last dimension, with the mean and inverse deviation."""
    return torch.native_layer_norm(x, [x.shape[-1]], weight, bias, eps)


def _native_layer_norm_backward(
    grad: Tensor, x: Tensor, mean: Tensor, rstd: Tensor, weight: Tensor, bias: Tensor
) -> Tensor:
    found = torch.ops.aten.native_layer_norm_backward(
        grad, x, [x.shape[-1]], mean, rstd, weight, bias, [True, False, False]
    )[0]
    assert found is not None
    return found


def _own_derivatives() -> bool:
    """Whether a gradient computed now is differentiated by eager autograd, where
    ``_LayerNormBackward`` and ``_SiluBackward`` replace autograd's formulas. Not in
    TorchScript, which cannot call autograd functions (callers test
    ``torch.jit.is_scripting()`` themselves: TorchScript compiles a branch out only on that
    literal test, so this function is never scripted), nor under torch.compile (2.13), which
    instantiates autograd functions while tracing (a DeprecationWarning, to become an error)
    and fuses the elementary passes anyway."""
    return torch.is_grad_enabled() and not torch.compiler.is_compiling()


class _LayerNormBackward(torch.autograd.Function):
    """The input gradient of a layer norm (native kernel), with its own derivative.

    With ``x^ = (x - mean) r`` (``r = rstd``), ``h = weight * grad`` and the projection
    ``P(v) = v - mean(v) - x^ mean(v x^)`` (row means; P is symmetric), the gradient is
    ``dx = r P(h)``. For an upstream ``c``: ``d/dh = r P(c)``, and, with ``r`` and ``x^``
    functions of ``x``, ``d/dx = -r^2 (x^ mean(c P(h)) + P(h) mean(c x^) + P(c) mean(h x^))``.
    In terms of ``xm = x - mean`` and ``dx`` (``x^ = r xm``, ``P(h) = dx / r``) that is
    ``-r^2 (xm mean(c dx) + dx mean(c xm) + r P(c) mean(h xm))``: three row means and
    three passes, none of ``x^`` or ``P(h)`` formed. autograd's own formula for this
    (``NativeLayerNormBackwardBackward0``) took ~7 % of an eager pet training step; this
    takes fewer than half as many passes.
    """

    @staticmethod
    def forward(ctx, grad, x, mean, rstd, weight, bias):
        dx = _native_layer_norm_backward(grad, x, mean, rstd, weight, bias)
        ctx.save_for_backward(grad, x, mean, rstd, weight, dx)
        return dx

    @staticmethod
    def backward(ctx, c):
        grad, x, mean, rstd, weight, dx = ctx.saved_tensors
        centred = x - mean
        c_x = (c * centred).mean(dim=-1, keepdim=True)
        h_x = (grad * weight).mul_(centred).mean(dim=-1, keepdim=True)
        c_dx = (c * dx).mean(dim=-1, keepdim=True)
        rstd2 = rstd * rstd
        # r P(c) = r (c - mean(c)) - r^3 xm mean(c xm)
        grad_h = (c - c.mean(dim=-1, keepdim=True)).mul_(rstd)
        grad_h = grad_h.addcmul_(centred, rstd2 * rstd * c_x, value=-1.0)
        grad_weight: Optional[Tensor] = None
        if ctx.needs_input_grad[4]:  # not for a frozen norm (fine-tuning)
            grad_weight = (grad * grad_h).reshape(-1, x.shape[-1]).sum(dim=0)
        grad_x = centred * (-rstd2 * c_dx)
        grad_x = grad_x.addcmul_(dx, -rstd2 * c_x).addcmul_(grad_h, -rstd2 * h_x)
        return grad_h * weight, grad_x, None, None, grad_weight, None


def layer_norm_backward(
    grad: Tensor, x: Tensor, mean: Tensor, rstd: Tensor, weight: Tensor, bias: Tensor
) -> Tensor:
    """The gradient of a layer norm's input given its output's, for fixed mean and rstd
    (those of ``layer_norm_saving``); differentiable (training differentiates it again)."""
    if not torch.jit.is_scripting():  # see _own_derivatives
        if _own_derivatives():
            return _LayerNormBackward.apply(grad, x, mean, rstd, weight, bias)
    return _native_layer_norm_backward(grad, x, mean, rstd, weight, bias)


def _fills(index: Tensor, n_slots: int) -> bool:
    """Whether the tokens fill every slot of the dense layout (no padding: packed rows are
    the dense rows). Under torch.compile always false: a branch on the batch's sizes would
    become a guard of the compiled step, and the scatter and gather fuse with the copies
    next to them anyway."""
    if compiling():
        return False
    return index.shape[0] == n_slots


def to_dense(x: Tensor, index: Tensor, n_slots: int) -> Tensor:
    """Packed rows ``[N, c]`` in the dense layout ``[n_slots, c]``, zeros for padding."""
    if _fills(index, n_slots):
        return x
    # in place into new zeros: the out-of-place index_copy would copy the zeros once more
    dense = torch.zeros(n_slots, x.shape[1], dtype=x.dtype, device=x.device)
    return dense.index_copy_(0, index, x)


def to_packed(x: Tensor, index: Tensor, n_slots: int) -> Tensor:
    """Dense rows ``[n_slots, c]`` back to the packed ``[N, c]``."""
    if _fills(index, n_slots):
        return x
    return pick_rows(x, index)


class _SiluBackward(torch.autograd.Function):
    """``grad * silu'(x)`` in one native pass, with its own derivative: autograd has none
    for ``aten::silu_backward``, and differentiating the formula in elementary operations
    took 16 passes over the tensor where this takes 9."""

    @staticmethod
    def forward(ctx, grad: Tensor, x: Tensor) -> Tensor:
        ctx.save_for_backward(grad, x)
        return torch.ops.aten.silu_backward(grad, x)

    @staticmethod
    def backward(ctx, out: Tensor) -> Tuple[Tensor, Tensor]:
        grad, x = ctx.saved_tensors
        sigmoid = torch.sigmoid(x)
        # silu''(x) = s (1 - s) (2 + x (1 - 2 s)), s = sigmoid(x)
        slope = torch.addcmul(sigmoid, sigmoid, sigmoid, value=-1.0)
        curvature = slope * torch.addcmul(x, x, sigmoid, value=-2.0).add_(2.0)
        return torch.ops.aten.silu_backward(out, x), out * grad * curvature


def silu_backward(grad: Tensor, x: Tensor) -> Tensor:
    if not torch.jit.is_scripting():  # see _own_derivatives
        if _own_derivatives():
            return _SiluBackward.apply(grad, x)
    if torch.is_grad_enabled():
        # the formula in differentiable operations: TorchScript has no custom autograd
        # functions (and training never runs scripted), torch.compile fuses the passes
        sigmoid = torch.sigmoid(x)
        return grad * (sigmoid * (1.0 + x * (1.0 - sigmoid)))
    return torch.ops.aten.silu_backward(grad, x)


class CutoffAttention(torch.nn.Module):
    """Multi-head self-attention with key weights ``w`` (see the module docstring)."""

    def __init__(self, d_model: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.d_head = d_model // num_heads
        self.qkv = torch.nn.Linear(d_model, 3 * d_model)
        self.out = torch.nn.Linear(d_model, d_model)

    def forward(self, x: Tensor, log_weights: Tensor, index: Tensor) -> Tensor:
        """:param x: ``[N, d]`` tokens; :param log_weights: ``[A, T]`` from
        :func:`log_key_weights`; :param index: ``[N]`` the tokens' dense slots.
        :return: ``[N, d]``."""
        return self.forward_saving(x, log_weights, index)[0]

    def _scaled_qkv(self) -> Tuple[Tensor, Tensor]:
        """The ``qkv`` weight and bias with the query rows divided by ``sqrt(d_head)``: the
        logits' scale applied to ``[3d, d]`` numbers once instead of to every ``[T, T]``
        attention matrix (and to its gradient) in every step."""
        d_model = self.qkv.weight.shape[1]
        scale = torch.ones(3 * d_model, dtype=self.qkv.weight.dtype, device=self.qkv.weight.device)
        scale[:d_model] = 1.0 / math.sqrt(self.d_head)
        return self.qkv.weight * scale.unsqueeze(1), self.qkv.bias * scale

    def forward_saving(
        self, x: Tensor, log_weights: Tensor, index: Tensor
    ) -> Tuple[Tensor, List[Tensor]]:
        """The output, and ``q`` (scaled), ``k``, ``v`` (``[A H, T, d_head]``) and the
        attention (``[A H, T, T]``)."""
        n_atoms, n_tokens = log_weights.shape
        n_slots = n_atoms * n_tokens
        n_heads = self.num_heads
        d_model = x.shape[1]
        weight, bias = self._scaled_qkv()
        qkv = to_dense(torch.nn.functional.linear(x, weight, bias), index, n_slots)
        qkv = qkv.reshape(n_atoms, n_tokens, 3, n_heads, self.d_head).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.reshape(3, n_atoms * n_heads, n_tokens, self.d_head).unbind(0)
        # log w_k added by the product itself (one pass over [A H, T, T] fewer)
        key_terms = log_weights.unsqueeze(1).expand(n_atoms, n_heads, n_tokens)
        key_terms = key_terms.reshape(n_atoms * n_heads, 1, n_tokens)
        attention = torch.softmax(torch.baddbmm(key_terms, q, k.transpose(1, 2)), dim=-1)
        mixed = torch.bmm(attention, v).reshape(n_atoms, n_heads, n_tokens, self.d_head)
        mixed = mixed.transpose(1, 2).reshape(n_slots, d_model)
        return self.out(to_packed(mixed, index, n_slots)), [q, k, v, attention]

    def backward(self, grad: Tensor, saved: List[Tensor], index: Tensor) -> Tuple[Tensor, Tensor]:
        """Gradients of the input tokens and of the log weights."""
        q, k, v, attention = saved[0], saved[1], saved[2], saved[3]
        n_tokens = attention.shape[-1]
        n_heads = self.num_heads
        n_atoms = attention.shape[0] // n_heads
        n_slots = n_atoms * n_tokens
        d_model = grad.shape[1]
        grad_mixed = to_dense(torch.matmul(grad, self.out.weight), index, n_slots)
        grad_mixed = grad_mixed.reshape(n_atoms, n_tokens, n_heads, self.d_head).transpose(1, 2)
        grad_mixed = grad_mixed.reshape(n_atoms * n_heads, n_tokens, self.d_head)
        grad_attention = torch.bmm(grad_mixed, v.transpose(1, 2))
        grad_v = torch.bmm(attention.transpose(1, 2), grad_mixed)
        grad_logits = torch._softmax_backward_data(grad_attention, attention, -1, attention.dtype)
        grad_log_weights = grad_logits.reshape(n_atoms, n_heads, n_tokens, n_tokens).sum(dim=(1, 2))
        grad_q = torch.bmm(grad_logits, k)  # of the scaled queries
        grad_k = torch.bmm(grad_logits.transpose(1, 2), q)
        grad_qkv = torch.stack([grad_q, grad_k, grad_v])
        grad_qkv = grad_qkv.reshape(3, n_atoms, n_heads, n_tokens, self.d_head)
        grad_qkv = grad_qkv.permute(1, 3, 0, 2, 4).reshape(n_slots, 3 * d_model)
        grad_qkv = to_packed(grad_qkv, index, n_slots)
        return torch.matmul(grad_qkv, self._scaled_qkv()[0]), grad_log_weights


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

    def forward(self, x: Tensor, log_weights: Tensor, index: Tensor) -> Tensor:
        return self.forward_saving(x, log_weights, index)[0]

    def forward_saving(
        self, x: Tensor, log_weights: Tensor, index: Tensor
    ) -> Tuple[Tensor, List[Tensor]]:
        norm = self.norm_attention
        normed, mean, rstd = layer_norm_saving(x, norm.weight, norm.bias, norm.eps)
        attended, saved = self.attention.forward_saving(normed, log_weights, index)
        middle = x + attended
        norm = self.norm_feedforward
        normed, mean_ff, rstd_ff = layer_norm_saving(middle, norm.weight, norm.bias, norm.eps)
        hidden = self.feedforward[0](normed)
        y = middle + self.feedforward[2](torch.nn.functional.silu(hidden))
        return y, [middle, mean_ff, rstd_ff, hidden] + saved + [mean, rstd]

    def backward(
        self, grad: Tensor, x: Tensor, saved: List[Tensor], index: Tensor
    ) -> Tuple[Tensor, Tensor]:
        """Gradients of the input ``x`` and of the log weights, given the output's."""
        middle, mean_ff, rstd_ff, hidden = saved[0], saved[1], saved[2], saved[3]
        grad_hidden = silu_backward(torch.matmul(grad, self.feedforward[2].weight), hidden)
        norm = self.norm_feedforward
        grad = grad + layer_norm_backward(
            torch.matmul(grad_hidden, self.feedforward[0].weight),
            middle,
            mean_ff,
            rstd_ff,
            norm.weight,
            norm.bias,
        )
        grad_normed, grad_log_weights = self.attention.backward(grad, saved[4:8], index)
        norm = self.norm_attention
        grad = grad + layer_norm_backward(
            grad_normed, x, saved[8], saved[9], norm.weight, norm.bias
        )
        return grad, grad_log_weights


class Transformer(torch.nn.Module):
    """A stack of :class:`TransformerLayer` and a final layer norm."""

    def __init__(self, d_model: int, num_heads: int, d_feedforward: int, num_layers: int):
        super().__init__()
        self.layers = torch.nn.ModuleList(
            TransformerLayer(d_model, num_heads, d_feedforward) for _ in range(num_layers)
        )
        self.norm = torch.nn.LayerNorm(d_model)

    def forward(self, x: Tensor, index: Tensor, weights: Tensor, real: Tensor) -> Tensor:
        """:param x: ``[N, d]`` tokens; :param index: ``[N]`` their slots in the dense
        ``[A, T]`` layout; :param weights: ``[A, T]`` key weights; :param real: ``[A, T]``
        bool, false for padding. :return: ``[N, d]``."""
        return self.forward_saving(x, index, weights, real)[0]

    def forward_saving(
        self, x: Tensor, index: Tensor, weights: Tensor, real: Tensor
    ) -> Tuple[Tensor, List[List[Tensor]]]:
        """The output, and per block its input and what its backward needs (the final
        norm's last)."""
        log_weights = log_key_weights(weights, real)
        saved: List[List[Tensor]] = []
        for layer in self.layers:
            y, block = layer.forward_saving(x, log_weights, index)
            saved.append([x] + block)
            x = y
        y, mean, rstd = layer_norm_saving(x, self.norm.weight, self.norm.bias, self.norm.eps)
        saved.append([x, mean, rstd])
        return y, saved

    def backward(
        self,
        grad: Tensor,
        saved: List[List[Tensor]],
        index: Tensor,
        weights: Tensor,
        real: Tensor,
    ) -> Tuple[Tensor, Tensor]:
        """Gradients of the input tokens and of the key weights, given the output's."""
        last = saved[-1]
        grad = layer_norm_backward(
            grad, last[0], last[1], last[2], self.norm.weight, self.norm.bias
        )
        grad_log_weights = torch.zeros_like(weights)
        n_layers = len(saved) - 1
        for step in range(n_layers):
            k = n_layers - 1 - step
            # TorchScript indexes a ModuleList only with constants: pick block k by iterating
            for position, layer in enumerate(self.layers):
                if position == k:
                    block = saved[k]
                    grad, grad_block = layer.backward(grad, block[0], block[1:], index)
                    grad_log_weights = grad_log_weights + grad_block
        return grad, log_key_weights_backward(grad_log_weights, weights, real)
