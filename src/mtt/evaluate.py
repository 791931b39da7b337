"""Evaluate any exported metatomic model on structures: predictions, and errors if labelled.

This runs the ``.pt`` file exactly as an engine does (no Python model code): metatomic
``System`` objects with vesin neighbour lists registered for autograd, forces ``-dE/dx`` and
stress ``(1/V) dE/dε`` through the strain trick.
"""

import os
import zipfile
from dataclasses import dataclass
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import ase
import ase.io
import numpy as np
import torch
from ase.calculators.singlepoint import SinglePointCalculator
from metatomic.torch import ModelEvaluationOptions, ModelOutput, System, load_atomistic_model

from .data.graph import MIN_DISTANCE, check_distances
from .data.neighbors import attach_neighbor_lists, neighbor_pairs
from .data.reading import is_per_atom_result
from .errors import MttError, did_you_mean
from .gradients import symmetric
from .io import atomic_path, is_truncated_archive, refuse_damaged
from .units import check_energy_unit, check_length_unit, conversion

DTYPES = {"float32": torch.float32, "float64": torch.float64}


EXTENSIONS_FIX = (
    "give their directory with -e/--extensions-dir (metatrain exports them to 'extensions/' "
    "next to its model)"
)


def load_model(
    path: str, extensions_directory: Optional[str] = None, extensions_fix: str = EXTENSIONS_FIX
):
    """An exported model, with one-line errors for missing or foreign files; models of other
    tools that need compiled TorchScript extensions load them from ``extensions_directory``
    (``extensions_fix`` says what to do without it: commands without ``-e`` say otherwise)."""
    if os.path.isdir(path):
        inside = os.path.join(path, "model.pt")
        hint = f" ({inside!r} is one)" if os.path.isfile(inside) else ""
        raise MttError(f"{path!r} is a directory; give an exported model file{hint}")
    if not os.path.isfile(path):
        raise MttError(f"model file not found: {path!r}")
    if not zipfile.is_zipfile(path) and not is_truncated_archive(path):
        raise MttError(
            f"{path!r} is not a model (not an archive written by torch); give an exported "
            "model, e.g. the model.pt of 'mtt train' or 'mtt export'"
        )
    refuse_damaged(
        path, "copy it again, or export it again with 'mtt export outputs/<run>/model.ckpt'"
    )
    if extensions_directory is not None and not os.path.isdir(extensions_directory):
        raise MttError(f"extensions directory not found: {extensions_directory!r}")
    try:
        return load_atomistic_model(path, extensions_directory=extensions_directory)
    except Exception as error:
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        if "extension" in first.lower():
            beside = os.path.join(os.path.dirname(os.path.abspath(path)), "extensions")
            hint = f" ({beside!r} exists)" if os.path.isdir(beside) else ""
            raise MttError(
                f"could not load {path!r}: it needs compiled TorchScript extensions that "
                f"are not loaded; {extensions_fix}{hint}"
            ) from None
        if is_truncated_archive(path):
            raise MttError(
                f"{path!r} is truncated or damaged (a model archive without its end, e.g. an "
                "unfinished copy); copy it again, or export it again with 'mtt export "
                "outputs/<run>/model.ckpt'"
            ) from None
        raise MttError(
            f"could not load {path!r} as a metatomic model: {first[:200]}; export one "
            "with 'mtt export model.ckpt'"
        ) from None


def _system(atoms: ase.Atoms, dtype: torch.dtype, strain: torch.Tensor):
    positions = torch.tensor(atoms.positions, dtype=dtype).requires_grad_(True)
    pbc = torch.tensor(np.asarray(atoms.pbc, dtype=bool))
    cell = torch.tensor(np.asarray(atoms.cell[:]), dtype=dtype) * pbc[:, None]
    deformation = torch.eye(3, dtype=dtype) + strain
    system = System(
        types=torch.tensor(atoms.numbers, dtype=torch.int32),
        positions=positions @ deformation,
        cell=cell @ deformation,
        pbc=pbc,
    )
    return system, positions


class Evaluator:
    """An exported model, ready to evaluate batches of structures: energies with forces and
    stress, and generic outputs (``mtt::<name>``)."""

    def __init__(self, model, length_unit: str, source: str = "the data"):
        self.model = model
        self.capabilities = model.capabilities()
        self.dtype = DTYPES[self.capabilities.dtype]
        self.length_unit = length_unit
        self.source = source
        self.requests = model.requested_neighbor_lists()

    def check_structures(self, frames: Sequence[ase.Atoms], first: int = 0) -> None:
        """Refuse elements the model does not know and atoms on top of each other (their
        energy and forces would be NaN); ``first`` is the index of ``frames[0]``."""
        _check_elements(frames, self.capabilities.atomic_types, self.source, first)
        closest = MIN_DISTANCE * conversion("angstrom", self.length_unit)
        for index, atoms in enumerate(frames, start=first):
            pbc = np.asarray(atoms.pbc, dtype=bool)
            cell = np.asarray(atoms.cell[:], dtype=np.float64) * pbc[:, None]
            pairs = neighbor_pairs(atoms.positions, cell, pbc, closest, full_list=False)
            try:
                check_distances(pairs[0], pairs[1], pairs[3], closest)
            except MttError as error:
                raise MttError(f"structure {index} of {self.source}: {error}") from None

    def energies(
        self, frames: Sequence[ase.Atoms], energy: str, energy_unit: str
    ) -> List[Dict[str, np.ndarray]]:
        """Energy, forces and (for periodic structures) stress of each frame."""
        options = ModelEvaluationOptions(
            length_unit=self.length_unit, outputs={energy: ModelOutput(unit=energy_unit)}
        )
        strains = [torch.zeros(3, 3, dtype=self.dtype, requires_grad=True) for _ in frames]
        built = [_system(atoms, self.dtype, s) for atoms, s in zip(frames, strains)]
        systems = [system for system, _ in built]
        for system in systems:
            attach_neighbor_lists(system, self.requests, self.length_unit)
        energies = self.model(systems, options, check_consistency=False)[energy].block().values
        grads = torch.autograd.grad(energies.sum(), [p for _, p in built] + strains)
        results = []
        for k, atoms in enumerate(frames):
            result = {
                "energy": energies[k, 0].detach().double().numpy().copy(),
                "forces": -grads[k].double().numpy(),
            }
            if atoms.pbc.all():
                volume = abs(atoms.get_volume())
                gradient = symmetric(grads[len(frames) + k].double())
                result["stress"] = gradient.numpy() / volume
            results.append(result)
        return results

    def generic(
        self,
        frames: Sequence[ase.Atoms],
        names: List[str],
        per_atom: Optional[Dict[str, bool]] = None,
    ) -> List[Dict[str, np.ndarray]]:
        """Values of non-energy outputs for each frame, in the model's units: per structure
        ``[components..., k]`` or per atom ``[n_atoms, components..., k]``, as the model
        declares them or, for the names in ``per_atom``, as asked there (metatrain's models
        offer every output per atom, summed per structure when asked so)."""
        outputs = {name: self.capabilities.outputs[name] for name in names}
        for name, atom in (per_atom or {}).items():
            if name in outputs and not atom and outputs[name].sample_kind == "atom":
                declared = outputs[name]
                outputs[name] = ModelOutput(
                    quantity=declared.quantity,
                    unit=declared.unit,
                    sample_kind="system",
                    explicit_gradients=declared.explicit_gradients,
                    description=declared.description,
                )
        options = ModelEvaluationOptions(length_unit=self.length_unit, outputs=outputs)
        zero = torch.zeros(3, 3, dtype=self.dtype)
        systems = [_system(atoms, self.dtype, zero)[0] for atoms in frames]
        for system in systems:
            attach_neighbor_lists(system, self.requests, self.length_unit)
        blocks = {name: tm.block() for name, tm in self.model(systems, options, False).items()}
        results = []
        for k in range(len(frames)):
            entry = {}
            for name, block in blocks.items():
                rows = block.samples.column("system") == k
                values = block.values[rows].detach().double().numpy()
                entry[name] = values if outputs[name].sample_kind == "atom" else values[0]
            results.append(entry)
        return results


def predict(
    model,
    frames: List[ase.Atoms],
    energy: str,
    length_unit: str,
    energy_unit: str,
    batch_size: int = 16,
    source: str = "the data",
) -> List[Dict[str, np.ndarray]]:
    """Energy, forces and (for periodic structures) stress of each frame; ``source`` names
    the data in error messages; ``model`` is an exported model or its path."""
    model = _as_model(model)
    check_length_unit(length_unit, "predict length_unit")
    check_energy_unit(energy_unit, "predict energy_unit")
    _check_frames(frames)
    energy = pick_energy_output(model, energy)
    evaluator = Evaluator(model, length_unit, source)
    evaluator.check_structures(frames)
    results = []
    for start in range(0, len(frames), batch_size):
        results += evaluator.energies(frames[start : start + batch_size], energy, energy_unit)
    return results


def generic_outputs(
    model,
    frames: List[ase.Atoms],
    names: List[str],
    length_unit: str,
    batch_size: int = 16,
    source: str = "the data",
) -> List[Dict[str, np.ndarray]]:
    """Values of non-energy outputs (``mtt::<name>``) for each frame, in the model's units:
    per structure ``[components..., k]`` or per atom ``[n_atoms, components..., k]``.
    ``model`` is an exported model or its path; ``source`` names the data in error messages."""
    model = _as_model(model)
    check_length_unit(length_unit, "generic_outputs length_unit")
    _check_frames(frames)
    _check_output_names(names, model.capabilities().outputs)
    evaluator = Evaluator(model, length_unit, source)
    evaluator.check_structures(frames)
    results: List[Dict[str, np.ndarray]] = []
    for start in range(0, len(frames), batch_size):
        results += evaluator.generic(frames[start : start + batch_size], names)
    return results


def _as_model(model):
    """A loaded model as it is; a path loaded (with :func:`load_model`'s one-line errors)."""
    if isinstance(model, (str, os.PathLike)):
        return load_model(os.fspath(model))
    if not hasattr(model, "capabilities"):
        raise MttError(
            f"model is a {type(model).__name__}, not an exported model; give the path of one "
            "(e.g. 'model.pt') or mtt.evaluate.load_model(path)"
        )
    return model


def _check_frames(frames) -> None:
    if isinstance(frames, ase.Atoms):
        raise MttError("frames is a single ase.Atoms; give a list of them, e.g. [atoms]")
    if isinstance(frames, (str, os.PathLike)):
        raise MttError(
            f"frames is a path ({os.fspath(frames)!r}), where structures are expected; read "
            "them with ase.io.read(path, ':')"
        )


def _check_output_names(names: List[str], outputs) -> None:
    """Every name one of the model's outputs; generic ones are named ``mtt::<name>``."""
    if isinstance(names, str):
        raise MttError(f"names is a string ({names!r}); give a list of outputs, e.g. [{names!r}]")
    for name in names:
        if name in outputs:
            continue
        prefixed = f"mtt::{name}"
        hint = (
            f"did you mean {prefixed!r} (generic outputs are named mtt::<name>)? "
            if prefixed in outputs
            else did_you_mean(name, outputs)
        )
        raise MttError(f"the model has no output {name!r}; {hint}it has {sorted(outputs)}")


def _check_elements(
    frames: Sequence[ase.Atoms], atomic_types: List[int], source: str, first: int = 0
) -> None:
    allowed = set(int(z) for z in atomic_types)
    for index, atoms in enumerate(frames, start=first):
        extra = sorted(set(atoms.numbers.tolist()) - allowed)
        if extra:
            raise MttError(
                f"structure {index} of {source} has elements {extra} the model was not "
                f"trained on (it knows {sorted(allowed)}); such structures cannot be evaluated "
                "with this model"
            )


def _energy_pairs(atoms, label, prediction, energy: str):
    """``(name, predicted, reference)`` of the energy per atom, forces and stress that
    ``label`` holds and ``prediction`` has, flattened."""
    pairs = {
        "energy_per_atom": (energy, "energy", len(atoms)),
        "forces": (f"{energy}/forces", "forces", 1),
        "stress": (f"{energy}/stress", "stress", 1),
    }
    for name, (key, predicted, divide) in pairs.items():
        if key in label and predicted in prediction:
            yield name, np.ravel(prediction[predicted]) / divide, np.ravel(label[key]) / divide


class ErrorSums:
    """RMSE and MAE accumulated batch by batch (running sums, nothing kept per structure)."""

    def __init__(self):
        self.sums: Dict[str, List[float]] = {}  # name: [squares, absolutes, values, structures]
        # name: sums of predictions, their squares, labels, their squares (the spreads)
        self.moments: Dict[str, List[float]] = {}

    def add(self, name: str, predicted: np.ndarray, reference: np.ndarray) -> None:
        error = np.ravel(predicted) - np.ravel(reference)
        sums = self.sums.setdefault(name, [0.0, 0.0, 0, 0])
        sums[0] += float(np.sum(error**2))
        sums[1] += float(np.sum(np.abs(error)))
        sums[2] += error.size
        sums[3] += 1
        moments = self.moments.setdefault(name, [0.0, 0.0, 0.0, 0.0])
        for k, values in enumerate((np.ravel(predicted), np.ravel(reference))):
            moments[2 * k] += float(np.sum(values))
            moments[2 * k + 1] += float(np.sum(values**2))

    def spread_ratio(self, name: str) -> Optional[float]:
        """Standard deviation of the labels over that of the predictions (None: not
        compared, or predictions without spread)."""
        if name not in self.moments or not self.sums[name][2]:
            return None
        n = self.sums[name][2]
        p_sum, p_squares, r_sum, r_squares = self.moments[name]
        predicted = max(p_squares / n - (p_sum / n) ** 2, 0.0) ** 0.5
        reference = max(r_squares / n - (r_sum / n) ** 2, 0.0) ** 0.5
        return reference / predicted if predicted > 0 else None

    def results(self) -> Dict[str, Dict[str, float]]:
        """``{name: {"rmse", "mae", "count"}}``, ``count`` being the labelled structures."""
        return {
            name: {
                "rmse": float(np.sqrt(squares / values)),
                "mae": float(absolutes / values),
                "count": float(count),
            }
            for name, (squares, absolutes, values, count) in self.sums.items()
            if values
        }


def error_metrics(frames, labels, predictions, energy: str) -> Dict[str, Dict[str, float]]:
    """RMSE and MAE of energy per atom, forces and stress, over the frames with labels."""
    sums = ErrorSums()
    for atoms, label, prediction in zip(frames, labels, predictions):
        for name, predicted, reference in _energy_pairs(atoms, label, prediction, energy):
            sums.add(name, predicted, reference)
    return sums.results()


class ParitySample:
    """Predicted and reference values of at most ``size`` structures for a parity plot: all
    of them up to ``size``, then a uniform random sample (reservoir sampling, seeded, so the
    same data gives the same picture) that keeps the memory bounded."""

    def __init__(self, size: int, seed: int = 0):
        self.size = size
        self.seen = 0
        self.slots: List[Dict[str, tuple]] = []
        self.rng = np.random.default_rng(seed)

    def offer(self, pairs: Dict[str, tuple]) -> None:
        """One structure's ``{quantity: (predicted, reference)}``."""
        self.seen += 1
        if len(self.slots) < self.size:
            self.slots.append(pairs)
            return
        slot = int(self.rng.integers(0, self.seen))
        if slot < self.size:
            self.slots[slot] = pairs

    def arrays(self) -> Tuple[Dict[str, np.ndarray], Dict[str, np.ndarray]]:
        """``({quantity: predicted}, {quantity: reference})``, concatenated."""
        predicted: Dict[str, list] = {}
        reference: Dict[str, list] = {}
        for pairs in self.slots:
            for quantity, (pred, ref) in pairs.items():
                predicted.setdefault(quantity, []).append(pred)
                reference.setdefault(quantity, []).append(ref)
        return (
            {q: np.concatenate(v) for q, v in predicted.items()},
            {q: np.concatenate(v) for q, v in reference.items()},
        )


def prediction_atoms(
    atoms: ase.Atoms, prediction, generic=None, units: Optional[Tuple[str, str]] = None
) -> ase.Atoms:
    """A copy of ``atoms`` with the energy predictions as its calculator results and generic
    outputs ``mtt::<name>`` under ``<name>`` in ``info`` (per structure, flattened) or
    ``arrays`` (per atom); ``mtt::energy``, ``mtt::forces`` and ``mtt::stress`` under
    ``mtt_<name>``, since the calculator results hold the energy's. The structure's own
    ``info`` and ``arrays`` (labels such as ``U0`` or ``REF_energy``) are kept next to the
    predictions; one whose key a prediction
    takes is kept as ``<key>_label`` (``mu`` of QM9 next to the predicted ``mtt::mu``). Its
    calculator results (where ASE puts an extxyz file's ``energy``, ``forces`` and
    ``stress``) are labels too, and are kept as ``<key>_label``: the calculator's place is
    the predictions'. ``units`` (energy, length) of the energy predictions are written as
    ``energy_unit`` and ``length_unit`` in ``info``: ASE takes calculator results for eV and
    Å, which they are only when the labels (or the model) are."""
    copy = ase.Atoms(atoms.numbers, atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    copy.info.update(atoms.info)
    for key, values in atoms.arrays.items():
        if key not in copy.arrays:
            copy.arrays[key] = values.copy()
    _keep_calculator_labels(copy, atoms)
    if "energy" in prediction:
        results = {"energy": float(prediction["energy"]), "forces": prediction["forces"]}
        if "stress" in prediction:
            results["stress"] = prediction["stress"]
        for key in results:  # extxyz refuses a key both in info/arrays and in the results
            _keep_as_label(copy, key)
        copy.calc = SinglePointCalculator(copy, **results)
        if units is not None:
            for key, unit in zip(("energy_unit", "length_unit"), units):
                _keep_as_label(copy, key)
                copy.info[key] = unit
    for name, value in (generic or {}).items():
        key = name.split("::", 1)[1].replace("/", "_").replace(":", "_")  # extxyz: no ':'

        if key in ("energy", "forces", "stress"):  # the calculator results' names
            key = f"mtt_{key}"
        _keep_as_label(copy, key)
        if value.ndim > 0 and value.shape[0] == len(atoms) and value.ndim >= 2:
            copy.arrays[key] = value.reshape(len(atoms), -1)
        else:
            copy.info[key] = np.ravel(value)
    return copy


def _keep_calculator_labels(copy: ase.Atoms, atoms: ase.Atoms) -> None:
    """``atoms``' calculator results as ``<key>_label`` in ``copy``'s ``info`` or ``arrays``
    (a key already there is the structure's own and stays)."""
    for key, value in (getattr(atoms.calc, "results", None) or {}).items():
        name = f"{key}_label"
        if name in copy.info or name in copy.arrays:
            continue
        if is_per_atom_result(key, value, len(atoms)):
            copy.arrays[name] = np.array(value).reshape(len(atoms), -1)
        else:
            copy.info[name] = value.copy() if isinstance(value, np.ndarray) else value


def _keep_as_label(atoms: ase.Atoms, key: str) -> None:
    """Move the structure's own ``key`` (in ``info`` or ``arrays``) to ``<key>_label``, where a
    prediction is about to be written under ``key``."""
    if key in atoms.info:
        atoms.info[_free_name(atoms, f"{key}_label")] = atoms.info.pop(key)
    if key in atoms.arrays:
        atoms.arrays[_free_name(atoms, f"{key}_label")] = atoms.arrays.pop(key)


def _free_name(atoms: ase.Atoms, name: str) -> str:
    """``name``, or ``name_2``, ... if the structure has a key ``name`` already: the carbon
    allotropes' ``class_label`` (diamond, ...) was overwritten by their one-hot ``class``."""
    found, count = name, 1
    while found in atoms.info or found in atoms.arrays:
        count += 1
        found = f"{name}_{count}"
    return found


def write_predictions(path: str, frames: List[ase.Atoms], predictions, generic=None) -> None:
    """An extxyz file of :func:`prediction_atoms` for each frame."""
    out = [
        prediction_atoms(atoms, prediction, generic[index] if generic else None)
        for index, (atoms, prediction) in enumerate(zip(frames, predictions))
    ]
    with atomic_path(path, suffix=".xyz") as tmp:
        ase.io.write(tmp, out, format="extxyz")


@dataclass
class Streamed:
    """What :func:`evaluate_stream` found: structure count, errors, and a parity sample."""

    structures: int
    errors: Dict[str, Dict[str, float]]
    parity: ParitySample
    # spread of the force labels over that of the predictions: far from 1, a wrong unit
    force_spread_ratio: Optional[float] = None


def evaluate_stream(
    evaluator: Evaluator,
    structures: Iterable[Tuple[ase.Atoms, Dict[str, np.ndarray]]],
    output: str,
    energy: Optional[str],
    energy_unit: str,
    generic: Sequence[str] = (),
    compare: Sequence[str] = (),
    batch_size: int = 16,
    parity_size: int = 2000,
    per_atom: Optional[Dict[str, bool]] = None,
) -> Streamed:
    """Evaluate ``(atoms, labels)`` pairs batch by batch: predictions are appended to the
    extxyz file ``output`` (moved into place at the end, so a failure leaves none), errors
    against the labels of ``energy`` and of the generic outputs in ``compare`` are running
    sums, and the parity plot gets a bounded sample. Memory does not grow with the data."""
    errors, parity, count = ErrorSums(), ParitySample(parity_size), 0
    with atomic_path(output, suffix=".xyz") as tmp, open(tmp, "w") as file:
        for batch in _batches(structures, batch_size):
            frames = [atoms for atoms, _ in batch]
            evaluator.check_structures(frames, count)
            predictions = (
                evaluator.energies(frames, energy, energy_unit) if energy else [{} for _ in frames]
            )
            values = evaluator.generic(frames, list(generic), per_atom) if generic else None
            for k, (atoms, labels) in enumerate(batch):
                pairs = {}
                if energy:
                    for name, pred, ref in _energy_pairs(atoms, labels, predictions[k], energy):
                        errors.add(name, pred, ref)
                        pairs[_parity_name(name, energy)] = (pred, ref)
                for name in compare:
                    if name in labels:
                        errors.add(name, values[k][name], labels[name])
                if pairs:
                    parity.offer(pairs)
            out = [
                prediction_atoms(
                    atoms,
                    prediction,
                    values[k] if values else None,
                    (energy_unit, evaluator.length_unit),
                )
                for k, (atoms, prediction) in enumerate(zip(frames, predictions))
            ]
            ase.io.write(file, out, format="extxyz")
            count += len(frames)
    return Streamed(count, errors.results(), parity, errors.spread_ratio("forces"))


def _parity_name(name: str, energy: str) -> str:
    """``energy_per_atom`` -> ``<energy>_per_atom``, ``forces`` -> ``<energy>/forces``."""
    return f"{energy}_per_atom" if name == "energy_per_atom" else f"{energy}/{name}"


def _batches(pairs: Iterable, size: int) -> Iterator[list]:
    batch = []
    for pair in pairs:
        batch.append(pair)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def pick_energy_output(model, requested: Optional[str]) -> str:
    outputs = model.capabilities().outputs
    energies = [name for name in outputs if name == "energy" or name.startswith("energy/")]
    if requested is not None:
        if requested not in energies:
            raise MttError(f"the model has no output {requested!r}; it has {energies}")
        return requested
    if not energies:
        raise MttError("the model has no energy output to evaluate")
    return "energy" if "energy" in energies else energies[0]
