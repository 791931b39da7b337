"""PET, the point-edge transformer (Pozdnyakov & Ceriotti), in pure torch."""

from .model import Pet
from .trainer import Trainer

__model__ = Pet
__trainer__ = Trainer

__all__ = ["Pet", "Trainer"]
