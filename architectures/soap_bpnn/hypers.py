"""Hypers of ``soap_bpnn``: the single source of their defaults, types and documentation."""

from dataclasses import dataclass
from typing import List, Tuple

from mtt.hypers import cutoff_problems, minimum_problems
from mtt.training.hypers import TrainingHypers


@dataclass
class ModelHypers:
    """``architecture.model`` for ``soap_bpnn``."""

    cutoff: float = 5.0
    """Radius of the atomic environments, in the length unit of the data (Å by default)."""
    cutoff_width: float = 0.5
    """Width of the smooth switch that brings neighbour contributions to zero at the cutoff."""
    max_radial: int = 6
    """Number of radial basis functions (spherical Bessel functions of order zero)."""
    max_angular: int = 4
    """Highest angular momentum of the spherical harmonics in the neighbour density."""
    standardize_features: bool = True
    """Standardise each descriptor with its mean and spread over the training set (fixed
    after the first epoch starts, so energies stay smooth)."""
    num_hidden_layers: int = 2
    """Hidden layers of each element's network."""
    num_neurons_per_layer: int = 32
    """Width of the hidden layers."""

    def validate(self) -> List[Tuple[str, str]]:
        problems = cutoff_problems(self)
        problems += minimum_problems(self, ("max_radial", "num_neurons_per_layer"), 1)
        problems += minimum_problems(self, ("max_angular", "num_hidden_layers"), 0)
        return problems


@dataclass
class TrainerHypers(TrainingHypers):
    """``architecture.training`` for ``soap_bpnn``: the shared training hypers."""
