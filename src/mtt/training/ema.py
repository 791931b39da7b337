"""Exponential moving average of the weights, used for validation, the best model and export.

Averaging the weights over the last few hundred steps smooths out the noise of the optimiser;
the averaged model is usually more accurate than the last iterate and is what gets exported.
"""

from contextlib import contextmanager
from typing import Dict, Iterator

import torch


class WeightAverage:
    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow: Dict[str, torch.Tensor] = {
            name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad
        }

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        for name, parameter in model.named_parameters():
            if name in self.shadow:
                self.shadow[name].mul_(self.decay).add_(parameter.detach(), alpha=1 - self.decay)

    @contextmanager
    def applied(self, model: torch.nn.Module) -> Iterator[None]:
        """Temporarily put the averaged weights into ``model``."""
        parameters = dict(model.named_parameters())
        saved = {name: parameters[name].detach().clone() for name in self.shadow}
        with torch.no_grad():
            for name, value in self.shadow.items():
                parameters[name].copy_(value)
        try:
            yield
        finally:
            with torch.no_grad():
                for name, value in saved.items():
                    parameters[name].copy_(value)

    def state_dict(self) -> Dict[str, torch.Tensor]:
        return {name: value.clone() for name, value in self.shadow.items()}

    def load_state_dict(self, state: Dict[str, torch.Tensor]) -> None:
        for name, value in state.items():
            if name in self.shadow:
                self.shadow[name].copy_(value)
