"""SOAP power spectrum + Behler-Parrinello networks, in pure torch."""

from .model import SoapBpnn
from .trainer import Trainer

__model__ = SoapBpnn
__trainer__ = Trainer

__all__ = ["SoapBpnn", "Trainer"]
