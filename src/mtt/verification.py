"""A model file that can check itself: reference structures and results stored at export.

At export, a few structures made from the model's own elements (a cluster and a periodic cell)
are evaluated by the eager model (the training code path) and stored, with the results, in the
model's metadata. ``mtt verify model.pt`` recomputes them through the exported TorchScript model
exactly as engines run it and reports any mismatch: a way to check a model on a new machine or
after a library upgrade, without any data.
"""

import json
from typing import Any, Dict, List

import ase
import numpy as np
import torch

from .data.graph import atoms_to_graph, collate_graphs

METADATA_KEY = "mtt-verification"
TOLERANCE = {"float32": 1e-4, "float64": 1e-8}


def reference_structures(atomic_types: List[int], cutoff: float) -> List[ase.Atoms]:
    """A jittered cluster holding every element and a sheared periodic cell, deterministic."""
    rng = np.random.default_rng(20261122)
    types = list(atomic_types) * max(1, 6 // len(atomic_types))
    side = max(3, int(np.ceil(len(types) ** (1 / 3))))  # room for foundation models' elements
    grid = np.array(
        [[i, j, k] for i in range(side) for j in range(side) for k in range(side)], float
    )
    spacing = 1.4
    cluster = ase.Atoms(
        numbers=types,
        positions=grid[: len(types)] * spacing + rng.normal(scale=0.1, size=(len(types), 3)),
    )
    n_cell = max(4, min(len(atomic_types), 27))  # the first 27 elements at most
    cell = np.diag([2.6, 2.9, 3.2]) + np.array([[0, 0.3, 0], [0, 0, 0.2], [0.1, 0, 0]])
    crystal = ase.Atoms(
        numbers=[atomic_types[i % len(atomic_types)] for i in range(n_cell)],
        scaled_positions=rng.uniform(size=(n_cell, 3)),
        cell=cell,
        pbc=True,
    )
    _spread(crystal, minimum=0.9)
    return [cluster, crystal]


def _spread(atoms: ase.Atoms, minimum: float) -> None:
    """Nudge atoms apart until no two are closer than ``minimum`` (a physical-ish cell)."""
    for _ in range(200):
        distances = atoms.get_all_distances(mic=True) + np.eye(len(atoms)) * 1e9
        i, j = np.unravel_index(np.argmin(distances), distances.shape)
        if distances[i, j] >= minimum:
            return
        vector = atoms.get_distance(i, j, mic=True, vector=True)
        atoms.positions[j] += 0.2 * vector / max(np.linalg.norm(vector), 1e-3)
        atoms.wrap()


def expected_results(model, structures: List[ase.Atoms]) -> List[Dict[str, Any]]:
    """Energy, forces, stress and generic outputs of the eager model (training code path)."""
    dtype = model.baseline.dtype
    graph = collate_graphs([atoms_to_graph(a, model.cutoff, dtype) for a in structures])
    device = next(model.buffers()).device
    graph = type(graph)(*[t.to(device) for t in graph])
    wanted = list(model.generic_names)
    if model.target_names:
        name = model.target_names[0]
        wanted += [name, f"{name}/forces", f"{name}/stress"]
    predictions = {
        key: value.detach().cpu().double().numpy()
        for key, value in model.predict(graph, wanted, training=False).items()
    }
    offsets = np.cumsum([0] + [len(a) for a in structures])
    results = []
    for k, atoms in enumerate(structures):
        entry: Dict[str, Any] = {
            "numbers": atoms.numbers.tolist(),
            "positions": atoms.positions.tolist(),
            "cell": np.asarray(atoms.cell[:]).tolist(),
            "pbc": [bool(p) for p in atoms.pbc],
            "generic": {},
        }
        if model.target_names:
            name = model.target_names[0]
            entry["energy"] = float(predictions[name][k])
            entry["forces"] = predictions[f"{name}/forces"][offsets[k] : offsets[k + 1]].tolist()
            if atoms.pbc.all():
                entry["stress"] = predictions[f"{name}/stress"][k].tolist()
        for index, name in enumerate(model.generic_names):
            rows = slice(offsets[k], offsets[k + 1]) if model.generic_per_atom[index] else k
            entry["generic"][name] = predictions[name][rows].tolist()
        results.append(entry)
    return results


def verification_metadata(model) -> str:
    """The JSON stored under ``METADATA_KEY`` in the exported model's metadata."""
    structures = reference_structures(model.atomic_types, model.cutoff)
    with torch.enable_grad():
        results = expected_results(model, structures)
    return json.dumps(
        {
            "output": model.target_names[0] if model.target_names else None,
            "energy_unit": model.energy_units[0] if model.target_names else None,
            "length_unit": model.dataset_info.length_unit,
            "structures": results,
        }
    )


def read_stored(text: str, outputs) -> Dict[str, Any]:
    """The reference results stored in a model's metadata, checked to be what
    :func:`verification_metadata` writes (``outputs``: the model's); a ``ValueError`` saying
    what is wrong otherwise (a model whose metadata was edited or damaged)."""
    try:
        stored = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"not JSON: {error}") from None
    if not isinstance(stored, dict) or not isinstance(stored.get("structures"), list):
        raise ValueError("no list of structures")
    if not stored["structures"]:
        raise ValueError("the list of structures is empty")
    if stored.get("output") is not None and stored["output"] not in outputs:
        raise ValueError(f"the model has no output {stored['output']!r}")
    for index, entry in enumerate(stored["structures"]):
        try:
            n = len(entry["numbers"])
            shapes = {"positions": (n, 3), "cell": (3, 3), "pbc": (3,), "forces": (n, 3)}
            shapes.update(energy=(), stress=(3, 3))
            for key, shape in shapes.items():
                if (key in entry or key in ("positions", "cell", "pbc")) and np.shape(
                    entry[key]
                ) != shape:
                    raise ValueError(f"{key} has the shape {np.shape(entry[key])}, not {shape}")
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"structure {index}: {error}") from None
    return stored


def verify(model, stored: Dict[str, Any], dtype: str) -> List[str]:
    """Recompute the stored structures with an exported model; the mismatches, as lines."""
    from .evaluate import generic_outputs, predict

    frames = [
        ase.Atoms(numbers=s["numbers"], positions=s["positions"], cell=s["cell"], pbc=s["pbc"])
        for s in stored["structures"]
    ]
    got = [{} for _ in frames]
    if stored["output"] is not None:
        got = predict(model, frames, stored["output"], stored["length_unit"], stored["energy_unit"])
    names = sorted(stored["structures"][0].get("generic", {}))
    if names:
        for entry, values in zip(got, generic_outputs(model, frames, names, stored["length_unit"])):
            entry.update(values)
    tolerance = TOLERANCE[dtype]
    problems = []
    for index, (reference, result) in enumerate(zip(stored["structures"], got)):
        expected_values = {
            k: reference[k] for k in ("energy", "forces", "stress") if k in reference
        }
        expected_values.update(reference.get("generic", {}))
        for key, expected in expected_values.items():
            expected, actual = (
                np.asarray(expected),
                np.asarray(result[key]).reshape(np.shape(expected)),
            )
            scale = max(np.abs(expected).max(), 1.0)
            error = float(np.abs(actual - expected).max())
            if error > tolerance * scale:
                problems.append(
                    f"structure {index}: {key} differs by {error:.3g} (allowed "
                    f"{tolerance * scale:.3g})"
                )
    return problems
