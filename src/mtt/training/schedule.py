"""Learning-rate schedule: linear warm-up, then cosine decay (or constant), per step."""

import math

import torch

from .hypers import TrainingHypers


def make_scheduler(
    optimizer: torch.optim.Optimizer, hypers: TrainingHypers, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    warmup = hypers.warmup_epochs * steps_per_epoch
    total = max(hypers.num_epochs * steps_per_epoch, 1)
    floor = hypers.min_learning_rate_ratio

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if hypers.scheduler == "constant":
            return 1.0
        progress = min((step - warmup) / max(total - warmup, 1), 1.0)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
