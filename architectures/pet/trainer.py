"""``pet`` trains with the shared loop; it adds random rotations of the training batches."""

from typing import Any, Tuple

import torch

from mtt.data.graph import Graph
from mtt.training.batches import LabelBatch
from mtt.training.trainer import Trainer as SharedTrainer

from .hypers import TrainerHypers
from .modules.augmentation import random_rotations, rotate_graph, rotate_labels


class Trainer(SharedTrainer):
    __hypers__ = TrainerHypers

    def augment(
        self, batch: Any, labels: LabelBatch, generator: torch.Generator
    ) -> Tuple[Any, LabelBatch]:
        """One random rotation per structure, drawn from the loop's per-epoch generator (so a
        restarted run draws the same rotations)."""
        if not self.hypers.random_rotations or not isinstance(batch, Graph):
            return batch, labels
        rotations = random_rotations(len(labels.n_atoms), generator)
        return rotate_graph(batch, rotations), rotate_labels(labels, rotations)
