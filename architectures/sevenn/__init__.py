"""SevenNet-0 (Park et al.), the pretrained universal potential, fine-tuned and exported."""

from .model import SevenNet
from .trainer import Trainer

__model__ = SevenNet
__trainer__ = Trainer

__all__ = ["SevenNet", "Trainer"]
