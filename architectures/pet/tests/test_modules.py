"""Tests of PET's building blocks against independent references: brute-force edge pairing,
explicit loops over atoms, and the defining properties of rotations."""

import ase.build
import torch

from mtt.data.graph import atoms_to_graph, edge_vectors
from mtt.testing import periodic_crystal
from mtt.training.batches import LabelBatch

from ..modules.augmentation import random_rotations, rotate_graph, rotate_labels
from ..modules.neighbors import neighbor_slots, reverse_edges, token_layout
from ..modules.radial import cutoff_function
from ..modules.transformer import CutoffAttention, log_key_weights


def _shuffled_graph(atoms, cutoff, seed=0):
    """A full neighbour list in random order, so nothing relies on the order vesin uses."""
    graph = atoms_to_graph(atoms, cutoff, torch.float64)
    order = torch.randperm(len(graph.edge_i), generator=torch.Generator().manual_seed(seed))
    return graph.edge_i[order], graph.edge_j[order], graph.edge_shifts[order]


def test_reverse_edges_match_brute_force_on_a_periodic_cell():
    """Every edge i -> j (shift S) is paired with j -> i (shift -S), as a dictionary lookup
    finds it; the small cell and long cutoff give many images, self-images included. A
    failure means PET passes messages along the wrong edges."""
    edge_i, edge_j, shifts = _shuffled_graph(periodic_crystal(), cutoff=5.0)
    assert bool((edge_i == edge_j).any())  # periodic self-images are part of the test
    reverse, found = reverse_edges(edge_i, edge_j, shifts)
    keys = {
        (int(i), int(j), tuple(int(s) for s in shift)): e
        for e, (i, j, shift) in enumerate(zip(edge_i, edge_j, shifts))
    }
    expected = [
        keys[(int(j), int(i), tuple(-int(s) for s in shift))]
        for i, j, shift in zip(edge_i, edge_j, shifts)
    ]
    assert bool(found.all())
    assert reverse.tolist() == expected


def test_reverse_edges_flag_edges_without_reverse():
    """An edge whose reverse is missing (a non-symmetric list) is flagged, not mispaired."""
    edge_i, edge_j, shifts = _shuffled_graph(ase.build.molecule("CH3CH2OH"), cutoff=3.0)
    keep = torch.arange(1, len(edge_i))  # drop edge 0: its reverse loses its partner
    reverse, found = reverse_edges(edge_i[keep], edge_j[keep], shifts[keep])
    lonely = [
        k
        for k in range(len(keep))
        if (edge_i[keep][k], edge_j[keep][k]) == (edge_j[0], edge_i[0])
        and bool((shifts[keep][k] == -shifts[0]).all())
    ]
    assert (~found).nonzero().reshape(-1).tolist() == lonely
    paired = found.nonzero().reshape(-1)
    assert bool((edge_i[keep][reverse[paired]] == edge_j[keep][paired]).all())


def test_reverse_edges_of_an_empty_list():
    empty = torch.zeros(0, dtype=torch.int64)
    reverse, found = reverse_edges(empty, empty, torch.zeros(0, 3))
    assert reverse.shape == (0,) and found.shape == (0,)


def test_neighbor_slots_fill_one_row_per_centre():
    """Each edge gets its own slot, in its centre's row, after the centre token (column 0);
    rows are as wide as the most-connected atom plus one. Atom 3 has no neighbours."""
    edge_i = torch.tensor([2, 0, 2, 1, 0, 2, 4])
    slots, width = neighbor_slots(edge_i, n_atoms=5)
    assert width == 4
    rows, columns = slots // width, slots % width
    assert rows.tolist() == edge_i.tolist()
    assert bool((columns >= 1).all()) and len(set(slots.tolist())) == len(slots)
    for atom in range(5):
        assert sorted(columns[edge_i == atom].tolist()) == list(
            range(1, int((edge_i == atom).sum()) + 1)
        )


def test_cutoff_function_is_smooth_and_vanishes_at_the_cutoff():
    r = torch.tensor([0.5, 2.5, 2.75, 3.0, 3.5], dtype=torch.float64, requires_grad=True)
    f = cutoff_function(r, 3.0, 0.5)
    assert f.tolist() == [1.0, 1.0, 0.5, 0.0, 0.0]
    (grad,) = torch.autograd.grad(f.sum(), r)
    assert abs(float(grad[1])) < 1e-12 and float(grad[3]) == 0.0


def test_attention_ignores_padding_and_zero_weight_tokens():
    """Adding padded slots, or real tokens of zero weight (neighbours at the cutoff),
    changes nothing for the other tokens: what makes energies continuous at the cutoff."""
    torch.manual_seed(0)
    attention = CutoffAttention(8, 2).double()
    x = torch.randn(3, 4, 8, dtype=torch.float64)
    weights = torch.rand(3, 4, dtype=torch.float64)
    real = torch.ones(3, 4, dtype=torch.bool)
    reference = attention(x.reshape(12, 8), log_key_weights(weights, real), torch.arange(12))
    padded_weights = torch.cat([weights, torch.zeros(3, 2, dtype=torch.float64)], dim=1)
    # two padding slots per atom: the same 12 tokens in a [3, 6] layout
    mask = torch.cat([real, torch.zeros(3, 2, dtype=torch.bool)], dim=1)
    index = mask.reshape(-1).nonzero().reshape(-1)
    out = attention(x.reshape(12, 8), log_key_weights(padded_weights, mask), index)
    torch.testing.assert_close(out, reference)
    # two real tokens of weight zero per atom
    extra = torch.cat([x, 100 * torch.randn(3, 2, 8, dtype=torch.float64)], dim=1)
    mask = torch.ones(3, 6, dtype=torch.bool)
    out = attention(extra.reshape(18, 8), log_key_weights(padded_weights, mask), torch.arange(18))
    torch.testing.assert_close(out.reshape(3, 6, 8)[:, :4].reshape(12, 8), reference)


def test_token_layout_lists_the_occupied_slots_in_order():
    """Tokens are the centres and edges, in the dense layout's order without its padding:
    each edge's and centre's row holds its slot, and each token knows its atom."""
    edge_i = torch.tensor([2, 0, 2, 1, 0, 2, 4])
    slots, width = neighbor_slots(edge_i, n_atoms=5)
    layout = token_layout(slots, 5, width)
    occupied = sorted(slots.tolist() + [atom * width for atom in range(5)])
    assert layout.index.tolist() == occupied
    assert layout.index[layout.rows].tolist() == slots.tolist()
    assert layout.index[layout.centres].tolist() == [atom * width for atom in range(5)]
    assert layout.atoms.tolist() == [slot // width for slot in occupied]


def test_random_rotations_are_proper_rotations():
    rotations = random_rotations(50, torch.Generator().manual_seed(0))
    identity = torch.eye(3, dtype=torch.float64).expand(50, 3, 3)
    torch.testing.assert_close(rotations @ rotations.transpose(1, 2), identity)
    torch.testing.assert_close(torch.linalg.det(rotations), torch.ones(50, dtype=torch.float64))
    # the same seed draws the same rotations (restarts are exact)
    torch.testing.assert_close(rotations, random_rotations(50, torch.Generator().manual_seed(0)))


def test_rotating_a_batch_rotates_edges_forces_and_stress():
    """Edge vectors rebuilt from the rotated positions, cell and unchanged integer shifts
    are the rotated edge vectors; forces rotate as vectors and stresses as tensors."""
    graph = atoms_to_graph(periodic_crystal(), 4.0, torch.float64)
    rotation = random_rotations(1, torch.Generator().manual_seed(1))
    rotated = rotate_graph(graph, rotation)
    torch.testing.assert_close(edge_vectors(rotated), edge_vectors(graph) @ rotation[0].T)
    n = graph.positions.shape[0]
    forces = torch.randn(n, 3, dtype=torch.float64)
    stress = torch.randn(1, 3, 3, dtype=torch.float64)
    labels = LabelBatch(
        {"energy": torch.tensor([1.5]), "energy/forces": forces, "energy/stress": stress},
        {"energy": torch.tensor([True])},
        torch.tensor([n]),
    )
    out = rotate_labels(labels, rotation)
    torch.testing.assert_close(out.values["energy/forces"], forces @ rotation[0].T)
    torch.testing.assert_close(
        out.values["energy/stress"][0], rotation[0] @ stress[0] @ rotation[0].T
    )
    assert out.values["energy"].tolist() == [1.5]
