"""pet's optional direct (non-conservative) force and stress heads (``direct_forces``): their
metatomic outputs, symmetries, smoothness, training and export through ASE."""

import os

import ase
import ase.io
import numpy as np
import pytest
import torch
from metatensor.torch import Labels
from metatomic.torch import ModelOutput

from mtt.api import save_model
from mtt.checkpoints import read_checkpoint
from mtt.data.targets import DatasetInfo, TargetInfo
from mtt.errors import MttError
from mtt.hypers import parse
from mtt.testing import molecule, random_model
from mtt.testing._tools import _json_from_fresh_process, periodic_crystal, systems_with_neighbors

from ..hypers import ModelHypers, TrainerHypers
from ..model import Pet
from ..trainer import Trainer
from .test_pet import ETHANOL, HYPERS, _dataset

DIRECT = dict(HYPERS, direct_forces=True)
OUTPUTS = {
    "non_conservative_force": ModelOutput(unit="eV/angstrom", sample_kind="atom"),
    "non_conservative_stress": ModelOutput(unit="eV/angstrom^3", sample_kind="system"),
}


def _direct(model, frames, selected=None):
    """Direct forces ``[n, 3]`` and stresses ``[S, 3, 3]`` through ``forward``."""
    systems = systems_with_neighbors(model, frames, torch.float64)
    results = model(systems, OUTPUTS, selected)
    forces = results["non_conservative_force"].block().values.detach()
    stress = results["non_conservative_stress"].block().values.detach()
    return forces.reshape(-1, 3).numpy(), stress.reshape(-1, 3, 3).numpy()


def test_forces_asked_per_structure_are_refused():
    """metatomic passes a request of a per-atom output per structure on to the model (to sum
    it): per-atom forces came back anyway, under a request that said otherwise."""
    model = random_model("pet", DIRECT, torch.float64, generic=False)
    systems = systems_with_neighbors(model, [molecule()], torch.float64)
    outputs = {"non_conservative_force": ModelOutput(unit="eV/angstrom", sample_kind="system")}
    with pytest.raises(ValueError, match="'non_conservative_force' holds one force per atom"):
        model(systems, outputs, None)


def test_outputs_and_metadata():
    """Forces per atom (samples ``system, atom``; component ``xyz``) and stress per system
    (components ``xyz_1, xyz_2``), declared with energy/length units; zero stress for a
    molecule. Without the hyper, neither the outputs nor new weights exist (old checkpoints
    and exported models are unchanged)."""
    model = random_model("pet", DIRECT, torch.float64, generic=False)
    outputs = model.supported_outputs()
    assert outputs["non_conservative_force"].unit == "eV/angstrom"
    assert outputs["non_conservative_force"].sample_kind == "atom"
    assert outputs["non_conservative_stress"].unit == "eV/angstrom^3"
    assert outputs["non_conservative_stress"].sample_kind == "system"
    frames = [molecule(), periodic_crystal()]
    results = model(systems_with_neighbors(model, frames, torch.float64), OUTPUTS, None)
    forces = results["non_conservative_force"].block()
    assert forces.samples.names == ["system", "atom"]
    assert forces.values.shape == (len(frames[0]) + len(frames[1]), 3, 1)
    assert [c.names for c in forces.components] == [["xyz"]]
    assert forces.properties.names == ["non_conservative_force"]
    stress = results["non_conservative_stress"].block()
    assert stress.samples.names == ["system"] and stress.values.shape == (2, 3, 3, 1)
    assert [c.names for c in stress.components] == [["xyz_1"], ["xyz_2"]]
    assert torch.all(stress.values[0] == 0) and torch.any(stress.values[1] != 0)
    assert torch.allclose(stress.values[1], stress.values[1].transpose(0, 1))

    plain = random_model("pet", HYPERS, torch.float64, generic=False)
    assert "non_conservative_force" not in plain.supported_outputs()
    assert not any(name.startswith("direct") for name in plain.state_dict())


def test_selected_atoms():
    """Forces of the selected atoms are their rows of the full output, in the order of
    ``selected_atoms``; the stress is the sum over the selected atoms' contributions (all
    atoms: the full stress)."""
    model = random_model("pet", DIRECT, torch.float64, generic=False)
    frames = [molecule(), periodic_crystal()]
    forces, stress = _direct(model, frames)
    picks = [[1, 3], [0, 2], [1, 0]]
    selected = Labels(["system", "atom"], torch.tensor(picks, dtype=torch.int32))
    partial, _ = _direct(model, frames, selected)
    offsets = [0, len(frames[0])]
    np.testing.assert_allclose(partial, forces[[offsets[s] + a for s, a in picks]], atol=1e-12)
    everything = [[s, a] for s, atoms in enumerate(frames) for a in range(len(atoms))]
    all_atoms = Labels(["system", "atom"], torch.tensor(everything, dtype=torch.int32))
    np.testing.assert_allclose(_direct(model, frames, all_atoms)[1], stress, atol=1e-12)


def test_translation_invariance_and_smoothness_at_the_cutoff():
    """Direct forces do not change when the structure is translated, and a neighbour
    entering the cutoff changes them continuously, by an amount vanishing like the square
    of its distance to the cutoff (the cutoff function has zero slope there). A failure
    means MD with direct forces would see jumps."""
    model = random_model("pet", DIRECT, torch.float64, generic=False)
    atoms = periodic_crystal()
    moved = atoms.copy()
    moved.positions += np.array([0.3, -1.7, 2.2])
    for a, b in zip(_direct(model, [atoms]), _direct(model, [moved])):
        np.testing.assert_allclose(a, b, atol=1e-10)

    base = molecule()
    nearest = int(np.argmax(base.positions[:, 0]))

    def forces_with_hydrogen_at(distance):
        position = base.positions[nearest] + np.array([distance, 0.0, 0.0])
        return _direct(model, [base + ase.Atoms("H", [position])])[0][: len(base)]

    far = forces_with_hydrogen_at(4 * model.cutoff)
    np.testing.assert_allclose(forces_with_hydrogen_at(model.cutoff + 1e-4), far, atol=1e-12)
    effects = [np.abs(forces_with_hydrogen_at(model.cutoff - d) - far).max() for d in (1e-3, 1e-4)]
    assert 0 < effects[1] < 1e-6
    assert effects[0] / effects[1] == pytest.approx(100, rel=0.05)


def test_direct_heads_learn_the_force_labels(tmp_path):
    """Trained on 10 ethanol frames (kcal/mol) with the shared loop, the direct forces
    (metric ``energy/direct_forces``, next to ``energy/forces``) approach the force labels:
    their error falls well below the labels' RMS (what forces of zero would give) and that
    of the first epoch. The checkpoint keeps the heads."""
    frames = ase.io.read(ETHANOL, ":10")
    torch.manual_seed(0)
    dataset = _dataset(frames)
    info = DatasetInfo(dataset.length_unit, dataset.atomic_types, dataset.targets)
    model = Pet(parse(ModelHypers, DIRECT), info)
    hypers = {
        "num_epochs": 40,
        "batch_size": 5,
        "learning_rate": 3e-3,
        "scheduler": "constant",
        "log_interval": 1000,
        "progress_bar": False,
    }
    trainer = Trainer(parse(TrainerHypers, hypers, "architecture.training"))
    trainer.train(model, torch.float64, [torch.device("cpu")], [dataset], [], str(tmp_path))
    first, last = trainer.history[0], trainer.history[-1]
    assert "train_energy/forces_rmse" in last
    key = "train_energy/direct_forces_rmse"
    labels_rms = np.sqrt(np.mean(np.concatenate([a.get_forces() for a in frames]) ** 2))
    assert last[key] < 0.6 * min(first[key], labels_rms), (first[key], last[key], labels_rms)

    checkpoint = read_checkpoint(str(tmp_path / "checkpoints" / "epoch_40.ckpt"))
    loaded = Pet.load_checkpoint(checkpoint, "restart").to(torch.float64).eval()
    model.eval()
    np.testing.assert_allclose(
        _direct(loaded, frames[:1])[0], _direct(model, frames[:1])[0], atol=1e-10
    )


ASE_SCRIPT = """
import json, sys, warnings
warnings.simplefilter("ignore")
sys.modules["mtt"] = None
import ase.io
from metatomic_ase import MetatomicCalculator

model_path, structures_path = sys.argv[1], sys.argv[2]
calculator = MetatomicCalculator(model_path, extensions_directory=None, non_conservative=True)
results = []
for atoms in ase.io.read(structures_path, ":"):
    atoms.calc = calculator
    results.append(
        {"forces": atoms.get_forces().tolist(), "stress": atoms.get_stress(voigt=False).tolist()}
    )
print(json.dumps(results))
"""


def test_exported_direct_outputs_through_ase_in_a_fresh_process(tmp_path):
    """``MetatomicCalculator(model, non_conservative=True)``, in a process without mtt,
    returns the eager model's direct forces (less their mean, which the calculator removes)
    and stress for periodic crystals."""
    model = random_model("pet", DIRECT, torch.float64, generic=False)
    path = str(tmp_path / "direct.pt")
    save_model(model.export(), path)
    frames = [periodic_crystal(0), periodic_crystal(1)]
    structures = os.path.join(tmp_path, "structures.traj")
    ase.io.write(structures, frames)
    results = _json_from_fresh_process(ASE_SCRIPT, [path, structures], str(tmp_path), "ASE")
    for atoms, result in zip(frames, results):
        forces, stress = _direct(model, [atoms])
        np.testing.assert_allclose(result["forces"], forces - forces.mean(axis=0), atol=1e-9)
        np.testing.assert_allclose(result["stress"], stress[0], atol=1e-9)


def test_fine_tuning_the_direct_heads():
    """``finetune.method: heads`` trains the direct heads with the energy heads; new energy
    targets are refused with a clear error (the direct heads cannot grow outputs yet)."""
    model = random_model("pet", DIRECT, torch.float64, generic=False)
    heads = model.head_parameter_names()
    assert any(name.startswith("direct.0.forces") for name in heads)
    assert not any(name.startswith("layers.0.transformer") for name in heads)
    info = model.dataset_info
    targets = dict(info.targets, **{"energy/pbe0": TargetInfo("energy/pbe0", "eV", forces=True)})
    with pytest.raises(MttError, match="direct force heads"):
        model.restart(DatasetInfo(info.length_unit, info.atomic_types, targets))
