"""Helpers of the architecture test suite: structures, models, independent references."""

import json
import os
import subprocess
import sys
import textwrap
from typing import Any, Dict, List, Optional, Sequence

import ase
import ase.build
import numpy as np
import torch
from metatensor.torch import Labels
from metatomic.torch import ModelEvaluationOptions, ModelOutput, System

from .. import architectures, hypers
from ..data.neighbors import attach_neighbor_lists
from ..data.targets import DatasetInfo, TargetInfo


def molecule(seed: int = 0) -> ase.Atoms:
    """A distorted ethanol molecule (C, H, O), not periodic."""
    atoms = ase.build.molecule("CH3CH2OH")
    atoms.rattle(0.05, seed=seed)
    return atoms


def periodic_crystal(seed: int = 0) -> ase.Atoms:
    """A sheared, rattled 8-atom C/O/H cell: many periodic images within any cutoff."""
    atoms = ase.build.bulk("C", "diamond", a=3.6, cubic=True)
    atoms.numbers[[1, 5]] = 8
    atoms.numbers[[2]] = 1
    atoms.set_cell(
        atoms.cell[:] @ np.array([[1.0, 0.05, 0.0], [0.0, 1.0, 0.03], [0.02, 0, 1.0]]),
        scale_atoms=True,
    )
    atoms.rattle(0.08, seed=seed)
    return atoms


def dataset_info(
    types=(1, 6, 8), length_unit: str = "angstrom", generic: bool = True
) -> DatasetInfo:
    """An energy with forces and stress, plus (``generic``) one target of every generic kind:
    a dipole-like vector, a polarizability-like symmetric tensor, per-atom charges with two
    channels and a scalar reduced by ``max``."""
    targets = {"energy": TargetInfo("energy", "eV", forces=True, stress=True)}
    if generic:
        for target in (
            TargetInfo("mtt::dipole", "D", kind="generic", rank=1),
            TargetInfo("mtt::polar", "bohr^3", kind="generic", rank=2, reduction="mean"),
            TargetInfo("mtt::charges", "", kind="generic", per_atom=True, num_subtargets=2),
            TargetInfo("mtt::gap", "eV", kind="generic", reduction="max"),
        ):
            targets[target.name] = target
    return DatasetInfo(length_unit, list(types), targets)


def random_model(
    name: str, model_hypers: Dict[str, Any], dtype: torch.dtype, seed: int = 0, generic: bool = True
):
    """A freshly initialised model with a non-trivial composition baseline (and generic
    targets with non-trivial normalisation), in eval mode."""
    torch.manual_seed(seed)
    architecture = architectures.load(name)
    model_class = architecture.__model__
    model_hypers = hypers.parse(model_class.__hypers__, model_hypers, "architecture.model")
    model = model_class(model_hypers, dataset_info(generic=generic))
    n_types = len(model.atomic_types)
    baseline = torch.linspace(-3.0, -1.0, n_types, dtype=torch.float64).reshape(1, -1)
    model.set_baseline(baseline, torch.tensor([0.7], dtype=torch.float64))
    if generic:
        # the polarizability's shift is an isotropic tensor (a shift of every component
        # would not rotate); vectors are never shifted
        model.set_generic_normalization(
            torch.tensor([0.0, 0.4, 0.1, 0.2]), torch.tensor([1.5, 2.0, 0.5, 0.3])
        )
    return model.to(dtype).eval()


def systems_with_neighbors(
    model, frames: List[ase.Atoms], dtype: torch.dtype, positions_grad: bool = False
) -> List[System]:
    systems = []
    for atoms in frames:
        pbc = torch.tensor(np.asarray(atoms.pbc, dtype=bool))
        system = System(
            types=torch.tensor(atoms.numbers, dtype=torch.int32),
            positions=torch.tensor(atoms.positions, dtype=dtype).requires_grad_(positions_grad),
            cell=torch.tensor(np.asarray(atoms.cell[:]), dtype=dtype) * pbc[:, None],
            pbc=pbc,
        )
        attach_neighbor_lists(system, model.requested_neighbor_lists())
        systems.append(system)
    return systems


def energy_with_hydrogen_at(model, distance: float) -> float:
    """Energy of :func:`molecule` plus an H atom ``distance`` away from its atom of largest x,
    along +x (so every other atom is farther away): smoothness at the cutoff."""
    atoms = molecule()
    nearest = int(np.argmax(atoms.positions[:, 0]))
    position = atoms.positions[nearest] + np.array([distance, 0.0, 0.0])
    return float(energy_of(model, atoms + ase.Atoms("H", [position]))[0])


def energy_of(
    model,
    atoms: ase.Atoms,
    dtype: torch.dtype = torch.float64,
    per_atom: bool = False,
    selected: Optional[Labels] = None,
) -> torch.Tensor:
    """Energy of one structure through the model's metatomic ``forward``."""
    systems = systems_with_neighbors(model, [atoms], dtype)
    output = ModelOutput(unit="eV", sample_kind="atom" if per_atom else "system")
    result = model(systems, {"energy": output}, selected)
    return result["energy"].block().values.detach().reshape(-1)


def engine_gradients(
    model,
    frames: List[ase.Atoms],
    weights: Sequence[float],
    selected: Optional[Labels] = None,
):
    """What an engine gets: energies per system through the metatomic ``forward`` of
    ``model`` (ours, or an exported model as loaded by ``load_atomistic_model``) and the
    gradients of ``sum_s weights[s] * E_s`` with respect to positions (minus the forces, if
    the weights are ones) and to a strain of each system (volume times the stress), float64."""
    systems, positions, strains = [], [], []
    for atoms in frames:
        pbc = torch.tensor(np.asarray(atoms.pbc, dtype=bool))
        position = torch.tensor(atoms.positions, dtype=torch.float64, requires_grad=True)
        strain = torch.eye(3, dtype=torch.float64, requires_grad=True)
        cell = torch.tensor(np.asarray(atoms.cell[:]), dtype=torch.float64) * pbc[:, None]
        system = System(
            types=torch.tensor(atoms.numbers, dtype=torch.int32),
            positions=position @ strain,
            cell=cell @ strain,
            pbc=pbc,
        )
        attach_neighbor_lists(system, model.requested_neighbor_lists())
        systems.append(system)
        positions.append(position)
        strains.append(strain)
    output = {"energy": ModelOutput(unit="eV")}
    if hasattr(model, "capabilities"):  # exported: check what engines would check
        options = ModelEvaluationOptions(
            length_unit="angstrom", outputs=output, selected_atoms=selected
        )
        result = model(systems, options, check_consistency=True)
    else:
        result = model(systems, output, selected)
    energies = result["energy"].block().values.reshape(-1)
    (energies * torch.tensor(list(weights), dtype=energies.dtype)).sum().backward()
    return (
        energies.detach(),
        [p.grad for p in positions],
        [s.grad for s in strains],
    )


FRESH_PROCESS_SCRIPT = textwrap.dedent(
    """
    import json, sys, warnings
    warnings.simplefilter("ignore")
    model_path, structures_path, blocked = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
    for name in blocked:  # the model must run without any of these (mtt's code, at least)
        sys.modules[name] = None
        try:
            __import__(name)
            raise SystemExit(f"{name} is importable in the fresh process")
        except ImportError:
            pass
    import ase.io
    from metatomic_ase import MetatomicCalculator

    calculator = MetatomicCalculator(model_path, extensions_directory=None)
    results = []
    for atoms in ase.io.read(structures_path, ":"):
        atoms.calc = calculator
        entry = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces().tolist()}
        if atoms.pbc.all():
            entry["stress"] = atoms.get_stress(voigt=False).tolist()
        results.append(entry)
    print(json.dumps(results))
    """
)


NVE_SCRIPT = textwrap.dedent(
    """
    import json, sys, warnings
    warnings.simplefilter("ignore")
    sys.modules["mtt"] = None
    import ase.io, numpy as np
    from ase import units
    from ase.md.velocitydistribution import Stationary, thermalize_momenta
    from ase.md.verlet import VelocityVerlet
    from metatomic_ase import MetatomicCalculator

    model_path, structure, steps, timestep_fs = sys.argv[1:5]
    atoms = ase.io.read(structure)
    atoms.calc = MetatomicCalculator(model_path, extensions_directory=None)
    thermalize_momenta(atoms, temperature_K=300, rng=np.random.default_rng(0))
    Stationary(atoms)
    dynamics = VelocityVerlet(atoms, timestep=float(timestep_fs) * units.fs)
    energies = []
    dynamics.attach(lambda: energies.append(atoms.get_total_energy()), interval=1)
    dynamics.run(int(steps))
    print(json.dumps(energies))
    """
)


def nve_energies_in_fresh_process(
    model_path: str, atoms: ase.Atoms, workdir: str, steps: int = 200, timestep_fs: float = 0.25
) -> List[float]:
    """Total energies (eV) along a velocity-Verlet NVE run of the exported model alone."""
    import ase.io

    structure = os.path.join(workdir, "nve_start.traj")
    ase.io.write(structure, atoms)
    arguments = [model_path, structure, str(steps), str(timestep_fs)]
    return _json_from_fresh_process(NVE_SCRIPT, arguments, workdir, "NVE run")


def _json_from_fresh_process(script: str, arguments: List[str], workdir: str, what: str):
    """Run ``script`` in a new Python process (no PYTHONPATH) and parse its last line."""
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    completed = subprocess.run(
        [sys.executable, "-c", script, *arguments],
        capture_output=True,
        text=True,
        env=env,
        cwd=workdir,
        timeout=600,
    )
    if completed.returncode != 0:
        raise AssertionError(f"{what} failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def exported_in_fresh_process(
    model_path: str,
    frames: List[ase.Atoms],
    workdir: str,
    blocked: Sequence[str] = ("mtt",),
):
    """Energies, forces and stress from metatomic's ASE calculator in a new Python process in
    which ``mtt`` (and the other ``blocked`` packages) cannot be imported: what a user of the
    ``.pt`` file alone gets."""
    import ase.io

    structures = os.path.join(workdir, "structures.traj")  # exact positions
    ase.io.write(structures, frames)
    arguments = [model_path, structures, ",".join(blocked)]
    return _json_from_fresh_process(FRESH_PROCESS_SCRIPT, arguments, workdir, "fresh process")
