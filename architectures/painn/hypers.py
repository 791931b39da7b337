"""Hypers of ``painn``: the single source of their defaults, types and documentation."""

from dataclasses import dataclass
from typing import List, Optional, Tuple

from mtt.hypers import cutoff_problems, minimum_problems
from mtt.training.hypers import TrainingHypers


@dataclass
class ModelHypers:
    """``architecture.model`` for ``painn``."""

    cutoff: float = 5.0
    """Radius of each atom's neighbourhood, in the length unit of the data (Å by default).
    Engines must provide neighbours up to ``cutoff * num_layers`` (the declared interaction
    range), since messages travel one cutoff per layer."""
    cutoff_width: Optional[float] = None
    """Width of the smooth switch that brings every filter to zero at the cutoff (energies
    and forces stay continuous when neighbours come and go). Null (the default) means the
    whole cutoff: the cosine cutoff of the PaiNN paper, which damps all distances; smaller
    values keep filters at full strength up to ``cutoff - cutoff_width``."""
    num_features: int = 64
    """Width of the scalar and vector features of each atom (128 in the paper; on the ethanol
    example 64 was as accurate, and several times faster to train on a CPU)."""
    num_layers: int = 3
    """Message-passing layers (a message block and an update block each)."""
    num_radial: int = 20
    """Sine radial basis functions ``sin(n pi r / cutoff) / r`` of each pair's distance, from
    which the filters are computed."""

    @property
    def switch_width(self) -> float:
        """The width of the switch, ``cutoff_width`` or the whole cutoff."""
        return self.cutoff if self.cutoff_width is None else self.cutoff_width

    def validate(self) -> List[Tuple[str, str]]:
        problems = cutoff_problems(self, self.switch_width)
        if self.cutoff_width is None:  # the whole cutoff: only the cutoff itself can be wrong
            problems = [problem for problem in problems if problem[0] != "cutoff_width"]
        problems += minimum_problems(self, ("num_features", "num_layers", "num_radial"), 1)
        return problems


@dataclass
class TrainerHypers(TrainingHypers):
    """``architecture.training`` for ``painn``: the shared training hypers."""
