"""Tests of PaiNN's building blocks against independent references: closed forms of the
radial functions, and explicit loops over pairs and atoms for the message and update blocks."""

import math

import torch

from ..modules.layers import Message, Update
from ..modules.radial import SineBasis, cutoff_function


def test_radial_basis_and_cutoff_function_closed_forms():
    """The basis is ``sin(n pi r / rc) / r``; the switch is 1 before ``rc - width``, 1/2
    half-way, 0 from ``rc`` on, with zero slope at both ends."""
    r = torch.tensor([0.5, 1.0, 2.9], dtype=torch.float64)
    expected = torch.stack([torch.sin(n * math.pi * r / 3.0) / r for n in (1, 2, 3)], dim=1)
    torch.testing.assert_close(SineBasis(3, 3.0)(r), expected)
    r = torch.tensor([1.0, 2.0, 2.5, 3.0, 4.0], dtype=torch.float64, requires_grad=True)
    switch = cutoff_function(r, 3.0, 1.0)
    torch.testing.assert_close(switch.detach(), torch.tensor([1.0, 1.0, 0.5, 0.0, 0.0]).double())
    (slope,) = torch.autograd.grad(switch.sum(), r)
    torch.testing.assert_close(slope[[0, 1, 3, 4]], torch.zeros(4, dtype=torch.float64))


def _random_pairs(n_atoms: int, n_pairs: int, n_features: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    s = torch.randn(n_atoms, n_features, generator=generator, dtype=torch.float64)
    v = torch.randn(3, n_atoms, n_features, generator=generator, dtype=torch.float64)
    edge_i = torch.randint(0, n_atoms, (n_pairs,), generator=generator)
    edge_j = torch.randint(0, n_atoms, (n_pairs,), generator=generator)
    unit = torch.nn.functional.normalize(
        torch.randn(3, n_pairs, generator=generator, dtype=torch.float64), dim=0
    )
    radial = torch.randn(n_pairs, 4, generator=generator, dtype=torch.float64)
    switch = torch.rand(n_pairs, generator=generator, dtype=torch.float64)
    return s, v, radial, switch, unit, edge_i, edge_j


def test_message_block_matches_a_loop_over_pairs():
    """``s_i += sum_j phi(s_j) W_s(r_ij)`` and ``v_i += sum_j (a v_j + b r̂_ij)``, pair by
    pair (repeated centres included): a failure means messages reach the wrong atoms."""
    torch.manual_seed(0)
    block = Message(5, 4).double()
    s, v, radial, switch, unit, edge_i, edge_j = _random_pairs(6, 20, 5)
    new_s, new_v = block(s, v, radial, switch, unit, edge_i, edge_j)
    expected_s, expected_v = s.clone(), v.clone()
    for e in range(len(edge_i)):
        i, j = int(edge_i[e]), int(edge_j[e])
        x = block.phi(s[j]) * block.filter(radial[e]) * switch[e]
        ds, a, b = x[:5], x[5:10], x[10:]
        expected_s[i] += ds
        expected_v[:, i] += v[:, j] * a + unit[:, e : e + 1] * b
    torch.testing.assert_close(new_s, expected_s.detach())
    torch.testing.assert_close(new_v, expected_v.detach())


def test_update_block_matches_the_formula_atom_by_atom():
    """``v += a U v``, ``s += b <U v, V v> + c`` with ``(a, b, c) = mlp(s, |V v|)``."""
    torch.manual_seed(0)
    block = Update(5).double()
    s, v, *_ = _random_pairs(4, 1, 5)
    new_s, new_v = block(s, v)
    for i in range(4):
        uv, vv = v[:, i] @ block.u.weight.T, v[:, i] @ block.v.weight.T  # [3, F]
        norm = torch.sqrt((vv**2).sum(0) + 1e-8)
        a, b, c = block.mlp(torch.cat([s[i], norm])).split(5)
        torch.testing.assert_close(new_v[:, i], (v[:, i] + a * uv).detach())
        torch.testing.assert_close(new_s[i], (s[i] + b * (uv * vv).sum(0) + c).detach())
