"""Schedules, stopping, weight averaging, batching by atoms and the progress bar."""

import glob
import os
import pty
import subprocess
import sys

import ase
import ase.io
import numpy as np
import pytest
import torch
import yaml
from helpers import TINY_MODEL

from mtt.checkpoints import read_checkpoint
from mtt.cli import main
from mtt.training.schedule import Plateau

SMALL = dict(TINY_MODEL, max_radial=2, max_angular=1, num_neurons_per_layer=4)


def options(tmp_path, data_dir, **training):
    frames = ase.io.read(os.path.join(data_dir, "carbon_reduced_100.xyz"), ":20")
    ase.io.write(tmp_path / "carbon.xyz", frames)
    path = tmp_path / "options.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "architecture": {
                    "name": "soap_bpnn",
                    "model": SMALL,
                    "training": dict({"num_epochs": 3, "batch_size": 4}, **training),
                },
                "training_set": {
                    "systems": "carbon.xyz",
                    "targets": {"energy": {"forces": "force", "stress": False}},
                },
                "validation_set": 0.25,
            }
        )
    )
    return str(path)


def final_checkpoint(tmp_path):
    (path,) = glob.glob(str(tmp_path / "outputs" / "*" / "model.ckpt"))
    return read_checkpoint(path)


def test_early_stopping_stops_and_keeps_the_best_model(tmp_path, data_dir, monkeypatch, capsys):
    """With a learning rate too small to improve anything, training stops after
    ``early_stopping_patience`` epochs without improvement instead of running all epochs."""
    monkeypatch.chdir(tmp_path)
    path = options(
        tmp_path, data_dir, num_epochs=50, learning_rate=1e-12, early_stopping_patience=2
    )
    assert main(["train", path]) == 0
    assert "early stopping" in capsys.readouterr().out
    history = final_checkpoint(tmp_path)["trainer_state"]["history"]
    assert len(history) == 3


def test_weight_average_is_what_is_validated_and_exported(tmp_path, data_dir, monkeypatch):
    """With ``ema_decay`` the best model (used for export) holds the averaged weights, not
    the last iterate."""
    monkeypatch.chdir(tmp_path)
    assert main(["train", options(tmp_path, data_dir, ema_decay=0.5, learning_rate=0.01)]) == 0
    (path,) = glob.glob(str(tmp_path / "outputs" / "*" / "checkpoints" / "epoch_3.ckpt"))
    checkpoint = read_checkpoint(path)
    state = checkpoint["trainer_state"]
    best, last = checkpoint["best_model_state_dict"], checkpoint["model_state_dict"]
    if state["best_epoch"] == len(state["history"]):
        for name, value in state["ema"].items():
            assert torch.equal(best[name], value), name
    assert any(not torch.equal(best[n], last[n]) for n in state["ema"])


def test_an_average_too_slow_for_the_run_is_named(tmp_path, data_dir, monkeypatch, capsys):
    """ema_decay 0.999 over the 12 steps of this run exports weights 99 % untrained."""
    monkeypatch.chdir(tmp_path)
    assert main(["train", options(tmp_path, data_dir, ema_decay=0.999, num_epochs=3)]) == 0
    assert (
        "architecture.training.ema_decay is 0.999: after the 12 steps of this run the averaged "
        "weights, which are validated and exported, still hold 99% of the untrained initial "
        "weights; lower it to 0.8254 or less"
    ) in capsys.readouterr().out


def test_a_restart_takes_the_options_optimizer_settings_and_a_new_average(
    tmp_path, data_dir, monkeypatch, capsys
):
    """A restart brought back the checkpoint's weight decay over the options' (silently),
    and one that turned ema_decay on failed with an internal KeyError."""
    monkeypatch.chdir(tmp_path)
    first = options(tmp_path, data_dir, num_epochs=1, optimizer="adamw", checkpoint_interval=1)
    assert main(["train", first, "--output-dir", "first"]) == 0
    (checkpoint,) = glob.glob(str(tmp_path / "first" / "*" / "checkpoints" / "epoch_1.ckpt"))
    path = options(tmp_path, data_dir, num_epochs=2, optimizer="adamw", weight_decay=0.5)
    capsys.readouterr()
    assert main(["train", path, "--restart", checkpoint, "-o", "decay.pt"]) == 0
    out = capsys.readouterr().out
    assert "optimizer settings changed since the checkpoint: weight_decay 0.0 -> 0.5" in out
    groups = final_checkpoint(tmp_path)["trainer_state"]["optimizer"]["param_groups"]
    assert [group["weight_decay"] for group in groups] == [0.5] * len(groups)
    path = options(tmp_path, data_dir, num_epochs=2, optimizer="adamw", ema_decay=0.5)
    command = ["train", path, "--restart", checkpoint, "-o", "ema.pt", "--output-dir", "ema"]
    assert main(command) == 0
    assert "ema_decay is new on this restart" in capsys.readouterr().out


def test_the_validation_loss_does_not_depend_on_the_batching(data_dir):
    """The best-model and plateau metric was a mean of batch means: the same model on the
    same data gave a loss 9 % apart at batch sizes 1 and 4 (structures of 9, 6 and 3 atoms,
    forces labelled in some only); it is now each quantity's mean over the whole pass."""
    from mtt import architectures
    from mtt.data.dataset import dataset_from_atoms
    from mtt.data.targets import DatasetInfo
    from mtt.hypers import parse
    from mtt.options import DatasetOptions
    from mtt.training.trainer import _labelled_quantities

    frames = []
    ethanol = ase.io.read(os.path.join(data_dir, "ethanol_reduced_100.xyz"), ":12")
    for k, atoms in enumerate(ethanol):
        part = atoms[: [9, 6, 3][k % 3]].copy()
        part.info["energy"] = atoms.get_potential_energy() * len(part) / 9 + k
        if k % 4:
            part.arrays["forces"] = atoms.get_forces()[: len(part)]
        frames.append(part)
    targets = {"energy": {"unit": "kcal/mol", "forces": {"key": "forces"}}}
    parsed = parse(DatasetOptions, {"systems": "x", "targets": targets}).targets
    data = dataset_from_atoms(frames, parsed, "angstrom", "validation_set")
    architecture = architectures.load("soap_bpnn")
    torch.manual_seed(0)
    hypers = parse(architecture.__model__.__hypers__, SMALL, "architecture.model")
    info = DatasetInfo(data.length_unit, data.atomic_types, data.targets)
    model = architecture.__model__(hypers, info).to(torch.float64)
    trainer = architecture.__trainer__(parse(architecture.__trainer__.__hypers__, {}, "t"))
    trainer._fit_baseline(model, data, _labelled_quantities(model, data))
    losses = []
    for size in (1, 4, 12):
        trainer.hypers.batch_size = size
        losses.append(trainer.evaluate(model, data, torch.device("cpu"))["validation_set_loss"])
    assert losses == pytest.approx([losses[0]] * 3, rel=1e-10)


def test_a_restart_comparing_energies_otherwise_is_refused(tmp_path, data_dir, monkeypatch, capsys):
    """The energy scale is fitted per atom or per structure once: a restart that switched
    per_structure_targets weighed the energies ~N^2 differently without a word."""
    monkeypatch.chdir(tmp_path)
    first = options(tmp_path, data_dir, num_epochs=1, checkpoint_interval=1)
    assert main(["train", first, "--output-dir", "first"]) == 0
    (checkpoint,) = glob.glob(str(tmp_path / "first" / "*" / "checkpoints" / "epoch_1.ckpt"))
    path = options(tmp_path, data_dir, num_epochs=2, per_structure_targets=["energy"])
    capsys.readouterr()
    assert main(["train", path, "--restart", checkpoint, "-o", "again.pt"]) == 1
    assert (
        "option 'architecture.training.per_structure_targets' is ['energy'], but the run of "
        "this checkpoint fitted its loss's scales for []"
    ) in capsys.readouterr().err


def test_a_second_ctrl_c_waits_for_the_last_epochs_checkpoint(tmp_path, monkeypatch):
    """Written on the way out of an interrupted run, it was lost to a second Ctrl-C (with
    checkpoints every 100 epochs, every epoch of the run)."""
    import signal

    import mtt.training.trainer as trainer_module
    from mtt.training.hypers import TrainingHypers

    def impatient_write(checkpoint, path):
        os.kill(os.getpid(), signal.SIGINT)  # the user presses Ctrl-C again meanwhile
        with open(path, "w") as file:
            file.write("complete")

    monkeypatch.setattr(trainer_module, "save_checkpoint", impatient_write)
    trainer = trainer_module.Trainer(TrainingHypers())
    trainer.run_dir = str(tmp_path)
    os.makedirs(tmp_path / "checkpoints")
    trainer._unsaved = (3, {"epoch": 3})
    trainer._save_last_epoch()
    assert (tmp_path / "checkpoints" / "epoch_3.ckpt").read_text() == "complete"


def test_restarting_from_a_runs_model_ckpt_says_it_mixes_two_epochs(caplog):
    """model.ckpt holds the best epoch's weights with the last epoch's optimizer: a restart
    from it went on from that mix without a word."""
    from mtt.training.hypers import TrainingHypers
    from mtt.training.trainer import Trainer

    def checkpoint(**marks):
        state = {"epoch": 5, "seed": 0, "history": [], "best_epoch": 3, "best_metric": 1.0}
        return {
            "trainer_checkpoint_version": Trainer.__checkpoint_version__,
            "trainer_state": dict(state, **marks),
            "best_model_state_dict": {},
        }

    with caplog.at_level("WARNING", logger="mtt"):
        Trainer.load_checkpoint(checkpoint(), TrainingHypers(), "restart")
        assert caplog.messages == []
        trainer = Trainer.load_checkpoint(
            checkpoint(best_weights=True), TrainingHypers(), "restart"
        )
    assert caplog.messages[0].startswith(
        "this checkpoint holds the run's best weights (epoch 3) with the optimizer of its last "
        "epoch (5)"
    )
    assert "best_weights" not in trainer.state  # not carried into the run's checkpoints


def test_plateau_lowers_the_learning_rate_after_patience():
    """Reduce-on-plateau multiplies the rate by its factor once the loss stalls."""
    plateau = Plateau(factor=0.5, patience=1)
    for metric in (1.0, 0.9, 0.9, 0.9, 0.9):
        plateau.step(metric)
    assert plateau.scale == 0.5 and plateau.stale == 3


def test_batches_respect_the_atom_budget(data_dir):
    """``max_atoms_per_batch`` caps atoms per batch; a structure is never split or dropped."""
    from mtt.data.dataset import dataset_from_atoms
    from mtt.options import EnergyTargetOptions
    from mtt.training.batches import PreparedSet

    frames = ase.io.read(os.path.join(data_dir, "ethanol_reduced_100.xyz"), ":10")
    shifted = frames[4].copy()
    shifted.positions += 20.0
    frames[3] = frames[3] + shifted  # an 18-atom structure among 9-atom ones
    dataset = dataset_from_atoms(frames, {"energy": EnergyTargetOptions(unit="kcal/mol")})
    prepared = PreparedSet(
        dataset,
        type("M", (), {"atoms_to_data": lambda s, a: len(a), "collate_fn": lambda s, d: list(d)})(),
        ["energy"],
    )
    batches = [b for b, _ in prepared.batches(list(range(10)), 8, max_atoms=20)]
    assert sum(len(b) for b in batches) == 10
    assert all(sum(b) <= 20 or len(b) == 1 for b in batches)


def test_a_cap_below_a_structure_size_is_reported(caplog):
    """A structure larger than ``max_atoms_per_batch`` trains alone: the log says so, with
    how many and the largest, so a user can raise the cap; nothing when all fit."""
    import logging

    from mtt.training.trainer import _warn_oversized

    with caplog.at_level(logging.WARNING, logger="mtt"):
        _warn_oversized([9, 28, 9, 30], 20, main=True)
        _warn_oversized([9, 18], 20, main=True)
        _warn_oversized([9, 18], None, main=True)
    [record] = caplog.records
    assert "max_atoms_per_batch is 20" in record.getMessage()
    assert "2 training structures" in record.getMessage() and "up to 30" in record.getMessage()


def test_an_atom_cap_that_batch_size_keeps_out_of_reach_is_reported(caplog):
    """metatrain ignores batch_size when max_atoms_per_batch is set; here both apply, so a
    metatrain file's cap of 1000 atoms with the default 8 structures of 64 atoms gave
    batches of 512 atoms, unmentioned. Nothing when the cap can bind."""
    import logging

    from mtt.training.trainer import _warn_batch_size_binds

    with caplog.at_level(logging.WARNING, logger="mtt"):
        _warn_batch_size_binds([64, 63, 64], 8, 1000)
        _warn_batch_size_binds([64, 63, 64], 8, 300)  # 8 x 64 > 300: the cap binds
        _warn_batch_size_binds([64, 63, 64], 8, None)
    [record] = caplog.records
    assert record.getMessage() == (
        "architecture.training.max_atoms_per_batch is 1000, but batch_size 8 structures of ~64 "
        "atoms make ~512: batches stop at batch_size (metatrain ignores batch_size when "
        "max_atoms_per_batch is set, mtt applies both); raise batch_size (e.g. to 15) to fill "
        "batches up to the atom cap"
    )


def test_progress_bar_in_a_terminal_and_plain_lines_otherwise(tmp_path, data_dir):
    """In a pseudo-terminal a progress bar with percentage and ETA is drawn; without a
    terminal only the per-epoch lines appear (with errors in meV for eV data)."""
    path = options(tmp_path, data_dir, num_epochs=2)
    command = [sys.executable, "-m", "mtt", "train", path, "-o", "a.pt"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=follower, env=env, cwd=tmp_path
    )
    os.close(follower)
    output = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:
            break
        if not chunk:
            break
        output += chunk
    assert process.wait() == 0
    assert b"ETA" in output and b"%" in output
    plain = subprocess.run(
        command[:-1] + ["b.pt"], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert plain.returncode == 0 and "ETA" not in plain.stderr
    assert "meV/atom" in plain.stdout


def _trajectory(spread_per_atom: float, force_rms: float, n_frames: int = 40):
    """Frames of one 9-atom molecule with per-atom energies spread by ``spread_per_atom`` and
    forces of RMS ``force_rms`` (random numbers: only their statistics matter here)."""
    rng = np.random.default_rng(0)
    frames = []
    deviations = rng.standard_normal(n_frames)
    deviations = (deviations - deviations.mean()) / deviations.std()
    forces = rng.standard_normal((n_frames, 9, 3))
    forces *= force_rms / np.sqrt(np.mean(forces**2))
    for k in range(n_frames):
        atoms = ase.Atoms("C2H6O", positions=rng.random((9, 3)) * 3)
        atoms.info["energy"] = -100.0 + 9 * spread_per_atom * deviations[k]
        atoms.arrays["forces"] = forces[k]
        frames.append(atoms)
    return frames


@pytest.mark.parametrize(
    "spread, force_rms, unit, forces, expected",
    [
        # one molecule's trajectory: 0.01 eV/atom against 1 eV/Å forces -> 0.1 Å x 1 eV/Å
        (0.01, 1.0, "angstrom", True, 0.1),
        # the same in bohr: 0.1 Å is 0.189 bohr, times 1 eV/bohr
        (0.01, 1.0, "bohr", True, 0.1 * 1.8897261),
        # varied data (bulk phases, many molecules) keep their own spread
        (0.5, 1.0, "angstrom", True, 0.5),
        # without forces the energies' spread is all there is
        (0.01, 1.0, "angstrom", False, 0.01),
    ],
)
def test_energy_scale_is_at_least_a_tenth_of_an_angstrom_of_force(
    spread, force_rms, unit, forces, expected
):
    """The loss's energy scale: the spread of per-atom energies, but not below the forces' RMS
    times 0.1 Å where forces are learnt. Scaled by 0.01 eV/atom alone, pet learnt no forces
    of aspirin's trajectory in 20 epochs (the energy error of imperfect forces cost more than
    missing them); at 0.1 Å it learns them."""
    from mtt.data.dataset import dataset_from_atoms
    from mtt.options import TargetOptions
    from mtt.training.composition import fit_baseline, quantity_scales

    frames = _trajectory(spread, force_rms)
    dataset = dataset_from_atoms(
        frames, {"energy": TargetOptions(unit="eV", forces=forces, stress=False)}, unit
    )
    quantities = ["energy", "energy/forces"] if forces else ["energy"]
    _, fitted_spread = fit_baseline(dataset, "energy", [1, 6, 8], {}, "where")
    assert fitted_spread == pytest.approx(spread)
    scales = quantity_scales(dataset, quantities, {"energy": fitted_spread}, set())
    assert scales["energy"] == pytest.approx(expected, rel=1e-6)
    if forces:
        assert scales["energy/forces"] == pytest.approx(force_rms)
    # per-structure energies: the same scale times the atoms of a structure
    per_structure = quantity_scales(dataset, quantities, {"energy": fitted_spread}, {"energy"})
    assert per_structure["energy"] == pytest.approx(9 * expected, rel=1e-6)


def test_exported_outputs_are_described_even_without_a_description_option():
    """metatomic warns at export and at every load about output variants without a
    description ('energy' defines 2 output variants and 'energy' has an empty description):
    outputs are described from their names unless the options describe them."""
    import architectures
    from mtt.data.targets import DatasetInfo, TargetInfo
    from mtt.hypers import parse

    targets = {
        "energy": TargetInfo("energy", "eV", forces=True),
        "energy/pbe0": TargetInfo("energy/pbe0", "eV", description="PBE0, def2-TZVP"),
        "mtt::mu": TargetInfo("mtt::mu", "D", kind="generic", rank=1),
    }
    model_class = architectures.load("soap_bpnn").__model__
    hypers = parse(model_class.__hypers__, TINY_MODEL, "architecture.model")
    model = model_class(hypers, DatasetInfo("angstrom", [1, 6], targets))
    described = {name: output.description for name, output in model.supported_outputs().items()}
    assert described == {
        "energy": "total energy",
        "energy/pbe0": "PBE0, def2-TZVP",
        "mtt::mu": "learnt target mtt::mu",
    }


def test_composition_baseline_line_follows_per_structure_targets(
    tmp_path, data_dir, monkeypatch, capsys
):
    """With ``per_structure_targets`` the final report's energy errors are per structure, and
    so is the baseline line next to them (it stayed per atom, so the model looked worse than
    the baseline): for 4-atom cells, exactly 4x the per-atom value, in eV, not eV/atom."""
    import re

    monkeypatch.chdir(tmp_path)
    found = {}
    for per_structure in ([], ["energy"]):
        path = options(tmp_path, data_dir, num_epochs=1, per_structure_targets=per_structure)
        assert main(["train", path, "-o", f"m{len(per_structure)}.pt"]) == 0
        out = capsys.readouterr().out
        (match,) = re.findall(
            r"training_set: energy RMSE of the composition baseline alone = (\S+) (\S+)", out
        )
        found[bool(per_structure)] = (float(match[0]), match[1])
    assert found[False][1] == "eV/atom" and found[True][1] == "eV"
    assert found[True][0] == pytest.approx(4 * found[False][0], rel=1e-4)


def test_metric_units_of_direct_heads_and_variants():
    """The final report's units come from the quantity's target, direct heads included (it
    printed '/angstrom' without the energy unit for energy/direct_forces)."""
    from types import SimpleNamespace

    from mtt.data.targets import DatasetInfo, TargetInfo
    from mtt.training.trainer import quantity_unit

    info = DatasetInfo(
        "angstrom",
        [1],
        {
            "energy": TargetInfo("energy", "meV"),
            "energy/pbe0": TargetInfo("energy/pbe0", "eV"),
            "mtt::mu": TargetInfo("mtt::mu", "D", kind="generic"),
        },
    )
    model = SimpleNamespace(dataset_info=info)
    expected = {
        "energy_per_atom": "meV/atom",
        "energy/forces": "meV/angstrom",
        "energy/direct_forces": "meV/angstrom",
        "energy/direct_stress": "meV/angstrom^3",
        "energy/pbe0/direct_forces": "eV/angstrom",
        "energy/pbe0_per_atom": "eV/atom",
        "energy": "meV",
        "mtt::mu": "D",
    }
    assert {q: quantity_unit(q, model) for q in expected} == expected


def test_float32_energy_rounding_is_warned_about(tmp_path, data_dir, monkeypatch, capsys):
    """Total energies near a million eV (all-electron codes, heavy elements) are rounded by
    float32 in steps of 0.06-0.12 eV: the exported model's energy changed in 0.0625 eV stairs
    along a smooth displacement, without a word. The dry run says so, naming a structure;
    not for the usual magnitudes, nor in float64."""
    from mtt.data.dataset import dataset_from_atoms
    from mtt.options import EnergyTargetOptions
    from mtt.training.composition import warn_float32_energies

    monkeypatch.chdir(tmp_path)
    path = options(tmp_path, data_dir)
    frames = ase.io.read("carbon.xyz", ":")
    shifted = []
    for atoms in frames:
        copy = atoms.copy()
        copy.info["energy"] = atoms.get_potential_energy() - 1.0e6
        copy.arrays["force"] = atoms.arrays["force"]
        shifted.append(copy)
    ase.io.write("carbon.xyz", shifted)
    assert main(["train", path, "--dry-run"]) == 0
    (warning,) = [line for line in capsys.readouterr().out.splitlines() if "float32" in line]
    # 2^-4 eV steps at 1e6 eV, per 4 atoms
    assert warning.startswith(
        "training_set: float32 rounds the energies 'energy' in steps of up to 16 meV/atom "
        "(structure "
    )
    assert warning.endswith(
        "train with base_precision: 64, or subtract reference energies from the labels "
        "(forces are unaffected)"
    )
    targets = {"energy": EnergyTargetOptions(forces="force", stress=False)}
    warn_float32_energies(dataset_from_atoms(frames, targets), torch.float32)
    warn_float32_energies(dataset_from_atoms(shifted, targets), torch.float64)
    assert "float32" not in capsys.readouterr().out


def test_train_csv_survives_a_run_stopped_while_writing_it(tmp_path, monkeypatch):
    """train.csv was rewritten in place every epoch: a Ctrl-C during the write left it empty
    (seen in 2 of 24 interrupted runs), and 'mtt plot' had no epochs to draw. Now the
    previous file stays whole until the new one replaces it."""
    import csv

    from mtt.training.trainer import Trainer

    trainer = object.__new__(Trainer)
    trainer.run_dir = str(tmp_path)
    trainer.history = [{"epoch": 1, "train_loss": 0.5}]
    trainer._write_csv()
    before = (tmp_path / "train.csv").read_text()
    trainer.history.append({"epoch": 2, "train_loss": 0.4})

    def interrupted(self, rows):
        raise KeyboardInterrupt

    monkeypatch.setattr(csv.DictWriter, "writerows", interrupted)
    with pytest.raises(KeyboardInterrupt):
        trainer._write_csv()
    assert (tmp_path / "train.csv").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.csv"]  # no temporary left


def test_an_element_in_a_single_structure_is_warned_about(tmp_path, data_dir, monkeypatch, capsys):
    """Its reference energy is fitted from that one structure's energy (which it then fits
    exactly, error included): said, with the two fixes; not said for the usual data."""
    monkeypatch.chdir(tmp_path)
    path = options(tmp_path, data_dir)
    assert main(["train", path, "--dry-run"]) == 0
    assert "is in only one structure" not in capsys.readouterr().out
    frames = ase.io.read("carbon.xyz", ":")
    frames[0].numbers[0] = 14  # one silicon atom, in one structure
    ase.io.write("carbon.xyz", frames)
    ase.io.write("val.xyz", frames[15:])
    assert main(["train", path, "--dry-run", "-r", "validation_set=val.xyz"]) == 0
    out = capsys.readouterr().out
    assert (
        "training_set: Si is in only one structure labelled with 'energy', whose energy alone "
        "fixes its reference energy; add structures with Si, or set it in "
        "'architecture.training.fixed_composition_weights.energy'"
    ) in out


def test_compositions_that_cannot_tell_elements_apart(tmp_path, data_dir, monkeypatch, capsys):
    """Elements always in one ratio leave their reference energies' split to a least-norm
    fit: energies of other compositions are off by a constant per atom. A note for a single
    composition, a warning when the compositions vary (here SiC3 and Si2C6); nothing for
    one element."""
    from ase.calculators.singlepoint import SinglePointCalculator

    monkeypatch.chdir(tmp_path)
    path = options(tmp_path, data_dir)
    assert main(["train", path, "--dry-run"]) == 0
    assert "undetermined" not in capsys.readouterr().out
    frames = ase.io.read("carbon.xyz", ":")
    for atoms in frames:
        energy = atoms.get_potential_energy()
        atoms.numbers[0] = 14
        atoms.calc = SinglePointCalculator(atoms, energy=energy)
    ase.io.write("carbon.xyz", frames)
    assert main(["train", path, "--dry-run"]) == 0
    said = (
        "training_set: the structures labelled with 'energy' are all in {}, which leaves the "
        "split of the energy between C, Si undetermined: energies of other compositions will "
        "be off by a constant per atom; add structures of other compositions, or set the "
        "reference energies in 'architecture.training.fixed_composition_weights.energy'"
    )
    assert said.format("one composition") in capsys.readouterr().out
    for k in range(10, 20):
        energy = frames[k].get_potential_energy()
        frames[k] = frames[k].repeat((2, 1, 1))
        frames[k].calc = SinglePointCalculator(frames[k], energy=2 * energy)
    ase.io.write("carbon.xyz", frames)
    assert main(["train", path, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert said.format("compositions in one ratio of the elements") in out


def test_plateau_rate_applies_from_the_next_epoch(tmp_path, data_dir, monkeypatch):
    """torch's ReduceLROnPlateau rule: after the epoch that exhausts the patience, the next
    epoch runs at the lowered rate. The rate was lowered one step late (LambdaLR had already
    computed the next step's), so train.csv showed it an epoch late."""
    monkeypatch.chdir(tmp_path)
    path = options(
        tmp_path,
        data_dir,
        num_epochs=5,
        learning_rate=1e-12,
        scheduler="plateau",
        plateau_patience=1,
        plateau_factor=0.5,
    )
    assert main(["train", path]) == 0
    history = final_checkpoint(tmp_path)["trainer_state"]["history"]
    # epoch 1 sets the best, 2 and 3 do not improve: 3 exhausts a patience of 1
    rates = [row["learning_rate"] / 1e-12 for row in history]
    assert rates == pytest.approx([1.0, 1.0, 1.0, 0.5, 0.5])
