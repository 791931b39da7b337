"""Losses and error metrics, both built on the same masked residuals.

Energies are compared per atom by default (a 100-atom cell should not weigh 100 times a
1-atom one); each quantity is divided by a size of its values in the training set (its
*scale*: the spread of the per-atom energies, the root mean square of forces and stress
components), so the loss is dimensionless and the user's weights compare like with like.
"""

import math
from typing import Any, Dict, List, Optional, Set, Tuple

import torch

from .batches import LabelBatch, quantity_kind
from .distributed import World, sum_over_processes
from .hypers import LossHypers


def residual_pair(
    quantity: str, prediction: torch.Tensor, labels: LabelBatch, per_atom: bool
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Predicted and reference values of the rows that have a label, in float64."""
    mask = labels.mask[quantity]
    prediction = prediction.to(torch.float64)
    reference = labels.values[quantity]
    if quantity_kind(quantity) == "energy" and per_atom:
        prediction = prediction / labels.n_atoms
        reference = reference / labels.n_atoms
    return prediction[mask], reference[mask]


DEFAULT_WEIGHTS = {"energy": 1.0, "forces": 10.0, "stress": 1.0, "generic": 1.0}


def default_weight(quantity: str) -> float:
    """Forces weigh more by default: a structure has one energy but 3N force components,
    and forces decide how a model behaves in MD (checked on the shipped ethanol data: the
    validation force error fell from 8.3 to 3.4 kcal/mol/Å at equal energy error)."""
    return DEFAULT_WEIGHTS[quantity_kind(quantity)]


class Loss:
    """Weighted sum over quantities of the mean (squared/absolute/Huber) scaled residual.

    With several processes, each computes the loss of its share of a batch with the
    :meth:`counts` of the whole batch as the divisors of the means, so that the shares' losses
    (and gradients) add up to those of the whole batch."""

    def __init__(
        self,
        hypers: LossHypers,
        quantities: List[str],
        scales: Dict[str, float],
        per_structure: Set[str],
    ):
        self.hypers = hypers
        self.quantities = quantities
        self.scales = scales
        self.per_structure = per_structure
        self.weights = {q: hypers.weights.get(q, default_weight(q)) for q in quantities}

    def per_atom(self, quantity: str) -> bool:
        return quantity not in self.per_structure

    def counts(self, labels: LabelBatch) -> Dict[str, int]:
        """How many values of each quantity ``labels`` holds: the divisors of the means."""
        return {
            q: int(labels.mask[q].sum()) * math.prod(labels.values[q].shape[1:])
            for q in self.quantities
        }

    def __call__(
        self,
        predictions: Dict[str, torch.Tensor],
        labels: LabelBatch,
        counts: Optional[Dict[str, int]] = None,
    ) -> torch.Tensor:
        """The loss of a batch; of a share of one when given the ``counts`` of the whole."""
        counts = self.counts(labels) if counts is None else counts
        return self.combine(self.sums(predictions, labels, counts), counts, labels.n_atoms.device)

    def sums(
        self, predictions: Dict[str, torch.Tensor], labels: LabelBatch, counts: Dict[str, int]
    ) -> Dict[str, torch.Tensor]:
        """Per weighed quantity with values (``counts``), the sum of its scaled residuals'
        penalties: the loss is their weighted means (:meth:`combine`)."""
        sums = {}
        for q in self.quantities:
            if self.weights[q] == 0.0 or counts[q] == 0:
                continue
            pred, ref = residual_pair(q, predictions[q], labels, self.per_atom(q))
            sums[q] = self._sum((pred - ref) / self.scales[q])
        return sums

    def combine(self, sums: Dict[str, Any], counts: Dict[str, int], device) -> torch.Tensor:
        """The weighted sum of the quantities' means, ``sums[q] / counts[q]``. Over a whole
        pass (the validation loss) the sums and counts are those of the pass, so the loss does
        not depend on how the structures were batched."""
        total = torch.zeros((), dtype=torch.float64, device=device)
        for q, value in sums.items():
            if counts[q] > 0:
                total = total + self.weights[q] * value / counts[q]
        return total

    def _sum(self, residual: torch.Tensor) -> torch.Tensor:
        if self.hypers.type == "mse":
            return (residual**2).sum()
        if self.hypers.type == "mae":
            return residual.abs().sum()
        return torch.nn.functional.huber_loss(
            residual, torch.zeros_like(residual), reduction="sum", delta=self.hypers.huber_delta
        )


class Metrics:
    """RMSE and MAE per quantity over an epoch, in the labels' physical units."""

    def __init__(self, loss: Loss):
        self.loss = loss
        self.sums: Dict[str, List[float]] = {q: [0.0, 0.0, 0] for q in loss.quantities}

    def update(self, predictions: Dict[str, torch.Tensor], labels: LabelBatch) -> None:
        for q in self.loss.quantities:
            pred, ref = residual_pair(q, predictions[q].detach(), labels, self.loss.per_atom(q))
            error = pred - ref
            self.sums[q][0] += float((error**2).sum())
            self.sums[q][1] += float(error.abs().sum())
            self.sums[q][2] += error.numel()

    def sum_over_processes(self, world: World) -> None:
        """Add up the sums of every process of ``world`` (unchanged in one)."""
        flat = [value for sums in self.sums.values() for value in sums]
        flat = sum_over_processes(flat, world)
        for index, q in enumerate(self.sums):
            squares, absolutes, count = flat[3 * index : 3 * index + 3]
            self.sums[q] = [squares, absolutes, int(count)]

    def results(self) -> Dict[str, Dict[str, float]]:
        """``{quantity: {"rmse": ..., "mae": ...}}`` for quantities seen in this epoch."""
        out = {}
        for q, (squares, absolutes, count) in self.sums.items():
            if count:
                out[q] = {"rmse": (squares / count) ** 0.5, "mae": absolutes / count}
        return out
