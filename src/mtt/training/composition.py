"""The per-element composition baseline and the scales of each quantity.

Total energies are dominated by a sum of per-element reference energies (hundreds of eV for a
molecule). They are fitted by least squares on the training set, or fixed by hand, and saved in
the model, which then only learns the small remainder: ``E = sum_i (scale * NN_i + e_Z(i))``.
"""

import logging
from typing import Dict, Iterable, List, Optional, Tuple

import ase.data
import numpy as np
import torch

from ..data.dataset import LabelledDataset
from ..errors import MttError
from ..units import conversion
from .batches import batch_to, label_key, model_data, quantity_kind

LOGGER = logging.getLogger(__name__)


def composition_matrix(dataset: LabelledDataset, atomic_types: List[int]) -> np.ndarray:
    """Number of atoms of each element in each structure, ``[n_structures, n_types]``."""
    column = {z: k for k, z in enumerate(atomic_types)}
    counts = np.zeros((len(dataset), len(atomic_types)))
    for row, atoms in enumerate(dataset.frames):
        for z, n in zip(*np.unique(atoms.numbers, return_counts=True)):
            counts[row, column[int(z)]] = n
    return counts


def interaction_energies(
    model, dataset: LabelledDataset, targets: List[str], batch_size: int = 16
) -> Dict[str, np.ndarray]:
    """What the model's network (without its composition baseline) predicts of each
    structure's energy, ``{target: [n_structures]}`` in the targets' units (one pass over
    the data set without gradients)."""
    if not targets:
        return {}
    columns = [model.target_names.index(name) for name in targets]
    device = model.baseline.device
    scale = model.scale.detach()[columns]
    totals = []
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(dataset), batch_size):
                indices = range(start, min(start + batch_size, len(dataset)))
                graph = model.collate_fn([model_data(model, dataset, i) for i in indices])
                graph = batch_to(graph, device)
                species = model.type_to_index[graph.types]
                raw, _ = model.per_atom_energies_and_direct(graph, species, False)
                per_atom = raw[:, columns] * scale.to(raw.dtype)
                sums = torch.zeros(len(indices), len(columns), dtype=torch.float64, device=device)
                totals.append(sums.index_add_(0, graph.system_index, per_atom.double()).cpu())
    finally:
        model.train(training)
    values = torch.cat(totals).numpy()
    return {name: values[:, k] for k, name in enumerate(targets)}


def _element(key: str, where: str) -> int:
    if key.isdigit():
        return int(key)
    if key in ase.data.atomic_numbers:
        return ase.data.atomic_numbers[key]
    raise MttError(f"'{where}': {key!r} is not an element symbol or atomic number")


def fit_baseline(
    dataset: LabelledDataset,
    target: str,
    atomic_types: List[int],
    fixed: Dict[str, float],
    where: str,
    prior: Optional[np.ndarray] = None,
    offsets: Optional[np.ndarray] = None,
    warn_rare: bool = True,
) -> Tuple[np.ndarray, float]:
    """Reference energies per element and the spread (std) of the per-atom remainder; an
    element in a single structure is warned about (``warn_rare``).

    With ``offsets`` (one energy per structure of the data set: what a pretrained network
    predicts of it), the references fit the labels minus the offsets. The spread is the
    data's own either way, that of the labels minus their own composition fit (what a model
    trained from scratch would have to represent): minus references fitted next to a network
    that predicts most of the energy it would hold the network's cohesive energies, ten times
    the spread on mixed data, and the loss would all but ignore the energies.

    With ``prior`` (a pretrained model's references, when fine-tuning) the fit is the
    smallest change of the prior that fits the data: where the data cannot tell elements
    apart (one composition, as in a single molecule's trajectory, or elements always in the
    same ratio) the prior's split between them is kept, instead of the minimum-norm split of
    the whole energy, which can move each element by electronvolts and wreck the energies
    of the pretraining task."""
    counts = composition_matrix(dataset, atomic_types)
    rows = [i for i, labels in enumerate(dataset.labels) if target in labels]
    energies = np.array([dataset.labels[i][target][0] for i in rows])
    counts = counts[rows]
    weights = np.zeros(len(atomic_types)) if prior is None else np.array(prior, dtype=float)
    free = np.ones(len(atomic_types), dtype=bool)
    for key, value in fixed.items():
        z = _element(str(key), where)
        if z not in atomic_types:
            raise MttError(f"'{where}': element {key!r} is not in the training set")
        weights[atomic_types.index(z)] = value
        free[atomic_types.index(z)] = False
    if prior is None and warn_rare:
        _warn_rare_elements(counts, free, atomic_types, target, where)
        _note_undetermined_split(counts, free, atomic_types, target, where)
    fitted = energies if offsets is None else energies - np.asarray(offsets)[rows]
    remainder = fitted - counts @ weights
    if free.any():
        # minimum-norm least squares (of the change to the prior, if any): well defined even
        # when all structures share one composition (then only the sum is determined)
        solution, *_ = np.linalg.lstsq(counts[:, free], remainder, rcond=None)
        weights[free] += solution
    own = weights if offsets is None else _composition_fit(counts, energies, weights, free)
    per_atom = (energies - counts @ own) / counts.sum(axis=1)
    spread = float(np.std(per_atom)) if len(per_atom) > 1 else 0.0
    return weights, spread


def _warn_rare_elements(counts, free, atomic_types, target: str, where: str) -> None:
    """An element in a single labelled structure gets its reference energy from that one
    structure, which then fits exactly whatever its label's error; said once per element."""
    present = (counts > 0).sum(axis=0)
    for k, z in enumerate(atomic_types):
        if free[k] and present[k] == 1:
            symbol = ase.data.chemical_symbols[z]
            LOGGER.warning(
                "training_set: %s is in only one structure labelled with %r, whose energy alone "
                "fixes its reference energy; add structures with %s, or set it in '%s'",
                symbol,
                target,
                symbol,
                where,
            )


def _note_undetermined_split(counts, free, atomic_types, target: str, where: str) -> None:
    """Compositions in one ratio (one molecule's trajectory, a binary alloy at one x) do not
    tell the elements' reference energies apart: the fit splits the energy by least norm,
    and structures of other compositions are then off by a constant per atom. A note for one
    composition (expected of a single system), a warning when the compositions vary."""
    present = free & (counts > 0).any(axis=0)
    if present.sum() < 2 or np.linalg.matrix_rank(counts[:, present]) == present.sum():
        return
    symbols = [ase.data.chemical_symbols[z] for z, p in zip(atomic_types, present) if p]
    one = len(np.unique(counts, axis=0)) == 1
    (LOGGER.info if one else LOGGER.warning)(
        "training_set: the structures labelled with %r are all in %s, which leaves the "
        "split of the energy between %s undetermined: energies of other compositions will be "
        "off by a constant per atom; add structures of other compositions, or set the "
        "reference energies in '%s'",
        target,
        "one composition" if one else "compositions in one ratio of the elements",
        ", ".join(symbols),
        where,
    )


def _composition_fit(counts, energies, fixed, free) -> np.ndarray:
    """References fitted to the labels alone (``fixed`` where not ``free``)."""
    weights = np.where(free, 0.0, fixed)
    if free.any():
        remainder = energies - counts @ weights
        solution, *_ = np.linalg.lstsq(counts[:, free], remainder, rcond=None)
        weights[free] += solution
    return weights


# An energy per atom is not weighed as if known more finely than the forces' RMS times this
# length (in Å), about the thermal displacement of an atom: see ``quantity_scales``.
ENERGY_SCALE_LENGTH = 0.1


def quantity_scales(
    dataset: LabelledDataset,
    quantities: List[str],
    energy_spread: Dict[str, float],
    per_structure: set,
) -> Dict[str, float]:
    """The spread of each quantity in the training set, to make the loss dimensionless.

    An energy learnt with its forces is scaled by at least ``ENERGY_SCALE_LENGTH`` times the
    forces' RMS. In one molecule's trajectory the per-atom energies spread by ~0.01 eV while
    forces are ~1 eV/Å: scaled by that spread alone, the energy error that imperfect forces
    bring early in training costs more than missing the forces, and a model learns a flat
    energy surface instead (pet on aspirin: forces 1.16 eV/Å, the labels' RMS, after 20
    epochs; at 0.05 Å still none, at 0.1 Å 0.83 in 10). Varied data spread more and keep
    their own scale (carbon phases: 0.18 Å of force; Si MD: 0.067 Å, its energy error 10 %
    higher at 0.1 Å and 24 % at 0.3 Å, with equal forces and stress)."""
    scales = {}
    for q in quantities:
        kind = quantity_kind(q)
        if kind == "generic":
            moments = Moments.of(labels[q] for labels in dataset.labels if q in labels)
            scale = moments.std if moments.count > 1 else moments.mean_abs
        elif kind == "energy":
            scale = energy_spread[q]
            if any(f"{q}/{g}" in quantities for g in ("forces", "direct_forces")):
                force_rms = _rms(dataset, f"{q}/forces")
                scale = max(scale, energy_scale_floor(force_rms, dataset.length_unit))
            if q in per_structure:
                scale *= float(np.mean([len(a) for a in dataset.frames]))
        else:
            scale = _rms(dataset, label_key(q))  # direct heads share the gradients' labels
        scales[q] = scale if scale > 1e-10 else 1.0
    return scales


def _rms(dataset: LabelledDataset, key: str) -> float:
    moments = Moments.of(labels[key] for labels in dataset.labels if key in labels)
    return moments.rms if moments.count else 0.0


def energy_scale_floor(force_rms: float, length_unit: str) -> float:
    """The least scale of a per-atom energy learnt with forces of RMS ``force_rms`` (energy
    per ``length_unit``): ``ENERGY_SCALE_LENGTH`` of force."""
    return force_rms * ENERGY_SCALE_LENGTH * conversion("angstrom", length_unit)


class Moments:
    """Count, mean, spread and mean square of numbers seen a few at a time (Chan's update of
    the mean and the sum of squared deviations): statistics of data sets read from disk with
    memory that does not grow with their size."""

    def __init__(self):
        self.count, self.mean, self.deviations, self.squares, self.absolutes = 0, 0.0, 0.0, 0.0, 0.0

    @classmethod
    def of(cls, arrays: Iterable[np.ndarray]) -> "Moments":
        moments = cls()
        for values in arrays:
            moments.add(values)
        return moments

    def add(self, values: np.ndarray) -> None:
        values = np.ravel(values)
        if values.size == 0:
            return
        mean = float(values.mean())
        total = self.count + values.size
        delta = mean - self.mean
        self.deviations += float(((values - mean) ** 2).sum())
        self.deviations += delta**2 * self.count * values.size / total
        self.mean += delta * values.size / total
        self.squares += float((values**2).sum())
        self.absolutes += float(np.abs(values).sum())
        self.count = total

    @property
    def std(self) -> float:
        return float(np.sqrt(self.deviations / self.count))

    @property
    def rms(self) -> float:
        return float(np.sqrt(self.squares / self.count))

    @property
    def mean_abs(self) -> float:
        return self.absolutes / self.count


def model_scales(
    quantities: List[str], targets: List[str], scales: Dict[str, float]
) -> torch.Tensor:
    """Output scale of each energy: the force scale if forces are learnt (the model's
    gradients must span them), else the spread of per-atom energies."""
    values = []
    for target in targets:
        forces = f"{target}/forces"
        values.append(scales[forces] if forces in quantities else scales[target])
    return torch.tensor(values, dtype=torch.float64)


def baseline_rmse(
    dataset: LabelledDataset,
    target: str,
    atomic_types: List[int],
    weights: np.ndarray,
    per_structure: bool = False,
):
    """Per-atom (or, ``per_structure``, per-structure) energy RMSE of the composition
    baseline alone: what a model must beat."""
    rows = [i for i, labels in enumerate(dataset.labels) if target in labels]
    if not rows:
        return None
    counts = composition_matrix(dataset, atomic_types)[rows]
    energies = np.array([dataset.labels[i][target][0] for i in rows])
    residual = energies - counts @ weights
    if not per_structure:
        residual = residual / counts.sum(axis=1)
    return float(np.sqrt(np.mean(residual**2)))


def generic_normalization(dataset: LabelledDataset, target) -> Tuple[float, float]:
    """Per-atom shift and scale of a generic target's head, from the training labels: the
    head then predicts numbers of order one. Scalars are shifted by their mean and rank-2
    tensors by their mean isotropic part (the shift times the identity, which every rotation
    leaves unchanged: a polarizability's trace is most of its size); vectors are not shifted
    (no constant vector is rotation invariant). The scale is the spread about that shift."""
    divide = not target.per_atom and target.reduction == "sum"

    def per_atom():  # a generator, read again for each statistic: memory stays flat
        for atoms, labels in zip(dataset.frames, dataset.labels):
            if target.name in labels:
                yield labels[target.name] / len(atoms) if divide else labels[target.name]

    # rank 2: labels [rows, 9, k], the trace is components 0, 4 and 8
    moments = Moments.of(v[:, [0, 4, 8]] if target.rank == 2 else v for v in per_atom())
    if not moments.count:
        return 0.0, 1.0
    if target.rank == 0:
        shift, spread = moments.mean, moments.std
    elif target.rank == 2:
        identity = np.eye(3).reshape(1, 9, 1)
        shift = moments.mean
        spread = Moments.of(v - shift * identity for v in per_atom()).rms
    else:
        shift, spread = 0.0, moments.rms
    return shift, spread if spread > 1e-10 else 1.0


#: Largest float32 rounding step of total energies, per atom, that training keeps quiet about
FLOAT32_ENERGY_STEP = 1e-3  # eV/atom


def warn_float32_energies(dataset: LabelledDataset, dtype: torch.dtype, sample: int = 2000):
    """Total energies so large (all-electron codes, heavy elements) that float32, in which the
    model computes and returns them, rounds them in steps above 1 meV/atom: energies and their
    loss get a noise floor the model cannot go below (forces are unaffected). Checked on up to
    ``sample`` structures spread over the set (magnitudes hardly vary within a data set)."""
    if dtype != torch.float32:
        return
    rows = np.unique(np.linspace(0, len(dataset) - 1, min(sample, len(dataset))).astype(int))
    for name, target in dataset.targets.items():
        if target.kind != "energy":
            continue
        to_ev = conversion(target.unit, "eV")
        worst, where = 0.0, -1
        for row in rows:
            labels = dataset.labels[int(row)]
            if name in labels:
                energy = abs(float(labels[name][0]))
                step = float(np.spacing(np.float32(energy))) * to_ev / len(dataset.frames[row])
                if step > worst:
                    worst, where = step, int(row)
        if worst > FLOAT32_ENERGY_STEP:
            LOGGER.warning(
                "%s: float32 rounds the energies %r in steps of up to %.2g meV/atom (%s: "
                "%.10g %s); train with base_precision: 64, or subtract reference energies "
                "from the labels (forces are unaffected)",
                dataset.name,
                name,
                worst * 1000,
                dataset.describe(where),
                float(dataset.labels[where][name][0]),
                target.unit,
            )
