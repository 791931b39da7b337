"""Training on real data: errors fall well below the composition baseline, the exported model
gives the same numbers in a fresh process, restarts are exact."""

import glob
import os
import shutil

import ase.io
import numpy as np
import pytest
import torch
import yaml
from helpers import TINY_MODEL

import mtt
from mtt.checkpoints import read_checkpoint
from mtt.cli import main
from mtt.evaluate import load_model, predict
from mtt.testing import exported_in_fresh_process

KCAL_PER_EV = 23.060547830619029


def split(path, tmp_path, n_val=20, seed=0):
    frames = ase.io.read(path, ":")
    order = np.random.default_rng(seed).permutation(len(frames))
    train = [frames[i] for i in order[n_val:]]
    val = [frames[i] for i in order[:n_val]]
    ase.io.write(tmp_path / "train.xyz", train)
    ase.io.write(tmp_path / "val.xyz", val)
    return train, val


def baseline_rmse(train, val, energy):
    """Per-atom energy RMSE of per-element reference energies fitted on ``train`` alone."""
    types = sorted({z for a in train for z in a.numbers})

    def counts(frames):
        return np.array([[np.sum(a.numbers == z) for z in types] for a in frames], dtype=float)

    weights, *_ = np.linalg.lstsq(counts(train), [energy(a) for a in train], rcond=None)
    residual = (np.array([energy(a) for a in val]) - counts(val) @ weights) / [len(a) for a in val]
    return float(np.sqrt(np.mean(residual**2)))


def rmse(a, b):
    return float(np.sqrt(np.mean((np.asarray(a) - np.asarray(b)) ** 2)))


def write_options(tmp_path, options):
    path = tmp_path / "options.yaml"
    path.write_text(yaml.safe_dump(options))
    return str(path)


def test_ethanol_learns_energies_and_forces(tmp_path, data_dir, monkeypatch):
    """On ethanol DFT data (kcal/mol), validation energy errors end well below the
    composition baseline and force errors well below the force spread; the exported model,
    through ASE in a process without mtt, gives the same numbers in eV."""
    monkeypatch.chdir(tmp_path)
    train, val = split(os.path.join(data_dir, "ethanol_reduced_100.xyz"), tmp_path)
    options = {
        "architecture": {
            "name": "soap_bpnn",
            "model": TINY_MODEL,
            "training": {"num_epochs": 30, "batch_size": 8, "learning_rate": 0.005},
        },
        "training_set": {"systems": "train.xyz", "targets": {"energy": {"unit": "kcal/mol"}}},
        "validation_set": "val.xyz",
        "base_precision": 64,
    }
    assert main(["train", write_options(tmp_path, options)]) == 0
    model = load_model("model.pt")
    predictions = predict(model, val, "energy", "angstrom", "kcal/mol")
    energies = [p["energy"] / len(a) for p, a in zip(predictions, val)]
    reference = [a.get_potential_energy() / len(a) for a in val]
    baseline = baseline_rmse(train, val, lambda a: a.get_potential_energy())
    assert rmse(energies, reference) < 0.5 * baseline
    forces = np.concatenate([p["forces"] for p in predictions])
    force_labels = np.concatenate([a.get_forces() for a in val])
    assert rmse(forces, force_labels) < 0.6 * np.sqrt(np.mean(force_labels**2))

    fresh = exported_in_fresh_process(os.path.abspath("model.pt"), val[:3], str(tmp_path))
    for result, prediction in zip(fresh, predictions):
        np.testing.assert_allclose(result["energy"] * KCAL_PER_EV, prediction["energy"], rtol=1e-10)
        np.testing.assert_allclose(
            np.array(result["forces"]) * KCAL_PER_EV, prediction["forces"], rtol=1e-7, atol=1e-9
        )


def test_carbon_learns_from_force_and_virial_keys(tmp_path, data_dir, monkeypatch):
    """Periodic carbon with forces under 'force' and a virial: energies end well below the
    composition baseline, and the stress is learnt from the virial."""
    monkeypatch.chdir(tmp_path)
    train, val = split(os.path.join(data_dir, "carbon_reduced_100.xyz"), tmp_path)
    options = {
        "architecture": {
            "name": "soap_bpnn",
            "model": TINY_MODEL,
            "training": {"num_epochs": 30, "batch_size": 8, "learning_rate": 0.005},
        },
        "training_set": {
            "systems": "train.xyz",
            "targets": {"energy": {"forces": "force", "virial": True, "stress": False}},
        },
        "validation_set": "val.xyz",
    }
    assert main(["train", write_options(tmp_path, options)]) == 0
    model = load_model("model.pt")
    predictions = predict(model, val, "energy", "angstrom", "eV")
    energies = [p["energy"] / len(a) for p, a in zip(predictions, val)]
    reference = [a.get_potential_energy() / len(a) for a in val]
    assert rmse(energies, reference) < 0.5 * baseline_rmse(
        train, val, lambda a: a.get_potential_energy()
    )
    stress = np.array([p["stress"] for p in predictions])
    labels = np.array([-np.array(a.info["virial"]).reshape(3, 3) / a.get_volume() for a in val])
    assert rmse(stress, labels) < np.sqrt(np.mean(labels**2))


def tiny_run_options(tmp_path, data_dir, epochs, interval):
    frames = ase.io.read(os.path.join(data_dir, "ethanol_reduced_100.xyz"), ":24")
    ase.io.write(tmp_path / "small.xyz", frames)
    return write_options(
        tmp_path,
        {
            "architecture": {
                "name": "soap_bpnn",
                "model": dict(TINY_MODEL, max_radial=2, max_angular=1, num_neurons_per_layer=4),
                "training": {
                    "num_epochs": epochs,
                    "batch_size": 4,
                    "checkpoint_interval": interval,
                },
            },
            "training_set": {"systems": "small.xyz", "targets": {"energy": {"unit": "kcal/mol"}}},
            "validation_set": 0.25,
        },
    )


def final_state(run_dir):
    checkpoint = read_checkpoint(os.path.join(run_dir, "model.ckpt"))
    return checkpoint["model_state_dict"], checkpoint["trainer_state"]["history"]


def test_restart_resumes_exactly(tmp_path, data_dir, monkeypatch):
    """Restarting from the epoch-2 checkpoint of a 4-epoch run ends with bitwise the same
    weights and metrics as the uninterrupted run (same epoch, optimizer, scheduler, order)."""
    monkeypatch.chdir(tmp_path)
    options = tiny_run_options(tmp_path, data_dir, epochs=4, interval=2)
    assert main(["train", options, "--output-dir", "a", "-o", "a.pt"]) == 0
    run_a = os.path.join("a", os.listdir("a")[0])
    checkpoint = os.path.join(run_a, "checkpoints", "epoch_2.ckpt")
    assert main(["train", options, "--output-dir", "b", "-o", "b.pt", "--restart", checkpoint]) == 0
    run_b = os.path.join("b", os.listdir("b")[0])
    state_a, history_a = final_state(run_a)
    state_b, history_b = final_state(run_b)
    assert history_a == history_b
    for key in state_a:
        assert torch.equal(state_a[key], state_b[key]), key


def test_restart_auto_trains_a_finished_run_further_in_a_new_directory(
    tmp_path, data_dir, monkeypatch
):
    """``--restart auto`` with a larger num_epochs continues a finished run in a new run
    directory (the finished run's model and checkpoints stay as they were), from its last
    epoch, at the learning rate of the longer schedule (not the finished schedule's last)."""
    monkeypatch.chdir(tmp_path)
    options = tiny_run_options(tmp_path, data_dir, epochs=2, interval=1)
    assert main(["train", options, "-o", "first.pt"]) == 0
    (first,) = os.listdir("outputs")
    before = {
        name: (tmp_path / "outputs" / first / name).read_bytes()
        for name in ("model.ckpt", "model.pt", "options.yaml", "train.csv")
    }
    args = ["train", options, "--restart", "auto", "-o", "second.pt"]
    assert main(args + ["-r", "architecture.training.num_epochs=4"]) == 0
    (second,) = set(os.listdir("outputs")) - {first}
    for name, content in before.items():
        assert (tmp_path / "outputs" / first / name).read_bytes() == content, name
    longer = ["-r", "architecture.training.num_epochs=4", "--output-dir", "long", "-o", "l.pt"]
    assert main(["train", options, *longer]) == 0  # the same 4 epochs, uninterrupted
    (long,) = os.listdir("long")
    rates = [
        [row["learning_rate"] for row in final_state(os.path.join(root, run))[1]]
        for root, run in (("outputs", second), ("long", long))
    ]
    # epochs 1-2 ran on the 2-epoch schedule; 3-4 on the 4-epoch one
    assert rates[0][2:] == pytest.approx(rates[1][2:], rel=1e-12)


@pytest.mark.parametrize(
    "change",
    [
        ["architecture.training.learning_rate=0.01"],  # the checkpoint's 0.001 came back
        ["architecture.training.batch_size=2"],  # twice the steps: the old count ended cosine
    ],
)
def test_a_restart_follows_the_options_schedule(tmp_path, data_dir, monkeypatch, change):
    """A restart with another learning rate or batch size continues on the schedule those
    options give (as a run with them from the start would be at that epoch), and says when
    the rate is not the one the checkpoint's run would have gone on with."""
    monkeypatch.chdir(tmp_path)
    options = tiny_run_options(tmp_path, data_dir, epochs=2, interval=1)
    assert main(["train", options, "--output-dir", "a", "-o", "a.pt"]) == 0
    (first,) = os.listdir("a")
    checkpoint = os.path.join("a", first, "checkpoints", "epoch_1.ckpt")
    overrides = [item for c in change for item in ("-r", c)]
    args = ["train", options, "--output-dir", "b", "-o", "b.pt", "--restart", checkpoint]
    assert main(args + overrides) == 0
    assert main(["train", options, "--output-dir", "c", "-o", "c.pt", *overrides]) == 0
    (second,), (fresh,) = os.listdir("b"), os.listdir("c")
    rates = [
        [row["learning_rate"] for row in final_state(os.path.join(root, run))[1]]
        for root, run in (("b", second), ("c", fresh))
    ]
    assert rates[0][1] == pytest.approx(rates[1][1], rel=1e-12)
    log = (tmp_path / "b" / second / "train.log").read_text()
    said = "on this run's schedule (the checkpoint's run would go on at" in log
    assert said == ("learning_rate" in change[0])  # the same fraction of 2 epochs: same rate


def test_a_restart_on_other_validation_data_chooses_the_best_model_afresh(
    tmp_path, data_dir, monkeypatch
):
    """The best model has the lowest validation loss: after a restart that changes the
    validation data (here another split), the checkpoint's best epoch was measured by
    another loss and must not win or lose by it."""
    monkeypatch.chdir(tmp_path)
    options = tiny_run_options(tmp_path, data_dir, epochs=2, interval=1)
    assert main(["train", options, "--output-dir", "a", "-o", "a.pt"]) == 0
    (first,) = os.listdir("a")
    checkpoint = os.path.join("a", first, "checkpoints", "epoch_1.ckpt")
    args = ["train", options, "--output-dir", "b", "-o", "b.pt", "--restart", checkpoint]
    assert main(args) == 0  # the same data: no warning
    changed = ["-r", "validation_set=0.5", "-r", "architecture.training.num_epochs=3"]
    assert (
        main(
            ["train", options, "--output-dir", "c", "-o", "c.pt", "--restart", checkpoint, *changed]
        )
        == 0
    )
    logs = {
        root: (tmp_path / root / os.listdir(root)[0] / "train.log").read_text()
        for root in ("b", "c")
    }
    warning = "the validation data, targets or loss differ from the checkpoint's run"
    assert warning not in logs["b"] and warning in logs["c"]
    best = read_checkpoint(os.path.join("c", os.listdir("c")[0], "model.ckpt"))
    assert best["trainer_state"]["best_epoch"] >= 2  # an epoch of this run


def test_fused_optimizer_resumes_a_checkpoint_of_the_unfused_one(tmp_path, data_dir, monkeypatch):
    """Adam updates in fused kernels where torch has them (CPU here); a checkpoint whose
    optimizer state torch's per-parameter loop wrote (mtt before fusing, or a device without
    fused kernels) restarts and ends where the uninterrupted unfused run ends, to rounding."""
    from mtt.training import trainer as trainer_module

    made = []
    make = trainer_module.Trainer.make_optimizer
    monkeypatch.setattr(
        trainer_module.Trainer,
        "make_optimizer",
        lambda self, model: made.append(make(self, model)) or made[-1],
    )
    monkeypatch.chdir(tmp_path)
    options = tiny_run_options(tmp_path, data_dir, epochs=4, interval=2)
    with monkeypatch.context() as unfused:
        unfused.setattr(trainer_module, "_fused_optimizer_supported", lambda groups: False)
        assert main(["train", options, "--output-dir", "a", "-o", "a.pt"]) == 0
    assert made[-1].defaults["fused"] is False
    run_a = os.path.join("a", os.listdir("a")[0])
    checkpoint = os.path.join(run_a, "checkpoints", "epoch_2.ckpt")
    assert main(["train", options, "--output-dir", "b", "-o", "b.pt", "--restart", checkpoint]) == 0
    assert made[-1].defaults["fused"] is True
    state_a, _ = final_state(run_a)
    state_b, history_b = final_state(os.path.join("b", os.listdir("b")[0]))
    assert [row["epoch"] for row in history_b] == [1, 2, 3, 4]
    for key in state_a:
        torch.testing.assert_close(state_b[key], state_a[key], rtol=1e-4, atol=1e-6, msg=key)


def test_python_api_takes_any_atoms_dataset(tmp_path, data_dir, monkeypatch):
    """``mtt.train`` accepts a list of ase.Atoms (a Dataset[ase.Atoms]) with labels on the
    frames, as MatterTune's data contract asks; the training_set section that declares their
    keys and units needs no 'systems' (it was required: a dummy path got past it)."""
    monkeypatch.chdir(tmp_path)
    frames = ase.io.read(os.path.join(data_dir, "carbon_reduced_100.xyz"), ":12")
    options = {
        "architecture": {
            "name": "soap_bpnn",
            "model": dict(TINY_MODEL, max_radial=2, max_angular=1),
            "training": {"num_epochs": 2, "batch_size": 4},
        },
        "training_set": {"targets": {"energy": {"forces": "force", "stress": False}}},
        "validation_set": 0.25,
    }
    path = mtt.train(options, training_set=frames, output="api.pt")
    assert os.path.isfile(path)
    assert load_model(path).capabilities().atomic_types == [6]


def test_eval_command_reports_errors_and_writes_predictions(
    tmp_path, data_dir, monkeypatch, capsys
):
    """``mtt eval`` prints RMSE/MAE against labels and writes predictions that equal the
    model's (read back from the file)."""
    monkeypatch.chdir(tmp_path)
    options = tiny_run_options(tmp_path, data_dir, epochs=1, interval=1)
    assert main(["train", options]) == 0
    (tmp_path / "eval.yaml").write_text(
        yaml.safe_dump({"systems": "small.xyz", "targets": {"energy": {"unit": "kcal/mol"}}})
    )
    capsys.readouterr()
    assert main(["eval", "model.pt", "eval.yaml", "-o", "pred.xyz"]) == 0
    out = capsys.readouterr().out
    assert "energy_per_atom: RMSE" in out and "forces: RMSE" in out
    n = len(ase.io.read("small.xyz", ":"))
    assert f"predictions for {n} structures written to pred.xyz" in out
    assert out.count(f"kcal/mol/atom ({n} structures)") == 1  # (a whole number)
    written = ase.io.read("pred.xyz", ":")
    expected = predict(
        load_model("model.pt"), ase.io.read("small.xyz", ":"), "energy", "angstrom", "kcal/mol"
    )
    np.testing.assert_allclose(
        [a.get_potential_energy() for a in written], [p["energy"] for p in expected], rtol=1e-6
    )


def test_export_command_matches_training_export(tmp_path, data_dir, monkeypatch):
    """``mtt export model.ckpt`` writes the same model as the end of training did."""
    monkeypatch.chdir(tmp_path)
    options = tiny_run_options(tmp_path, data_dir, epochs=1, interval=1)
    assert main(["train", options]) == 0
    run = os.path.join("outputs", os.listdir("outputs")[0])
    assert main(["export", os.path.join(run, "model.ckpt"), "-o", "again.pt"]) == 0
    frames = ase.io.read("small.xyz", ":4")
    first = predict(load_model("model.pt"), frames, "energy", "angstrom", "kcal/mol")
    second = predict(load_model("again.pt"), frames, "energy", "angstrom", "kcal/mol")
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a["energy"], b["energy"])
    assert (
        main(["export", os.path.join(run, "model.ckpt"), "-o", "f64.pt", "--dtype", "float64"]) == 0
    )
    assert load_model("f64.pt").capabilities().dtype == "float64"
    third = predict(load_model("f64.pt"), frames, "energy", "angstrom", "kcal/mol")
    for a, b in zip(first, third):
        np.testing.assert_allclose(a["energy"], b["energy"], rtol=1e-6)
    shutil.rmtree("outputs")


def test_loss_becoming_nan_stops_with_a_clear_message(tmp_path, data_dir, monkeypatch, capsys):
    """A diverging run stops at the epoch where the loss became NaN/inf, says why it likely
    happened, keeps earlier checkpoints, and exports nothing."""
    monkeypatch.chdir(tmp_path)
    options = tiny_run_options(tmp_path, data_dir, epochs=3, interval=1)
    status = main(
        [
            "train",
            options,
            "-r",
            "architecture.training.learning_rate=1e30",
            "-r",
            "architecture.training.grad_clip_norm=null",
        ]
    )
    assert status == 1
    error = capsys.readouterr().err
    assert "the loss is not finite in epoch 1 (training nan, validation " in error
    assert "learning rate (1e+30) is probably too high" in error
    assert not os.path.exists("model.pt")


def test_checkpoint_contexts_pick_latest_or_best_weights(tmp_path, data_dir, monkeypatch):
    """Restarting loads the latest weights; fine-tuning and export load the best ones."""
    monkeypatch.chdir(tmp_path)
    options = tiny_run_options(tmp_path, data_dir, epochs=3, interval=3)
    assert main(["train", options]) == 0
    path = glob.glob(os.path.join("outputs", "*", "checkpoints", "epoch_3.ckpt"))[0]
    checkpoint = read_checkpoint(path)
    from mtt.architectures.soap_bpnn import SoapBpnn

    for context, key in (
        ("restart", "model_state_dict"),
        ("finetune", "best_model_state_dict"),
        ("export", "best_model_state_dict"),
    ):
        state = SoapBpnn.load_checkpoint(checkpoint, context).state_dict()
        for name, value in checkpoint[key].items():
            assert torch.equal(state[name], value), (context, name)


def test_a_model_in_bohr_evaluates_structures_given_in_angstrom():
    """A model trained in bohr, evaluated on the same structures in Å and in bohr: equal
    energies, forces and stress converted by the Å/bohr factor. The neighbour list is
    computed with the model's cutoff in the data's unit (a list cut at the bohr number of Å
    would hold the wrong pairs) and attached under the model's own request."""
    from mtt.architectures.soap_bpnn.model import SoapBpnn
    from mtt.hypers import parse
    from mtt.testing import periodic_crystal
    from mtt.testing._tools import dataset_info

    bohr = 0.529177210903  # Å
    hypers = parse(SoapBpnn.__hypers__, dict(TINY_MODEL, cutoff=6.0), "architecture.model")
    torch.manual_seed(0)
    model = SoapBpnn(hypers, dataset_info((1, 6, 8), "bohr", generic=False)).double().eval()
    exported = model.export()
    in_angstrom = periodic_crystal()
    in_bohr = in_angstrom.copy()
    in_bohr.set_cell(in_angstrom.cell / bohr, scale_atoms=True)
    [from_angstrom] = predict(exported, [in_angstrom], "energy", "angstrom", "eV")
    [from_bohr] = predict(exported, [in_bohr], "energy", "bohr", "eV")
    np.testing.assert_allclose(from_angstrom["energy"], from_bohr["energy"], rtol=1e-9)
    np.testing.assert_allclose(from_angstrom["forces"] * bohr, from_bohr["forces"], atol=1e-10)
    np.testing.assert_allclose(from_angstrom["stress"] * bohr**3, from_bohr["stress"], atol=1e-10)


def test_eval_of_a_bare_file_with_a_bohr_model_says_the_file_is_read_in_angstrom(tmp_path, capsys):
    """A structure file does not say its unit: read in Å, while a bohr model's own files
    are in bohr (1.9x off, without a word)."""
    import ase.io

    from mtt.api import save_model
    from mtt.architectures.soap_bpnn.model import SoapBpnn
    from mtt.cli import main
    from mtt.hypers import parse
    from mtt.testing import periodic_crystal
    from mtt.testing._tools import dataset_info

    hypers = parse(SoapBpnn.__hypers__, dict(TINY_MODEL, cutoff=6.0), "architecture.model")
    model = SoapBpnn(hypers, dataset_info((1, 6, 8), "bohr", generic=False)).double().eval()
    save_model(model.export(), str(tmp_path / "bohr.pt"))
    ase.io.write(tmp_path / "s.xyz", periodic_crystal())
    output = str(tmp_path / "p.xyz")
    assert main(["eval", str(tmp_path / "bohr.pt"), str(tmp_path / "s.xyz"), "-o", output]) == 0
    assert "is read in angstrom (a structure file does not say its unit); the model works in " in (
        capsys.readouterr().out
    )


def test_python_export_says_where_it_wrote(tmp_path):
    """``mtt.export`` prints what ``mtt export`` prints (getting-started says both do; it
    printed nothing), in a fresh process where nobody configured logging."""
    import subprocess
    import sys

    from mtt.checkpoints import save_checkpoint
    from mtt.testing import random_model

    model = random_model(
        "soap_bpnn", {"cutoff": 3.0, "max_radial": 2, "max_angular": 1}, torch.float32
    )
    save_checkpoint(model.get_checkpoint(), str(tmp_path / "model.ckpt"))
    code = "import mtt; mtt.export('model.ckpt', 'out.pt')"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert done.stdout.splitlines() == ["exported model.ckpt to out.pt"]
    assert (tmp_path / "out.pt").exists()
