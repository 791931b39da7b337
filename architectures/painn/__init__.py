"""PaiNN, an exactly equivariant message-passing network (Schütt et al.), in pure torch."""

from .model import Painn
from .trainer import Trainer

__model__ = Painn
__trainer__ = Trainer

__all__ = ["Painn", "Trainer"]
