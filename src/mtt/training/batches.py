"""Training data prepared once: native model data and label tensors, batched each step.

Everything that does not change during training (neighbour lists, label tensors) is computed
here, before the first epoch, and only concatenated per batch; except for data sets read from
disk (packed directories, :mod:`mtt.data.lazy`), whose structures are read and turned into
model data per batch, so that memory does not grow with their size.
"""

import logging
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch

from ..data.dataset import LabelledDataset
from ..data.lazy import LazySequence
from ..errors import MttError

LOGGER = logging.getLogger("mtt")


@dataclass
class LabelBatch:
    """Labels of a batch: ``values[q]`` and a boolean ``mask[q]`` of which rows have them."""

    values: Dict[str, torch.Tensor]
    mask: Dict[str, torch.Tensor]
    n_atoms: torch.Tensor  # [S]


#: Quantities of direct (non-conservative) heads, ``<target>/direct_forces`` and
#: ``<target>/direct_stress``, are trained against the labels of the exact gradients.
DIRECT_PREFIX = "direct_"


def label_key(quantity: str) -> str:
    """The label a quantity is compared with: itself, except for direct heads
    (``energy/direct_forces`` -> ``energy/forces``)."""
    head, _, tail = quantity.rpartition("/")
    if head and not quantity.startswith("mtt::") and tail.startswith(DIRECT_PREFIX):
        return f"{head}/{tail[len(DIRECT_PREFIX) :]}"
    return quantity


def metric_target(quantity: str) -> str:
    """The target a metric's quantity belongs to: ``energy/pbe0_per_atom``,
    ``energy/pbe0/forces`` and ``energy/pbe0/direct_stress`` -> ``energy/pbe0``."""
    return (
        label_key(quantity.replace("_per_atom", "")).removesuffix("/forces").removesuffix("/stress")
    )


def quantity_kind(quantity: str) -> str:
    """``energy``, ``forces``, ``stress`` (for names like ``energy/pbe0/forces``, and the
    direct heads' ``energy/direct_forces``) or ``generic`` (``mtt::<name>``)."""
    if quantity.startswith("mtt::"):
        return "generic"
    tail = label_key(quantity).rsplit("/", 1)[-1]
    return tail if tail in ("forces", "stress") else "energy"


def label_shape(quantity: str, targets: Dict[str, Any], n_atoms: int) -> Tuple[int, ...]:
    """Shape of one structure's label: rows first (structures or atoms), as collated."""
    kind = quantity_kind(quantity)
    if kind == "generic":
        target = targets[quantity]
        rows = n_atoms if target.per_atom else 1
        return (rows, target.components, target.num_subtargets)
    return {"energy": (1,), "forces": (n_atoms, 3), "stress": (1, 3, 3)}[kind]


def model_data(model: Any, dataset: LabelledDataset, index: int) -> Any:
    """The model's data of one structure; a structure it refuses is named in the error."""
    try:
        return model.atoms_to_data(dataset.frames[index])
    except MttError as error:
        raise MttError(f"{dataset.describe(index)}: {error}") from None


def refuse_isolated_atoms(data: Any, model: Any) -> None:
    """Training structures in which no atom has a neighbour within the cutoff teach a model
    nothing but one energy per element: a cutoff far too small for the data, or positions in
    another length unit than declared."""
    graphs = list(data) if isinstance(data, list) else []
    if not graphs or not all(hasattr(graph, "edge_i") for graph in graphs):
        return  # on disk (read lazily), or not graphs: not checked
    if all(len(graph.edge_i) == 0 for graph in graphs):
        raise MttError(
            f"no atom of the training set has a neighbour within the cutoff "
            f"({getattr(model, 'cutoff', '?')} {model.dataset_info.length_unit}); raise "
            f"'{getattr(model, 'cutoff_option', 'architecture.model.cutoff')}', or check the "
            "length unit of the structures"
        )


# float32 keeps ~7 significant digits: beyond this coordinate (in the length unit) an edge
# vector x_j - x_i, the difference of two large numbers, loses more than ~1e-3 of it
FLOAT32_FAR = 1.0e4


def warn_far_positions(data: Any, model: Any) -> None:
    """Positions far from the origin in a float32 model: edge vectors come out of the
    difference of two large coordinates and lose their digits (at 1e6 Å, energies off by
    ~0.1 eV); the non-finite loss that can follow would blame the learning rate."""
    graphs = list(data) if isinstance(data, list) else []
    positions = [g.positions for g in graphs if hasattr(g, "positions") and len(g.positions)]
    if not positions or positions[0].dtype != torch.float32:
        return
    far = max(float(p.abs().max()) for p in positions)
    if far > FLOAT32_FAR:
        LOGGER.warning(
            "positions of the training set reach %.3g %s: float32 keeps ~7 digits of them, too "
            "few for the distances; move the structures near the origin (or wrap them into "
            "their cell), or train with base_precision: 64",
            far,
            model.dataset_info.length_unit,
        )


class PreparedSet:
    """A labelled data set turned into model data (once) and label tensors (once)."""

    def __init__(self, dataset: LabelledDataset, model: Any, quantities: List[str]):
        self.name = dataset.name
        self.quantities = quantities
        self.collate = model.collate_fn
        targets = getattr(getattr(model, "dataset_info", None), "targets", dataset.targets)
        if getattr(dataset, "lazy", False):  # on disk (mtt.data.lazy): built per batch, not kept
            self.n_atoms = dataset.n_atoms.tolist()
            self.data = LazySequence(len(dataset), lambda i: model_data(model, dataset, i))
            self.labels = LazySequence(
                len(dataset),
                lambda i: _frame_labels(dataset.labels[i], self.n_atoms[i], quantities, targets),
            )
            return
        self.data = [model_data(model, dataset, i) for i in range(len(dataset.frames))]
        self.n_atoms = [len(atoms) for atoms in dataset.frames]
        self.labels = [
            _frame_labels(labels, n, quantities, targets)
            for labels, n in zip(dataset.labels, self.n_atoms)
        ]

    def __len__(self) -> int:
        return len(self.data)

    def batches(
        self, order: List[int], batch_size: int, max_atoms: Optional[int] = None
    ) -> Iterator[Tuple[Any, LabelBatch]]:
        """Consecutive structures of ``order``: at most ``batch_size`` of them and, if given,
        at most ``max_atoms`` atoms (a larger structure alone makes its own batch)."""
        for indices in self._groups(order, batch_size, max_atoms):
            yield self.collate([self.data[i] for i in indices]), self._labels(indices)

    def shares(
        self, order: List[int], batch_size: int, max_atoms: Optional[int], rank: int, size: int
    ) -> Iterator[Tuple[Optional[Any], Optional[LabelBatch], int]]:
        """The batches of :meth:`batches`, each split between ``size`` processes: this
        process's share (structures ``rank``, ``rank + size``, ... of the batch, and their
        labels; None when the batch has fewer structures than processes) and the number of
        structures of the whole batch."""
        for group in self._groups(order, batch_size, max_atoms):
            share = group[rank::size]
            if not share:
                yield None, None, len(group)
            else:
                yield self.collate([self.data[i] for i in share]), self._labels(share), len(group)

    def count(self, order: List[int], batch_size: int, max_atoms: Optional[int] = None) -> int:
        """How many batches :meth:`batches` yields (without building them)."""
        return sum(1 for _ in self._groups(order, batch_size, max_atoms))

    def _groups(self, order, batch_size, max_atoms) -> Iterator[List[int]]:
        group: List[int] = []
        atoms = 0
        for index in order:
            too_many = max_atoms is not None and atoms + self.n_atoms[index] > max_atoms
            if group and (len(group) == batch_size or too_many):
                yield group
                group, atoms = [], 0
            group.append(index)
            atoms += self.n_atoms[index]
        if group:
            yield group

    def _labels(self, indices: List[int]) -> LabelBatch:
        values, mask = {}, {}
        for q in self.quantities:
            values[q] = torch.cat([self.labels[i][q][0] for i in indices])
            mask[q] = torch.cat([self.labels[i][q][1] for i in indices])
        n_atoms = torch.tensor([self.n_atoms[i] for i in indices])
        return LabelBatch(values, mask, n_atoms)


def _frame_labels(labels: Dict[str, Any], n_atoms: int, quantities: List[str], targets):
    """``{q: (values, mask)}`` with zeros and a false mask where the frame lacks ``q``."""
    result = {}
    for q in quantities:
        shape = label_shape(q, targets, n_atoms)
        rows = shape[0]
        if label_key(q) in labels:
            value = torch.tensor(labels[label_key(q)], dtype=torch.float64).reshape(shape)
            result[q] = (value, torch.ones(rows, dtype=torch.bool))
        else:
            result[q] = (
                torch.zeros(shape, dtype=torch.float64),
                torch.zeros(rows, dtype=torch.bool),
            )
    return result


def batch_to(batch: Any, device: torch.device) -> Any:
    """A model's batch on ``device``: the default Graph (a NamedTuple of tensors) tensor by
    tensor, an architecture's own batch type by its ``to``."""
    if hasattr(batch, "_replace"):
        return type(batch)(*[t.to(device) for t in batch])
    return batch.to(device) if hasattr(batch, "to") else batch


def to_device(labels: LabelBatch, device: torch.device) -> LabelBatch:
    return LabelBatch(
        {q: v.to(device) for q, v in labels.values.items()},
        {q: m.to(device) for q, m in labels.mask.items()},
        labels.n_atoms.to(device),
    )
