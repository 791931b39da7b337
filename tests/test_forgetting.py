"""Forgetting control when fine-tuning: distillation, L2-SP and the old-task report.

A tiny model is pretrained on 100 xTB frames of ethanol (eV; the old task) and fine-tuned on 16
DFT frames (kcal/mol, another level of theory: reference energies shift by hundreds of eV and
forces differ by about 0.35 eV/Å). Its error on 50 held-out xTB frames is the old-task error.
"""

import glob
import json
import os

import ase.io
import numpy as np
import pytest
import torch
import yaml

from mtt.checkpoints import read_checkpoint
from mtt.cli import main
from mtt.evaluate import load_model, predict

DATA = os.path.join(os.path.dirname(__file__), "..", "examples", "data")
MODEL = {
    "cutoff": 4.0,
    "max_radial": 3,
    "max_angular": 2,
    "num_hidden_layers": 2,
    "num_neurons_per_layer": 8,
}
#: long enough to forget: 40 epochs on 16 frames (4 more for validation)
FINETUNE = {"num_epochs": 40, "batch_size": 4, "learning_rate": 0.002, "progress_bar": False}
DISTILLATION = {"weight": 10.0, "displacement": 0.05}


def options(path, training, train_file, unit, model=None, seed=0):
    raw = {
        "architecture": {"name": "soap_bpnn", "training": training},
        "training_set": {"systems": train_file, "targets": {"energy": {"unit": unit}}},
        "validation_set": 0.2,
        "seed": seed,
    }
    if model is not None:
        raw["architecture"]["model"] = model
    path.write_text(yaml.safe_dump(raw))
    return str(path)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """The old task: 100 xTB frames for pretraining, 50 others to measure forgetting."""
    root = tmp_path_factory.mktemp("old_task")
    xtb = ase.io.read(os.path.join(DATA, "ethanol_xtb_200.xyz"), ":")
    dft = ase.io.read(os.path.join(DATA, "ethanol_reduced_100.xyz"), ":")
    ase.io.write(root / "xtb.xyz", xtb[:100])
    ase.io.write(root / "old_task.xyz", xtb[150:])
    ase.io.write(root / "dft.xyz", dft[:20])
    training = {"num_epochs": 40, "batch_size": 8, "learning_rate": 0.005, "progress_bar": False}
    path = options(root / "pre.yaml", training, "xtb.xyz", "eV", MODEL)
    cwd = os.getcwd()
    os.chdir(root)
    try:
        assert main(["train", path, "-o", "pre.pt"]) == 0
    finally:
        os.chdir(cwd)
    (checkpoint,) = glob.glob(str(root / "outputs" / "*" / "model.ckpt"))
    return root, checkpoint


def finetune(pretrained, directory, extra=None, training=None, restart=None):
    """Fine-tune on the DFT frames with the old-task report on; the run directory."""
    root, checkpoint = pretrained
    os.makedirs(directory, exist_ok=True)
    section = {"read_from": checkpoint, "old_task_set": str(root / "old_task.xyz"), **(extra or {})}
    training = dict(FINETUNE, **(training or {}), finetune=section)
    path = options(directory / "ft.yaml", training, str(root / "dft.xyz"), "kcal/mol")
    command = ["train", path, "-o", str(directory / "ft.pt"), "--force"]
    command += ["--restart", restart] if restart else []
    cwd = os.getcwd()
    os.chdir(directory)
    try:
        assert main(command) == 0
    finally:
        os.chdir(cwd)
    return sorted(glob.glob(str(directory / "outputs" / "*")))[-1]


def report(run_dir):
    with open(os.path.join(run_dir, "forgetting.json")) as file:
        return json.load(file)


def force_rmse(model_path, frames):
    predicted = predict(load_model(str(model_path)), frames, "energy", "angstrom", "eV")
    errors = np.concatenate([p["forces"] - a.get_forces() for p, a in zip(predicted, frames)])
    return float(np.sqrt(np.mean(errors**2)))


@pytest.fixture(scope="module")
def runs(pretrained, tmp_path_factory):
    """Plain full fine-tuning, and with distillation or L2-SP: same epochs and data."""
    return {
        "full": finetune(pretrained, tmp_path_factory.mktemp("full")),
        "distillation": finetune(
            pretrained, tmp_path_factory.mktemp("distilled"), {"distillation": DISTILLATION}
        ),
        "l2sp": finetune(pretrained, tmp_path_factory.mktemp("l2sp"), {"l2sp_weight": 1000.0}),
    }


def test_regularised_finetuning_keeps_the_old_task_and_plain_finetuning_forgets(runs):
    """Old-task force error over the pretrained model's: with distillation or L2-SP it stays
    below 2, plain fine-tuning (same data, same epochs) goes beyond (fine-tuning seeds 0-4
    gave 1.20-1.71 with distillation, 1.18-1.30 with L2-SP, 2.83-3.20 without; before the
    loss's energy scale followed the forces, which learns the new forces harder, 1.01-1.20,
    1.01-1.06 and 1.77-2.21)."""
    factors = {
        name: report(run_dir)["old_task"]["energy/forces_rmse"]["factor"]
        for name, run_dir in runs.items()
    }
    assert max(factors["distillation"], factors["l2sp"]) < 2.0 < factors["full"], factors


def test_old_task_report_has_the_errors_of_both_models(pretrained, runs):
    """``forgetting.json`` holds the pretrained and fine-tuned models' errors on the old task
    (equal to what ``mtt eval`` would say of the exported models) and the drift."""
    root, _ = pretrained
    old_task = ase.io.read(root / "old_task.xyz", ":")
    run_dir = runs["full"]
    data = report(run_dir)
    forces = data["old_task"]["energy/forces_rmse"]
    assert forces["before"] == pytest.approx(force_rmse(root / "pre.pt", old_task), rel=1e-4)
    assert forces["after"] == pytest.approx(
        force_rmse(os.path.join(run_dir, "model.pt"), old_task), rel=1e-4
    )
    assert forces["factor"] == pytest.approx(forces["after"] / forces["before"])
    assert 0.05 < forces["before"] < 0.5 and data["units"]["energy/forces_rmse"] == "eV/angstrom"
    # the level of theory changed: raw energies are off by the shift of the reference energies
    energy = data["old_task"]["energy_per_atom_rmse"]
    refitted = data["old_task"]["energy_per_atom_rmse_refitted_references"]
    assert energy["after"] > 10.0 and refitted["after"] < 0.1
    assert data["drift"]["energy/forces_rmse"] > 0.0 and data["old_task"]["structures"] == 50


def test_distillation_restarts_exactly(pretrained, tmp_path):
    """A distilled run interrupted after epoch 2 and restarted ends bitwise like an
    uninterrupted one: the perturbed copies depend only on the seed and the epoch."""
    training = {"num_epochs": 4, "checkpoint_interval": 2}
    section = {"distillation": {"weight": 1.0, "displacement": 0.1, "every": 2}}
    whole = finetune(pretrained, tmp_path / "whole", section, training)
    halfway = os.path.join(whole, "checkpoints", "epoch_2.ckpt")
    resumed = finetune(pretrained, tmp_path / "resumed", section, training, restart=halfway)
    plain = finetune(pretrained, tmp_path / "plain", None, training)
    states = [read_checkpoint(os.path.join(d, "model.ckpt")) for d in (whole, resumed, plain)]
    for name, value in states[0]["model_state_dict"].items():
        assert torch.equal(value, states[1]["model_state_dict"][name]), name
    assert any(
        not torch.equal(value, states[2]["model_state_dict"][name])
        for name, value in states[0]["model_state_dict"].items()
    ), "distillation changed nothing"


def _prepared_distillation(pretrained, tmp_path, num_epochs):
    """Options of a fine-tuning with distillation on the DFT frames, and the prepared run
    (model, trainer, data), before training."""
    from mtt import api

    root, checkpoint = pretrained
    section = {"read_from": checkpoint, "distillation": DISTILLATION}
    path = options(
        tmp_path / "ft.yaml",
        dict(FINETUNE, num_epochs=num_epochs, finetune=section),
        str(root / "dft.xyz"),
        "kcal/mol",
    )
    settings = api.validate_options(api.read_options(path))
    return settings, api._prepare(settings, str(tmp_path), None, None)


def test_teacher_is_frozen_and_outside_the_optimizer(pretrained, tmp_path, monkeypatch):
    """The teacher is the pretrained checkpoint's best model: no parameter of it is given to
    the optimizer or requires a gradient, and training does not change it."""
    from mtt import api

    _, checkpoint = pretrained
    settings, run = _prepared_distillation(pretrained, tmp_path, 2)
    trainer = run.trainer
    optimizers = []
    make = trainer.make_optimizer
    monkeypatch.setattr(
        trainer, "make_optimizer", lambda m: optimizers.append(make(m)) or optimizers[-1]
    )
    api._forgetting_report(settings, str(tmp_path), run)
    trainer.train(run.model, run.dtype, [run.device], [run.sets[0]], [run.sets[1]], str(tmp_path))
    teacher = {id(p) for p in trainer.teacher.parameters()}
    optimized = {id(p) for group in optimizers[0].param_groups for p in group["params"]}
    assert teacher and optimized and not teacher & optimized
    assert not any(p.requires_grad for p in trainer.teacher.parameters())
    pretrained_state = read_checkpoint(checkpoint)["best_model_state_dict"]
    for name, value in trainer.teacher.state_dict().items():
        assert torch.equal(value, pretrained_state[name].to(value.dtype)), name
    trained = run.model.state_dict()
    assert any(
        not torch.equal(trained[n], v)
        for n, v in trainer.teacher.state_dict().items()
        if "networks" in n
    )


def test_distillation_scales_follow_the_loss_rule(pretrained, tmp_path):
    """Distillation divides the teacher's energies by their spread, but, as the loss does, by
    no less than the teacher's force RMS times 0.1 Å (on these ethanol frames its per-atom
    energies spread by 0.024 eV against forces of 1.07 eV/Å)."""
    from mtt import api

    settings, run = _prepared_distillation(pretrained, tmp_path, 1)
    api._forgetting_report(settings, str(tmp_path), run)
    scales = run.trainer.distillation.scales
    assert scales["energy/forces"] > 0.3  # eV/Å, the teacher's on the DFT frames
    assert scales["energy"] == pytest.approx(0.1 * scales["energy/forces"])


def test_an_old_task_set_in_the_wrong_unit_is_named_by_the_dry_run(pretrained, tmp_path, capsys):
    """The old task's xTB labels are in eV; declared as kcal/mol (converted to eV by 1/23)
    their forces spread 23 times less than the pretrained model's: the dry run says so,
    where its forgetting report would just show large errors."""
    root, checkpoint = pretrained
    old = {"systems": str(root / "old_task.xyz"), "targets": {"energy": {"unit": "kcal/mol"}}}
    for section, warned in ((str(root / "old_task.xyz"), False), (old, True)):
        finetune = {"read_from": checkpoint, "old_task_set": section}
        training = dict(FINETUNE, finetune=finetune)
        path = options(tmp_path / "ft.yaml", training, str(root / "dft.xyz"), "kcal/mol")
        capsys.readouterr()
        assert main(["train", path, "--dry-run"]) == 0
        out = capsys.readouterr().out
        assert ("old_task_set: energy/forces: the labels spread" in out) == warned, out[-3000:]


def test_l2sp_with_lora_penalises_the_adapters_weight_updates():
    """With lora, L2-SP had no effect (the adapters are new parameters, absent from the
    pretrained model), though the foundation-models page used it so: it now penalises each
    adapter's update ``scaling * B A`` (what it adds to a pretrained weight)."""
    from types import SimpleNamespace

    from mtt.lora import LoRALinear, add_adapters
    from mtt.testing import random_model
    from mtt.training.trainer import Trainer

    model = random_model(
        "soap_bpnn", {"cutoff": 3.0, "max_radial": 2, "max_angular": 1}, torch.float64
    )
    reference = {name: value.detach().clone() for name, value in model.named_parameters()}
    add_adapters(model, 2, 4.0, ["*"])
    trainer = object.__new__(Trainer)
    trainer.hypers = SimpleNamespace(finetune=SimpleNamespace(l2sp_weight=3.0))
    trainer.reference_weights = reference
    assert float(trainer._l2sp(model).detach()) == 0.0  # B starts at zero: the pretrained model
    expected = 0.0
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, LoRALinear):
                module.lora_b.normal_()
                expected += float(((module.scaling * module.lora_b @ module.lora_a) ** 2).sum())
    assert expected > 0
    assert float(trainer._l2sp(model).detach()) == pytest.approx(3.0 * expected, rel=1e-12)
    # an output layer grown for new targets has no pretrained value: left out, as in full
    # fine-tuning (its adapter was pulled to zero, and the new target barely learnt)
    grown = "networks.0.4"
    layer = dict(model.named_modules())[grown]
    reference[f"{grown}.weight"] = reference[f"{grown}.weight"][:0]
    with torch.no_grad():
        alone = float(((layer.scaling * layer.lora_b @ layer.lora_a) ** 2).sum())
    assert float(trainer._l2sp(model).detach()) == pytest.approx(3.0 * (expected - alone))


def test_old_task_report_has_stress_errors_equal_to_the_exported_models(tmp_path, monkeypatch):
    """Periodic old-task data with stress (carbon, virial): its stress error is reported like
    the energy and forces (it was left out), equal to the exported model's in ASE's sign."""
    monkeypatch.chdir(tmp_path)
    frames = ase.io.read(os.path.join(DATA, "carbon_reduced_100.xyz"), ":")
    ase.io.write("pre.xyz", frames[:30])
    ase.io.write("new.xyz", frames[30:46])
    ase.io.write("old.xyz", frames[60:80])
    energy = {"unit": "eV", "forces": "force", "stress": False, "virial": "virial"}
    section = {"systems": "old.xyz", "targets": {"energy": energy}}
    training = {"num_epochs": 2, "batch_size": 8, "progress_bar": False}
    for name, data, extra in [
        ("pre", "pre.xyz", {}),
        ("ft", "new.xyz", {"finetune": {"read_from": "PRE", "old_task_set": section}}),
    ]:
        raw = {
            "architecture": {"name": "soap_bpnn", "training": dict(training, **extra)},
            "training_set": {"systems": data, "targets": {"energy": energy}},
            "validation_set": 0.25,
        }
        if name == "pre":
            raw["architecture"]["model"] = MODEL
        else:
            (checkpoint,) = glob.glob(str(tmp_path / "pre" / "*" / "model.ckpt"))
            raw["architecture"]["training"]["finetune"]["read_from"] = checkpoint
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(raw))
        assert main(["train", f"{name}.yaml", "-o", f"{name}.pt", "--output-dir", name]) == 0
    (run_dir,) = glob.glob(str(tmp_path / "ft" / "*"))
    data = report(run_dir)
    old = ase.io.read("old.xyz", ":")
    for model, when in (("pre.pt", "before"), ("ft.pt", "after")):
        predicted = predict(load_model(model), old, "energy", "angstrom", "eV")
        # the virial is -stress x volume
        labels = [-np.reshape(a.info["virial"], (3, 3)) / a.get_volume() for a in old]
        errors = np.array([p["stress"] - label for p, label in zip(predicted, labels)])
        expected = float(np.sqrt(np.mean(errors**2)))
        assert data["old_task"]["energy/stress_rmse"][when] == pytest.approx(expected, rel=1e-4)
    assert data["units"]["energy/stress_rmse"] == "eV/angstrom^3"
