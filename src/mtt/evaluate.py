"""Evaluate any exported metatomic model on structures: predictions, and errors if labelled.

This runs the ``.pt`` file exactly as an engine does (no Python model code): metatomic
``System`` objects with vesin neighbour lists registered for autograd, forces ``-dE/dx`` and
stress ``(1/V) dE/dε`` through the strain trick.
"""

import os
from typing import Dict, List, Optional

import ase
import ase.io
import numpy as np
import torch
from ase.calculators.singlepoint import SinglePointCalculator
from metatomic.torch import ModelEvaluationOptions, ModelOutput, System, load_atomistic_model

from .data.neighbors import attach_neighbor_lists
from .errors import MttError
from .io import atomic_path

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def load_model(path: str):
    """An exported model, with one-line errors for missing or foreign files."""
    if not os.path.isfile(path):
        raise MttError(f"model file not found: {path!r}")
    try:
        return load_atomistic_model(path)
    except Exception as error:
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise MttError(
            f"could not load {path!r} as a metatomic model: {first}; export one "
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
    the data in error messages."""
    capabilities = model.capabilities()
    _check_elements(frames, capabilities.atomic_types, source)
    dtype = DTYPES[capabilities.dtype]
    requests = model.requested_neighbor_lists()
    options = ModelEvaluationOptions(
        length_unit=length_unit, outputs={energy: ModelOutput(unit=energy_unit)}
    )
    results = []
    for start in range(0, len(frames), batch_size):
        chunk = frames[start : start + batch_size]
        strains = [torch.zeros(3, 3, dtype=dtype, requires_grad=True) for _ in chunk]
        built = [_system(atoms, dtype, s) for atoms, s in zip(chunk, strains)]
        systems = [system for system, _ in built]
        for system in systems:
            attach_neighbor_lists(system, _in_unit(requests, length_unit))
        energies = model(systems, options, check_consistency=False)[energy].block().values
        grads = torch.autograd.grad(energies.sum(), [p for _, p in built] + strains)
        for k, atoms in enumerate(chunk):
            result = {
                "energy": energies[k, 0].detach().double().numpy().copy(),
                "forces": -grads[k].double().numpy(),
            }
            if atoms.pbc.all():
                volume = abs(atoms.get_volume())
                result["stress"] = grads[len(chunk) + k].double().numpy() / volume
            results.append(result)
    return results


def generic_outputs(
    model, frames: List[ase.Atoms], names: List[str], length_unit: str, batch_size: int = 16
) -> List[Dict[str, np.ndarray]]:
    """Values of non-energy outputs (``mtt::<name>``) for each frame, in the model's units:
    per structure ``[components..., k]`` or per atom ``[n_atoms, components..., k]``."""
    capabilities = model.capabilities()
    dtype = DTYPES[capabilities.dtype]
    outputs = {name: capabilities.outputs[name] for name in names}
    options = ModelEvaluationOptions(length_unit=length_unit, outputs=outputs)
    requests = _in_unit(model.requested_neighbor_lists(), length_unit)
    results: List[Dict[str, np.ndarray]] = []
    for start in range(0, len(frames), batch_size):
        chunk = frames[start : start + batch_size]
        systems = [_system(a, dtype, torch.zeros(3, 3, dtype=dtype))[0] for a in chunk]
        for system in systems:
            attach_neighbor_lists(system, requests)
        blocks = {name: tm.block() for name, tm in model(systems, options, False).items()}
        for k in range(len(chunk)):
            entry = {}
            for name, block in blocks.items():
                rows = block.samples.column("system") == k
                values = block.values[rows].detach().double().numpy()
                entry[name] = values if outputs[name].sample_kind == "atom" else values[0]
            results.append(entry)
    return results


def _in_unit(requests, length_unit: str):
    """Neighbour-list requests with cutoffs in the data's length unit."""
    from metatomic.torch import NeighborListOptions

    converted = []
    for request in requests:
        cutoff = request.engine_cutoff(length_unit) if request.length_unit else request.cutoff
        converted.append(NeighborListOptions(cutoff, request.full_list, request.strict))
    return converted


def _check_elements(frames: List[ase.Atoms], atomic_types: List[int], source: str) -> None:
    allowed = set(int(z) for z in atomic_types)
    for index, atoms in enumerate(frames):
        extra = sorted(set(atoms.numbers.tolist()) - allowed)
        if extra:
            raise MttError(
                f"structure {index} of {source} has elements {extra} the model was not "
                f"trained on (it knows {sorted(allowed)}); such structures cannot be evaluated "
                "with this model"
            )


def error_metrics(frames, labels, predictions, energy: str) -> Dict[str, Dict[str, float]]:
    """RMSE and MAE of energy per atom, forces and stress, over the frames with labels."""
    errors: Dict[str, List[np.ndarray]] = {}
    for atoms, label, prediction in zip(frames, labels, predictions):
        pairs = {
            "energy_per_atom": (energy, "energy", len(atoms)),
            "forces": (f"{energy}/forces", "forces", 1),
            "stress": (f"{energy}/stress", "stress", 1),
        }
        for name, (key, predicted, divide) in pairs.items():
            if key in label and predicted in prediction:
                difference = (
                    prediction[predicted] - label[key].reshape(prediction[predicted].shape)
                ) / divide
                errors.setdefault(name, []).append(np.ravel(difference))
    return {
        name: {
            "rmse": float(np.sqrt(np.mean(np.concatenate(e) ** 2))),
            "mae": float(np.mean(np.abs(np.concatenate(e)))),
            "count": float(len(e)),
        }
        for name, e in errors.items()
    }


def write_predictions(path: str, frames: List[ase.Atoms], predictions, generic=None) -> None:
    """An extxyz file with each frame's energy predictions as its calculator results and
    generic outputs ``mtt::<name>`` under ``<name>`` in ``info`` (per structure, flattened) or
    ``arrays`` (per atom)."""
    out = []
    for index, (atoms, prediction) in enumerate(zip(frames, predictions)):
        copy = ase.Atoms(atoms.numbers, atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
        if "energy" in prediction:
            results = {"energy": float(prediction["energy"]), "forces": prediction["forces"]}
            if "stress" in prediction:
                results["stress"] = prediction["stress"]
            copy.calc = SinglePointCalculator(copy, **results)
        for name, value in (generic[index] if generic else {}).items():
            key = name.split("::", 1)[1].replace("/", "_")
            if value.ndim > 0 and value.shape[0] == len(atoms) and value.ndim >= 2:
                copy.arrays[key] = value.reshape(len(atoms), -1)
            else:
                copy.info[key] = np.ravel(value)
        out.append(copy)
    with atomic_path(path, suffix=".xyz") as tmp:
        ase.io.write(tmp, out, format="extxyz")


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
