"""``sevenn`` trains with the shared loop, always from pretrained SevenNet weights.

Two things differ from the shared loop, both about SevenNet being a pretrained model:

* without a ``finetune`` section, ``architecture: {name: sevenn}`` fine-tunes the weights of
  ``architecture.model.checkpoint`` as ``finetune: {method: full}`` would (the output scale is
  kept, the reference energies are refitted);
* refitting the reference energies fits them to what SevenNet's interactions leave of the new
  labels (``E - E_SevenNet``), not to the raw labels: SevenNet's per-atom interaction energies
  do not average to zero on new data (about -0.2 eV/atom on xTB ethanol), so the shared
  composition fit would start fine-tuning with that offset in every energy. Elements absent
  from the new data keep SevenNet's reference energies (as in the shared fit).
"""

import dataclasses
import logging
from types import SimpleNamespace
from typing import List

import numpy as np
import torch

from mtt.data.graph import atoms_to_graph, collate_graphs
from mtt.finetune import FinetuneHypers, report_reference_energies
from mtt.training.composition import composition_matrix
from mtt.training.trainer import Trainer as SharedTrainer

from .hypers import TrainerHypers

LOGGER = logging.getLogger("mtt")


class Trainer(SharedTrainer):
    __hypers__ = TrainerHypers

    def __init__(self, hypers: TrainerHypers):
        if hypers.finetune is None:
            default = FinetuneHypers(read_from="architecture.model.checkpoint")
            hypers = dataclasses.replace(hypers, finetune=default)
        super().__init__(hypers)

    def train(self, model, dtype, devices, train_datasets, val_datasets, checkpoint_dir):
        if self.epoch == 0 and not self.pretrained_targets:
            # the model was built from SevenNet weights, not read from an mtt checkpoint
            self.pretrained_targets = list(getattr(model, "pretrained_targets", []))
        super().train(model, dtype, devices, train_datasets, val_datasets, checkpoint_dir)

    def _fit_baseline(self, model, dataset, quantities) -> None:
        old = model.baseline.detach().clone()
        super()._fit_baseline(model, dataset, quantities)
        baseline = model.baseline.detach().clone()
        present = sorted(set(dataset.atomic_types))
        columns = [model.atomic_types.index(z) for z in present]
        refit = self.hypers.finetune.reference_energies == "refit"
        for index, name in enumerate(model.target_names):
            # elements absent from the data already kept SevenNet's references (shared fit)
            if refit and name in self.pretrained_targets and name in quantities:
                baseline[index, columns] = _residual_fit(model, dataset, index, name, columns)
        model.set_baseline(baseline, model.scale.detach().clone())
        if self.pretrained_targets:
            LOGGER.info(
                "reference energies of the data's elements (the pretrained ones are %s%s):",
                "replaced" if refit else "kept",
                ", fitted to the labels minus SevenNet's interaction energies" if refit else "",
            )
            view = SimpleNamespace(
                target_names=model.target_names,
                energy_units=model.energy_units,
                atomic_types=present,
            )
            lines = report_reference_energies(
                view, old[:, columns], baseline[:, columns], model.scale.detach()
            )
            for line in lines:
                LOGGER.info("  %s", line)

    def _report_reference_energies(self, model, old, new, scales) -> None:
        """Reported by :meth:`_fit_baseline`, after the refit, for the data's elements."""


def _residual_fit(model, dataset, index: int, name: str, columns: List[int]) -> torch.Tensor:
    """Least-squares reference energies of the elements ``columns`` such that SevenNet's
    predicted interaction energies plus them best match the labels of ``name``."""
    rows = [i for i, labels in enumerate(dataset.labels) if name in labels]
    labels = np.array([dataset.labels[i][name][0] for i in rows])
    counts = composition_matrix(dataset, model.atomic_types)[rows]
    dtype = model.baseline.dtype
    device = model.baseline.device
    interactions = []
    with torch.no_grad():
        for start in range(0, len(rows), 16):
            frames = [dataset.frames[i] for i in rows[start : start + 16]]
            graph = collate_graphs([atoms_to_graph(a, model.cutoff, dtype) for a in frames])
            graph = type(graph)(*[t.to(device) for t in graph])
            species = model.type_to_index[graph.types]
            raw = model.per_atom_energies(graph, species)[:, index] * model.scale[index]
            totals = torch.zeros(len(frames), dtype=raw.dtype, device=device)
            interactions.append(totals.index_add(0, graph.system_index, raw).double().cpu())
    residual = labels - torch.cat(interactions).numpy()
    solution, *_ = np.linalg.lstsq(counts[:, columns], residual, rcond=None)
    return torch.tensor(solution, dtype=model.baseline.dtype)
