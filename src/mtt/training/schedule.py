"""Learning-rate schedule: linear warm-up, then cosine decay, constant, or reduce-on-plateau."""

import math

import torch

from .hypers import TrainingHypers


class Plateau:
    """Counts epochs without improvement of the validation loss, an improvement being a
    relative decrease of more than ``threshold`` (1e-4, as torch's ReduceLROnPlateau). Used
    both to lower the learning rate (``scale``) and for early stopping (``stale``). Its state
    is plain numbers, saved in checkpoints for exact restarts."""

    def __init__(self, factor: float, patience: int, threshold: float = 1e-4):
        self.factor, self.patience, self.threshold = factor, patience, threshold
        self.best, self.bad_epochs, self.stale, self.scale = float("inf"), 0, 0, 1.0

    def step(self, metric: float) -> None:
        if metric < self.best * (1 - self.threshold):
            self.best, self.bad_epochs, self.stale = metric, 0, 0
            return
        self.bad_epochs += 1
        self.stale += 1
        if self.bad_epochs > self.patience:
            self.scale *= self.factor
            self.bad_epochs = 0

    def state_dict(self) -> dict:
        return {
            "best": self.best,
            "bad_epochs": self.bad_epochs,
            "stale": self.stale,
            "scale": self.scale,
        }

    def load_state_dict(self, state: dict) -> None:
        self.best, self.bad_epochs = state["best"], state["bad_epochs"]
        self.stale, self.scale = state["stale"], state["scale"]


def make_scheduler(
    optimizer: torch.optim.Optimizer,
    hypers: TrainingHypers,
    steps_per_epoch: int,
    plateau: "Plateau | None" = None,
) -> torch.optim.lr_scheduler.LambdaLR:
    warmup = hypers.warmup_epochs * steps_per_epoch
    total = max(hypers.num_epochs * steps_per_epoch, 1)
    floor = hypers.min_learning_rate_ratio

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if hypers.scheduler == "constant":
            return 1.0
        if hypers.scheduler == "plateau":
            return plateau.scale if plateau is not None else 1.0
        progress = min((step - warmup) / max(total - warmup, 1), 1.0)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
