"""One inference measurement in a fresh process (run by ``run.py``; not imported by it).

This file must run under mtt's and under metatrain's virtual environment alike, so it imports
neither tool: only ASE, metatomic-ase, vesin and numpy. It prints one JSON object on its last
line of stdout.

Modes:

``calc``
    Load an exported model in metatomic's ``MetatomicCalculator`` and time MD-like steps on one
    frame of an extended XYZ file: before every step each atom moves by a random displacement
    (Gaussian, ``--displacement`` Å per component), then ``atoms.get_forces()`` runs the model
    (energy, forces and, for periodic cells, the stress which the calculator computes with the
    forces). With ``--skin 0`` (the default) the neighbour list is rebuilt at every step.

``eval``
    Errors of an exported model on labelled frames, computed the same way for every tool
    (energy per atom, forces and, for periodic frames with a stress or virial label, stress),
    in the data's units: ``--unit-factor`` converts the calculator's eV into them.

``nl``
    The neighbour-list floor: time of ``vesin.NeighborList.compute`` alone (full list, pairs,
    shifts and distance vectors, the quantities an engine hands to a metatomic model) for the
    same frame and cutoff, with the same displacements between calls.

Memory: ``peak_rss_mb`` is the peak resident set size of the whole process (VmHWM, which
includes the Python interpreter and torch themselves), ``base_rss_mb`` the resident size just
before the first step (model loaded, structure read); their difference is what the steps add.
"""

import argparse
import importlib
import json
import os
import sys
import time

import numpy as np


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def _read_frame(path: str, index: int):
    import ase.io

    atoms = ase.io.read(path, index=index)
    atoms.calc = None
    return atoms


def run_calc(args, atoms, rng):
    import torch

    for module in args.extension_import:
        importlib.import_module(module)
    from metatomic_ase import MetatomicCalculator

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    atoms.calc = MetatomicCalculator(args.model, device="cpu", neighbor_skin=args.skin)
    times = []
    base = None
    for step in range(args.warmup + args.steps):
        atoms.positions += rng.normal(0.0, args.displacement, atoms.positions.shape)
        if step == 0:
            base = _status_mb("VmRSS")
        start = time.perf_counter()
        forces = atoms.get_forces()
        elapsed = time.perf_counter() - start
        if step >= args.warmup:
            times.append(elapsed)
    return (
        times,
        base,
        {"energy": float(atoms.get_potential_energy()), "max_force": float(np.abs(forces).max())},
    )


def run_nl(args, atoms, rng):
    import vesin

    calculator = vesin.NeighborList(cutoff=args.cutoff, full_list=True)
    times = []
    base = None
    n_pairs = 0
    for step in range(args.warmup + args.steps):
        atoms.positions += rng.normal(0.0, args.displacement, atoms.positions.shape)
        if step == 0:
            base = _status_mb("VmRSS")
        start = time.perf_counter()
        i, j, shifts, vectors = calculator.compute(
            points=atoms.positions,
            box=atoms.cell[:],
            periodic=bool(atoms.pbc.all()),
            quantities="ijSD",
            copy=True,
        )
        elapsed = time.perf_counter() - start
        n_pairs = len(i)
        if step >= args.warmup:
            times.append(elapsed)
    return times, base, {"n_pairs": int(n_pairs)}


def run_eval(args):
    import ase.io

    for module in args.extension_import:
        importlib.import_module(module)
    from metatomic_ase import MetatomicCalculator

    frames = ase.io.read(args.xyz, ":")
    calculator = MetatomicCalculator(args.model, device="cpu")
    errors = {"energy_per_atom": [], "forces": [], "stress": []}
    for atoms in frames:
        energy = _label(atoms, args.energy_key, per_atom=False)
        forces = _label(atoms, args.forces_key, per_atom=True)
        stress = None
        if atoms.pbc.all() and args.stress_key:
            stress = _label(atoms, args.stress_key, per_atom=False)
            if stress is not None:
                stress = np.asarray(stress, dtype=float).reshape(3, 3)
        elif atoms.pbc.all() and args.virial_key:
            virial = _label(atoms, args.virial_key, per_atom=False)
            if virial is not None:
                stress = -np.asarray(virial, dtype=float).reshape(3, 3) / atoms.get_volume()
        copy = atoms.copy()
        copy.calc = calculator
        predicted_forces = copy.get_forces() * args.unit_factor
        predicted_energy = copy.get_potential_energy() * args.unit_factor
        n = len(atoms)
        errors["energy_per_atom"].append(np.atleast_1d((predicted_energy - float(energy)) / n))
        if forces is not None:
            errors["forces"].append(np.ravel(predicted_forces - forces))
        if stress is not None:
            predicted = copy.get_stress(voigt=False) * args.unit_factor
            errors["stress"].append(np.ravel(predicted - stress))
    out = {}
    for name, values in errors.items():
        if values:
            values = np.concatenate(values)
            out[name] = {
                "rmse": float(np.sqrt(np.mean(values**2))),
                "mae": float(np.mean(np.abs(values))),
            }
    return out


def _label(atoms, key, per_atom):
    if not key:
        return None
    if per_atom:
        return np.asarray(atoms.arrays[key], dtype=float) if key in atoms.arrays else None
    value = atoms.info.get(key)
    return None if value is None else np.asarray(value, dtype=float)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["calc", "nl", "eval"])
    parser.add_argument("--xyz", required=True)
    parser.add_argument("--index", type=int, default=0)
    parser.add_argument("--model")
    parser.add_argument("--cutoff", type=float)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--skin", type=float, default=0.0)
    parser.add_argument("--displacement", type=float, default=0.005)
    parser.add_argument("--extension-import", action="append", default=[])
    parser.add_argument("--energy-key")
    parser.add_argument("--forces-key")
    parser.add_argument("--stress-key")
    parser.add_argument("--virial-key")
    parser.add_argument("--unit-factor", type=float, default=1.0)
    args = parser.parse_args()

    if args.mode == "eval":
        print(json.dumps(run_eval(args)))
        return

    rng = np.random.default_rng(12345)
    atoms = _read_frame(args.xyz, args.index)
    if args.mode == "calc":
        times, base, extra = run_calc(args, atoms, rng)
    else:
        times, base, extra = run_nl(args, atoms, rng)
    result = {
        "n_atoms": len(atoms),
        "times_s": times,
        "median_s": float(np.median(times)),
        "min_s": float(np.min(times)),
        "us_per_atom": float(np.median(times)) / len(atoms) * 1e6,
        "base_rss_mb": base,
        "peak_rss_mb": _status_mb("VmHWM"),
        **extra,
    }
    sys.stdout.flush()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
