"""``sevenn`` trains with the shared loop, always from pretrained SevenNet weights.

One thing differs from the shared loop: without a ``finetune`` section, ``architecture:
{name: sevenn}`` fine-tunes the weights of ``architecture.model.checkpoint`` as ``finetune:
{method: full}`` would (the output scale is kept; the reference energies are refitted, as for
every pretrained model, to what SevenNet's interaction energies leave of the new labels).
"""

import dataclasses

from mtt.finetune import FinetuneHypers
from mtt.training.trainer import Trainer as SharedTrainer

from .hypers import TrainerHypers


class Trainer(SharedTrainer):
    __hypers__ = TrainerHypers

    def __init__(self, hypers: TrainerHypers):
        if hypers.finetune is None:
            default = FinetuneHypers(read_from="architecture.model.checkpoint")
            hypers = dataclasses.replace(hypers, finetune=default)
        super().__init__(hypers)

    def train(self, model, dtype, devices, train_datasets, val_datasets, checkpoint_dir):
        if self.epoch == 0 and not self.pretrained_targets:
            # the model was built from SevenNet weights, not read from an mtt checkpoint
            self.pretrained_targets = list(getattr(model, "pretrained_targets", []))
        super().train(model, dtype, devices, train_datasets, val_datasets, checkpoint_dir)
