"""Forgetting control when fine-tuning: distillation from the pretrained model, and what the
fine-tuned model still knows of the old task.

A fine-tuned model forgets what the pretraining taught where the new data do not reach. Two
remedies work without the pretraining data: L2-SP (in the trainer) pulls the weights towards
the pretrained ones; :class:`Distillation` pulls the *predictions* towards those of a frozen
copy of the pretrained model (the teacher) on randomly perturbed copies of the new
structures, so that the model keeps the pretrained energy surface around them.

The teacher is rebuilt from ``finetune.read_from`` (which a restart needs anyway), not stored in
checkpoints: it is the pretrained checkpoint's best model, never trained, so reading it again
gives the same teacher bitwise, and checkpoints keep the size of the model.

:func:`errors_on` and :func:`drift` measure forgetting: the error on labelled data of the old
task (``finetune.old_task_set``), and how far the fine-tuned predictions moved from the
teacher's on the new structures. :class:`ForgettingReport` logs both before and after
fine-tuning and writes ``forgetting.json`` in the run directory.
"""

import copy
import json
import logging
import os
from typing import Any, Dict, List, Optional, Set

import ase
import numpy as np
import torch

from .data.dataset import LabelledDataset
from .errors import MttError
from .finetune import DistillationHypers
from .training.batches import LabelBatch, PreparedSet
from .training.composition import composition_matrix, energy_scale_floor
from .training.loss import Loss

LOGGER = logging.getLogger("mtt")


def frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` that never trains: evaluation mode, no parameter requires grad."""
    teacher = copy.deepcopy(model).eval()
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)
    return teacher


def network_energies(model, graph, totals: torch.Tensor, index: int) -> torch.Tensor:
    """Total energies of target ``index`` minus the model's composition baseline: what the
    network learnt, comparable between models whose reference energies differ."""
    species = model.type_to_index[graph.types]
    per_atom = model.baseline[index].to(totals.dtype)[species]
    baseline = torch.zeros_like(totals).index_add(0, graph.system_index, per_atom)
    return totals - baseline


def perturbed_copies(batch, model, displacement: float, generator: torch.Generator):
    """``batch`` with every position moved by Gaussian noise of std ``displacement``; the
    model's native data (neighbour lists included) are computed again for the new positions."""
    if not all(hasattr(batch, name) for name in ("positions", "n_atoms", "cells", "pbc")):
        raise MttError(
            "finetune.distillation needs the batches of mtt's Graph (positions, cells); this "
            "architecture batches its data otherwise: use l2sp_weight instead"
        )
    noise = torch.randn(batch.positions.shape, generator=generator, dtype=torch.float64)
    positions = batch.positions.detach().cpu().double() + displacement * noise
    frames, start = [], 0
    for s, n in enumerate(batch.n_atoms.tolist()):
        frames.append(
            ase.Atoms(
                numbers=batch.types[start : start + n].cpu().numpy(),
                positions=positions[start : start + n].numpy(),
                cell=batch.cells[s].detach().cpu().double().numpy(),
                pbc=batch.pbc[s].cpu().numpy(),
            )
        )
        start += n
    graph = model.collate_fn([model.atoms_to_data(atoms) for atoms in frames])
    device, dtype = batch.positions.device, batch.positions.dtype
    return type(graph)(
        *[
            t.to(device=device, dtype=dtype) if t.is_floating_point() else t.to(device)
            for t in graph
        ]
    )


def _quantities(teacher) -> List[str]:
    """Energies and forces of every energy target of the pretrained model."""
    return [q for name in teacher.target_names for q in (name, f"{name}/forces")]


def _paired_predictions(model, teacher, graph, quantities: List[str], training: bool):
    """The model's and the teacher's predictions of ``quantities`` on ``graph``, energies
    without their composition baselines; the teacher's are detached."""
    pairs = []
    for network, grad in ((model, training), (teacher, False)):
        predictions = network.predict(graph, quantities, training=grad)
        for index, name in enumerate(network.target_names):
            if name in predictions:
                predictions[name] = network_energies(network, graph, predictions[name], index)
        pairs.append(predictions)
    return pairs[0], {q: v.detach() for q, v in pairs[1].items()}


class Distillation:
    """The distillation term of the loss: the loss (same type, weights and per-atom energies)
    between the model and the frozen teacher on perturbed copies of each training batch.

    The noise of epoch ``e`` comes from a generator seeded with the run's seed and ``e`` only,
    so a restarted run draws the same copies as an uninterrupted one."""

    def __init__(self, teacher, hypers: DistillationHypers, training_hypers, seed: int):
        self.teacher = teacher
        self.hypers = hypers
        self.loss_hypers = training_hypers.loss
        self.per_structure: Set[str] = set(training_hypers.per_structure_targets)
        self.seed = seed
        self.quantities = _quantities(teacher)
        self.scales: Dict[str, float] = {}
        self.generator = torch.Generator()
        self._epoch: Optional[int] = None
        self._step = 0

    def fit_scales(self, dataset: LabelledDataset, device: torch.device) -> None:
        """Spread of each distilled quantity in the teacher's predictions on ``dataset`` (per
        atom energies: standard deviation, but at least ``energy_scale_floor`` of the forces;
        forces: root mean square), as the loss divides labels by their spread."""
        values: Dict[str, List[np.ndarray]] = {q: [] for q in self.quantities}
        atoms = []
        for graph, _ in _batches(dataset, self.teacher, [], device):
            atoms.append(graph.n_atoms.cpu().numpy())
            predictions = self.teacher.predict(graph, self.quantities, training=False)
            for index, name in enumerate(self.teacher.target_names):
                energies = network_energies(self.teacher, graph, predictions[name], index)
                if name not in self.per_structure:  # compared per atom, as in the loss
                    energies = energies / graph.n_atoms.to(energies.dtype)
                values[name].append(energies.detach().cpu().double().numpy())
                values[f"{name}/forces"].append(
                    predictions[f"{name}/forces"].detach().cpu().numpy()
                )
        spreads = {}
        for q, chunks in values.items():
            flat = np.concatenate([c.ravel() for c in chunks])
            spreads[q] = float(np.sqrt(np.mean(flat**2))) if q.endswith("/forces") else flat.std()
        length_unit = self.teacher.dataset_info.length_unit
        for name in self.teacher.target_names:  # the loss's rule (see quantity_scales)
            floor = energy_scale_floor(spreads[f"{name}/forces"], length_unit)
            if name in self.per_structure:
                floor *= float(np.mean(np.concatenate(atoms)))
            spreads[name] = max(spreads[name], floor)
        self.scales = {q: s if s > 1e-10 else 1.0 for q, s in spreads.items()}

    def __call__(self, model, batch, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:  # a new epoch (or a restart): the same draws as ever
            self.generator.manual_seed(self.seed * 100_003 + epoch + 3_333_333)
            self._epoch, self._step = epoch, 0
        self._step += 1
        if (self._step - 1) % self.hypers.every != 0:
            return torch.zeros((), dtype=torch.float64)
        self.teacher.to(device=batch.positions.device, dtype=batch.positions.dtype)
        graph = perturbed_copies(batch, model, self.hypers.displacement, self.generator)
        student, teacher = _paired_predictions(model, self.teacher, graph, self.quantities, True)
        mask = {
            q: torch.ones(len(v), dtype=torch.bool, device=v.device) for q, v in teacher.items()
        }
        labels = LabelBatch(teacher, mask, graph.n_atoms)
        loss = Loss(self.loss_hypers, self.quantities, self.scales, self.per_structure)
        return self.hypers.weight * loss(student, labels)


def _batches(dataset: LabelledDataset, model, quantities: List[str], device, size: int = 16):
    """Batches of ``dataset`` (model data and labels) on ``device``, in order."""
    prepared = PreparedSet(dataset, model, quantities)
    dtype = model.baseline.dtype
    for graph, labels in prepared.batches(list(range(len(prepared))), size):
        graph = type(graph)(
            *[
                t.to(device=device, dtype=dtype) if t.is_floating_point() else t.to(device)
                for t in graph
            ]
        )
        yield graph, labels


def errors_on(model, dataset: LabelledDataset, device) -> Dict[str, float]:
    """RMSE of ``model`` on ``dataset`` for each energy target the data label: energy per atom
    as predicted, energy per atom once per-element reference energies are refitted to the
    residuals (what remains when a new reference method shifted them), forces and stress."""
    labelled = [
        q
        for name in model.target_names
        for q in (name, f"{name}/forces", f"{name}/stress")
        if any(q in labels for labels in dataset.labels)
    ]
    residuals: Dict[str, List[np.ndarray]] = {q: [] for q in labelled}
    for graph, labels in _batches(dataset, model, labelled, device):
        predictions = model.predict(graph, labelled, training=False)
        for q in labelled:
            mask = labels.mask[q].to(device)
            error = predictions[q].detach().double() - labels.values[q].to(device)
            residuals[q].append(
                torch.where(mask.reshape(-1, *[1] * (error.dim() - 1)), error, torch.nan)
                .cpu()
                .numpy()
            )
    counts = composition_matrix(dataset, model.atomic_types)
    n_atoms = counts.sum(axis=1)
    results = {}
    for q, chunks in residuals.items():
        error = np.concatenate(chunks)
        if q.endswith("/forces") or q.endswith("/stress"):  # rows: atoms, or structures
            labelled_rows = ~np.isnan(error.reshape(len(error), -1)).any(axis=1)
            results[f"{q}_rmse"] = _rmse(error[labelled_rows])
            continue
        rows = ~np.isnan(error)
        results[f"{q}_per_atom_rmse"] = _rmse(error[rows] / n_atoms[rows])
        offsets, *_ = np.linalg.lstsq(counts[rows], error[rows], rcond=None)
        refitted = (error[rows] - counts[rows] @ offsets) / n_atoms[rows]
        results[f"{q}_per_atom_rmse_refitted_references"] = _rmse(refitted)
    return results


def _rmse(values: np.ndarray) -> float:
    return float(np.sqrt(np.mean(values**2))) if values.size else float("nan")


def drift(model, teacher, dataset: LabelledDataset, device) -> Dict[str, float]:
    """RMSE between the model's and the teacher's predictions on ``dataset`` (energies per
    atom without composition baselines, and forces) for the pretrained energy targets."""
    quantities = _quantities(teacher)
    squares: Dict[str, List[np.ndarray]] = {q: [] for q in quantities}
    for graph, _ in _batches(dataset, model, [], device):
        student, reference = _paired_predictions(model, teacher, graph, quantities, False)
        for q in quantities:
            difference = (student[q].detach() - reference[q]).double()
            if not q.endswith("/forces"):
                difference = difference / graph.n_atoms.to(difference.dtype)
            squares[q].append(difference.cpu().numpy().ravel())
    return {
        f"{q}_rmse" if q.endswith("/forces") else f"{q}_per_atom_rmse": _rmse(np.concatenate(v))
        for q, v in squares.items()
    }


class ForgettingReport:
    """Errors on the old task before and after fine-tuning, and the drift from the teacher."""

    def __init__(self, teacher, old_task: Optional[LabelledDataset], device):
        self.teacher = teacher
        self.old_task = old_task
        self.device = device
        self.before: Dict[str, float] = {}

    def start(self) -> None:
        if self.old_task is None:
            return
        self.before = errors_on(self.teacher, self.old_task, self.device)
        LOGGER.info(
            "old task (%s, %d structures): errors of the pretrained model",
            self.old_task.name,
            len(self.old_task),
        )
        for key, value in self.before.items():
            LOGGER.info("  %-52s %9.4g %s", _label(key), value, self._unit(key))

    def finish(self, model, training_set: LabelledDataset, run_dir: str) -> Dict[str, Any]:
        report: Dict[str, Any] = {}
        if self.old_task is not None:
            after = errors_on(model, self.old_task, self.device)
            report["old_task"] = {
                key: {"before": value, "after": after[key], "factor": after[key] / value}
                for key, value in self.before.items()
            }
            report["old_task"]["structures"] = len(self.old_task)
            self._log_old_task(report["old_task"])
        report["drift"] = drift(model, self.teacher, training_set, self.device)
        LOGGER.info(
            "drift from the pretrained model on the training structures: %s",
            ", ".join(f"{_label(k)} {v:.4g} {self._unit(k)}" for k, v in report["drift"].items()),
        )
        report["units"] = {k: self._unit(k) for k in report["drift"]}
        report["units"].update({k: self._unit(k) for k in self.before})
        with open(os.path.join(run_dir, "forgetting.json"), "w") as file:
            json.dump(report, file, indent=2)
        return report

    def _log_old_task(self, table: Dict[str, Any]) -> None:
        LOGGER.info(
            "old task (%s, %d structures): pretrained -> fine-tuned model",
            self.old_task.name,
            len(self.old_task),
        )
        for key, row in table.items():
            if isinstance(row, dict):
                LOGGER.info(
                    "  %-52s %9.4g -> %-9.4g %s  (x%.2f)",
                    _label(key),
                    row["before"],
                    row["after"],
                    self._unit(key),
                    row["factor"],
                )

    def _unit(self, key: str) -> str:
        """The unit of a metric: the teacher's energy unit per atom, per length unit (forces)
        or per volume (stress)."""
        info = self.teacher.dataset_info
        name = key.split("/forces")[0].split("/stress")[0].split("_per_atom")[0]
        unit = info.targets[name].unit if name in info.targets else ""
        if "/stress" in key:
            return f"{unit}/{info.length_unit}^3"
        return f"{unit}/{info.length_unit}" if "/forces" in key else f"{unit}/atom"


def _label(key: str) -> str:
    """``energy_per_atom_rmse_refitted_references`` -> ``energy RMSE per atom, references
    refitted``: a row of the report."""
    label = key.replace("_per_atom_rmse", " RMSE per atom").replace("_rmse", " RMSE")
    return label.replace("_refitted_references", ", reference energies refitted")
