"""``painn`` trains with the shared loop; only its hypers class differs."""

from mtt.training.trainer import Trainer as SharedTrainer

from .hypers import TrainerHypers


class Trainer(SharedTrainer):
    __hypers__ = TrainerHypers
