"""pet against the shared architecture suite, plus what only PET needs: smoothness when a
neighbour crosses the cutoff, the range it declares to engines, and learning rotational
invariance from randomly rotated training data (with exact restarts)."""

import os

import ase
import ase.build
import ase.io
import numpy as np
import pytest
import torch

from mtt.checkpoints import read_checkpoint
from mtt.data.dataset import dataset_from_atoms
from mtt.data.graph import atoms_to_graph, collate_graphs
from mtt.data.targets import DatasetInfo
from mtt.hypers import parse
from mtt.options import EnergyTargetOptions
from mtt.testing import (
    ArchitectureTests,
    energy_with_hydrogen_at,
    random_model,
)
from mtt.testing._suite import random_rotation, rotated

from ..hypers import ModelHypers, TrainerHypers
from ..model import Pet
from ..trainer import Trainer

HYPERS = {
    "cutoff": 3.0,
    "d_pet": 16,
    "num_heads": 2,
    "num_attention_layers": 1,
    "num_gnn_layers": 2,
    "d_feedforward": 32,
}
ETHANOL = os.path.join(
    os.path.dirname(__file__), "..", "..", "..", "examples", "data", "ethanol_reduced_100.xyz"
)


class TestPet(ArchitectureTests):
    architecture = "pet"
    model_hypers = HYPERS
    rotation_invariant = False  # learnt from rotated data, see test_random_rotations_...
    generic_targets = False  # vectors and tensors need rotation-invariant features
    # a float32 model trained 2 epochs on 12 ethanol frames (kcal/mol); regenerate with such
    # a run, copying outputs/<run>/checkpoints/epoch_2.ckpt, only when the format changes
    golden_energies = {"model-v1.ckpt": -97091.5390625}


def test_energy_is_smooth_when_a_neighbour_crosses_the_cutoff():
    """Just beyond the cutoff the H atom contributes exactly nothing (the energy is that of
    the far-apart atoms); just inside, its effect vanishes like the square of the distance
    to the cutoff (the cutoff function has zero slope there), so energies and forces are
    continuous. A failure means MD would see jumps whenever a neighbour enters the cutoff."""
    model = random_model("pet", HYPERS, torch.float64, generic=False)
    cutoff = model.cutoff
    far = energy_with_hydrogen_at(model, 4 * cutoff)
    for delta in (1e-3, 1e-4):
        assert energy_with_hydrogen_at(model, cutoff + delta) == pytest.approx(far, abs=1e-10)
    effects = [abs(energy_with_hydrogen_at(model, cutoff - d) - far) for d in (1e-3, 1e-4)]
    assert 0 < effects[1] < 1e-6
    assert effects[0] / effects[1] == pytest.approx(100, rel=0.05)


def test_interaction_range_covers_every_message_passing_layer():
    """Engines must provide neighbours up to cutoff x layers (LAMMPS ghost atoms): one
    cutoff per message-passing layer."""
    hypers = dict(HYPERS, num_gnn_layers=3)
    model = random_model("pet", hypers, torch.float64, generic=False)
    assert model.export().capabilities().interaction_range == pytest.approx(9.0)


def _train(frames, random_rotations: bool, num_epochs: int, run_dir: str, every: int = 100):
    """A tiny PET trained on ``frames`` with the shared loop and the pet trainer, writing a
    checkpoint ``every`` epochs."""
    torch.manual_seed(0)
    dataset = _dataset(frames)
    info = DatasetInfo(dataset.length_unit, dataset.atomic_types, dataset.targets)
    model = Pet(parse(ModelHypers, HYPERS), info)
    hypers = {
        "num_epochs": num_epochs,
        "batch_size": 2,
        "learning_rate": 3e-3,
        "random_rotations": random_rotations,
        "loss": {"weights": {"energy": 0.1}},
        "checkpoint_interval": every,
        "log_interval": 1000,
        "progress_bar": False,
    }
    trainer = Trainer(parse(TrainerHypers, hypers, "architecture.training"))
    trainer.train(model, torch.float64, [torch.device("cpu")], [dataset], [], run_dir)
    return model.eval()


def _dataset(frames):
    targets = {"energy": EnergyTargetOptions(unit="kcal/mol")}
    return dataset_from_atoms(frames, targets, name="training_set")


def _force_rotation_error(model, frames) -> float:
    """How far forces are from rotating with the structure: RMS of F(R x) - R F(x) over
    random rotations, relative to the RMS of the forces themselves."""
    errors, sizes = [], []
    for atoms in frames:
        for seed in range(6):
            rotation = random_rotation(seed)
            pair = [atoms, rotated(atoms, rotation)]
            graph = collate_graphs([atoms_to_graph(a, model.cutoff, torch.float64) for a in pair])
            forces = model.predict(graph, ["energy/forces"], training=False)["energy/forces"]
            forces = forces.detach().numpy().reshape(2, len(atoms), 3)
            errors.append(forces[1] - forces[0] @ rotation.T)
            sizes.append(forces[0])
    return float(np.sqrt(np.mean(np.square(errors))) / np.sqrt(np.mean(np.square(sizes))))


def test_random_rotations_teach_rotational_invariance(tmp_path):
    """Trained on the same few ethanol frames, a PET that saw them randomly rotated
    (``random_rotations``, the default) predicts forces that rotate with the structure far
    better than one trained on the fixed orientations. A failure means the augmentation
    hook does not reach the training batches, or rotates labels inconsistently."""
    frames = ase.io.read(ETHANOL, ":6")
    errors = {}
    for augment in (False, True):
        model = _train(frames, augment, 40, str(tmp_path / str(augment)))
        errors[augment] = _force_rotation_error(model, frames)
    assert errors[True] < 0.5 * errors[False]


def test_restart_with_random_rotations_is_exact(tmp_path):
    """Restarting from the checkpoint of epoch 1 ends with exactly the weights of the
    uninterrupted run: the rotations are drawn from a generator seeded by the epoch, not
    from global random state."""
    frames = ase.io.read(ETHANOL, ":4")
    straight = _train(frames, True, 2, str(tmp_path / "straight"), every=1)
    checkpoint = read_checkpoint(str(tmp_path / "straight" / "checkpoints" / "epoch_1.ckpt"))
    model = Pet.load_checkpoint(checkpoint, "restart")
    hypers = parse(TrainerHypers, checkpoint["train_hypers"])
    trainer = Trainer.load_checkpoint(checkpoint, hypers, "restart")
    torch.manual_seed(1234)  # global random state must not matter
    run_dir = str(tmp_path / "resumed")
    trainer.train(model, torch.float64, [torch.device("cpu")], [_dataset(frames)], [], run_dir)
    for name, value in straight.state_dict().items():
        assert torch.equal(value, model.state_dict()[name]), name
