"""Random rotations of training batches: PET is not rotation invariant by construction, so it
learns the invariance from rotated copies of the data (the recipe of the PET paper)."""

import torch
from torch import Tensor

from mtt.data.graph import Graph
from mtt.training.batches import LabelBatch, quantity_kind


def random_rotations(n: int, generator: torch.Generator) -> Tensor:
    """``n`` rotation matrices ``[n, 3, 3]`` (float64), uniform over SO(3).

    A unit quaternion from a 4D Gaussian is uniform on the 3-sphere, and the map from unit
    quaternions to rotations carries that to the uniform (Haar) measure on rotations.
    """
    q = torch.randn(n, 4, generator=generator, dtype=torch.float64)
    w, x, y, z = (q / torch.linalg.vector_norm(q, dim=1, keepdim=True)).unbind(1)
    rows = [
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ]
    return torch.stack([torch.stack(row, dim=1) for row in rows], dim=1)


def _rotate_rows(vectors: Tensor, rotations: Tensor, owner: Tensor) -> Tensor:
    """``v R^T`` for each row vector ``v``, with the rotation of its structure ``owner``."""
    matrices = rotations.to(device=vectors.device, dtype=vectors.dtype)[owner]
    return torch.bmm(vectors.unsqueeze(1), matrices.transpose(1, 2)).squeeze(1)


def rotate_graph(graph: Graph, rotations: Tensor) -> Graph:
    """Rotate positions and cell vectors (rows) of each structure; integer cell shifts stay
    valid, since every edge vector ``x_j - x_i + S cell`` rotates with them."""
    cells = rotations.to(device=graph.cells.device, dtype=graph.cells.dtype)
    return graph._replace(
        positions=_rotate_rows(graph.positions, rotations, graph.system_index),
        cells=torch.bmm(graph.cells, cells.transpose(1, 2)),
    )


def rotate_labels(labels: LabelBatch, rotations: Tensor) -> LabelBatch:
    """Forces rotate as vectors (``F R^T``), stresses as tensors (``R σ R^T``); energies and
    rows without labels (zeros) are unchanged."""
    owner = torch.repeat_interleave(
        torch.arange(len(labels.n_atoms), device=labels.n_atoms.device), labels.n_atoms
    )
    values = {}
    for quantity, value in labels.values.items():
        kind = quantity_kind(quantity)
        if kind == "forces":
            value = _rotate_rows(value, rotations, owner)
        elif kind == "stress":
            matrices = rotations.to(device=value.device, dtype=value.dtype)
            value = matrices @ value @ matrices.transpose(1, 2)
        values[quantity] = value
    return LabelBatch(values, labels.mask, labels.n_atoms)
