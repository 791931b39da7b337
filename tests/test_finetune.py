"""Fine-tuning from a pretrained checkpoint: xTB-pretrained ethanol adapted to DFT labels."""

import glob
import os
import shutil
from pathlib import Path

import ase.io
import numpy as np
import pytest
import torch
import yaml
from helpers import TINY_MODEL

from mtt.api import model_from_checkpoint
from mtt.checkpoints import read_checkpoint
from mtt.cli import main
from mtt.evaluate import generic_outputs, load_model, predict
from mtt.units import conversion

DATA = os.path.join(os.path.dirname(__file__), "..", "examples", "data")
MODEL = dict(TINY_MODEL, max_radial=3, max_angular=2, num_neurons_per_layer=8)


def run(tmp_path, name, training, train_file, extra=None, unit="kcal/mol"):
    options = {
        "architecture": {
            "name": "soap_bpnn",
            "model": MODEL,
            "training": dict({"num_epochs": 8, "batch_size": 4}, **training),
        },
        "training_set": {"systems": train_file, "targets": {"energy": {"unit": unit}}},
        "validation_set": 0.2,
        **(extra or {}),
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(options))
    return str(path)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, data_dir_module):
    """A tiny model trained on 100 xTB frames of ethanol (eV)."""
    root = tmp_path_factory.mktemp("pretrained")
    frames = ase.io.read(os.path.join(data_dir_module, "ethanol_xtb_200.xyz"), ":100")
    ase.io.write(root / "xtb.xyz", frames)
    dft = ase.io.read(os.path.join(data_dir_module, "ethanol_reduced_100.xyz"), ":")
    ase.io.write(root / "dft_small.xyz", dft[:12])
    ase.io.write(root / "dft_test.xyz", dft[50:80])
    cwd = os.getcwd()
    os.chdir(root)
    try:
        options = run(
            root,
            "pre",
            {"num_epochs": 12, "batch_size": 8, "learning_rate": 0.005},
            "xtb.xyz",
            unit="eV",
        )
        assert main(["train", options, "-o", "pre.pt"]) == 0
    finally:
        os.chdir(cwd)
    (checkpoint,) = glob.glob(str(root / "outputs" / "*" / "model.ckpt"))
    return {"root": root, "checkpoint": checkpoint}


@pytest.fixture(scope="module")
def data_dir_module():
    return os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "examples", "data"))


def finetune(pretrained, tmp_path, monkeypatch, method="full", **options):
    monkeypatch.chdir(tmp_path)
    for name in ("dft_small.xyz", "dft_test.xyz"):
        os.symlink(pretrained["root"] / name, tmp_path / name)
    section = {"read_from": pretrained["checkpoint"], "method": method, **options}
    path = run(tmp_path, "ft", {"finetune": section}, "dft_small.xyz")
    assert main(["train", path, "-o", "ft.pt"]) == 0
    (checkpoint,) = glob.glob(str(tmp_path / "outputs" / "*" / "model.ckpt"))
    return read_checkpoint(checkpoint)


def test_fixed_reference_energies_are_converted_with_the_labels(pretrained, tmp_path, monkeypatch):
    """Given in the data's unit (kcal/mol) like the labels, which fine-tuning converts to the
    pretrained model's eV: the fixed energy of H was applied as -10 eV, 23x too low."""
    monkeypatch.chdir(tmp_path)
    os.symlink(pretrained["root"] / "dft_small.xyz", tmp_path / "dft_small.xyz")
    training = {
        "num_epochs": 1,
        "finetune": {"read_from": pretrained["checkpoint"], "method": "full"},
        "fixed_composition_weights": {"energy": {"H": -10.0}},
    }
    assert main(["train", run(tmp_path, "ft", training, "dft_small.xyz"), "-o", "ft.pt"]) == 0
    (path,) = glob.glob(str(tmp_path / "outputs" / "*" / "model.ckpt"))
    _, model = model_from_checkpoint(read_checkpoint(path), path, "export")
    hydrogen = model.atomic_types.index(1)
    expected = -10.0 * conversion("kcal/mol", "eV")
    assert float(model.baseline[0][hydrogen]) == pytest.approx(expected, rel=1e-6)


def changed(before, after):
    return {
        name
        for name, value in before.items()
        if name in after
        and after[name].shape == value.shape
        and not torch.equal(after[name], value)
    }


def test_finetuning_beats_training_from_scratch(pretrained, tmp_path, monkeypatch):
    """With 12 DFT frames and equal epochs, the fine-tuned model predicts held-out DFT forces
    better than a model trained from scratch on the same frames."""
    finetune(pretrained, tmp_path, monkeypatch, "full")
    assert main(["train", run(tmp_path, "scratch", {}, "dft_small.xyz"), "-o", "scratch.pt"]) == 0
    test = ase.io.read("dft_test.xyz", ":")
    labels = np.concatenate([a.get_forces() for a in test])  # kcal/mol/Å
    errors = {}
    for name, unit in (("ft.pt", "kcal/mol"), ("scratch.pt", "kcal/mol")):
        forces = np.concatenate(
            [p["forces"] for p in predict(load_model(name), test, "energy", "angstrom", unit)]
        )
        errors[name] = float(np.sqrt(np.mean((forces - labels) ** 2)))
    assert errors["ft.pt"] < errors["scratch.pt"], errors


def test_heads_trains_only_the_output_layers(pretrained, tmp_path, monkeypatch):
    """``method: heads`` changes the last layer of each element network and nothing else."""
    before = read_checkpoint(pretrained["checkpoint"])["best_model_state_dict"]
    after = finetune(pretrained, tmp_path, monkeypatch, "heads")["best_model_state_dict"]
    moved = {name for name in changed(before, after) if "networks" in name}
    assert moved and all(name.split(".")[2] == "4" for name in moved), moved


def test_freeze_keeps_matching_parameters(pretrained, tmp_path, monkeypatch):
    """``method: freeze`` leaves the parameters matching its patterns untouched."""
    before = read_checkpoint(pretrained["checkpoint"])["best_model_state_dict"]
    after = finetune(
        pretrained,
        tmp_path,
        monkeypatch,
        "freeze",
        config={"patterns": ["networks.0.*", "networks.1.0.*"]},
    )
    moved = changed(before, after["best_model_state_dict"])
    assert moved
    assert not any(n.startswith("networks.0.") or n.startswith("networks.1.0.") for n in moved)


def test_freeze_of_every_parameter_is_refused(pretrained, tmp_path, monkeypatch, capsys):
    """Patterns that freeze the whole model ran every epoch with 0 parameters training (pet
    names all its parameters 'layers.*', so 'layers.*' froze it all without a word)."""
    monkeypatch.chdir(tmp_path)
    os.symlink(pretrained["root"] / "dft_small.xyz", tmp_path / "dft_small.xyz")
    section = {"read_from": pretrained["checkpoint"], "method": "freeze"}
    section["config"] = {"patterns": ["networks.*"]}
    options = run(tmp_path, "frozen", {"finetune": section}, "dft_small.xyz")
    message = _error(capsys, "train", options, "--dry-run")
    assert message.startswith(
        "'architecture.training.finetune.config.patterns' ['networks.*'] match every parameter"
    )


def test_lora_trains_adapters_and_export_equals_merged_model(pretrained, tmp_path, monkeypatch):
    """LoRA trains only the adapters (base weights unchanged) and the exported model, with the
    adapters merged into the weights, predicts what the adapted model predicts."""
    from mtt.architectures.soap_bpnn import SoapBpnn
    from mtt.testing import energy_of

    before = read_checkpoint(pretrained["checkpoint"])["best_model_state_dict"]
    checkpoint = finetune(
        pretrained, tmp_path, monkeypatch, "lora", config={"rank": 2, "alpha": 4.0}
    )
    after = checkpoint["best_model_state_dict"]
    adapters = [n for n in after if ".lora_" in n]
    assert adapters and any(not torch.all(after[n] == 0) for n in adapters if "lora_b" in n)
    for name, value in before.items():
        if not name.startswith("networks."):
            continue  # buffers: reference energies are refitted, statistics kept
        base = name.rsplit(".", 1)
        wrapped = f"{base[0]}.base.{base[1]}"
        assert torch.equal(after.get(name, after.get(wrapped)), value), name
    adapted = SoapBpnn.load_checkpoint(checkpoint, "export").eval()
    test = ase.io.read("dft_test.xyz", ":3")
    exported = predict(load_model("ft.pt"), test, "energy", "angstrom", "eV")
    for atoms, result in zip(test, exported):
        eager = float(energy_of(adapted, atoms, torch.float32)[0])
        np.testing.assert_allclose(result["energy"], eager, rtol=1e-6)


def test_new_target_inherits_a_head_and_old_target_is_kept(pretrained, tmp_path, monkeypatch):
    """Transfer learning to a new energy target that starts from the pretrained head: the
    exported model predicts both the new target and the pretrained one."""
    monkeypatch.chdir(tmp_path)
    os.symlink(pretrained["root"] / "dft_small.xyz", tmp_path / "dft_small.xyz")
    options = run(
        tmp_path,
        "ft",
        {
            "finetune": {
                "read_from": pretrained["checkpoint"],
                "inherit_heads": {"energy/dft": "energy"},
            }
        },
        "dft_small.xyz",
    )
    raw = yaml.safe_load((tmp_path / "ft.yaml").read_text())
    raw["training_set"]["targets"] = {"energy/dft": {"key": "energy", "unit": "kcal/mol"}}
    (tmp_path / "ft.yaml").write_text(yaml.safe_dump(raw))
    assert main(["train", options, "-o", "ft.pt"]) == 0
    outputs = load_model("ft.pt").capabilities().outputs
    assert {"energy", "energy/dft"} <= set(outputs)
    assert outputs["energy"].unit == "eV" and outputs["energy/dft"].unit == "kcal/mol"


def test_dry_run_reports_without_training_and_catches_a_wrong_unit(
    pretrained, tmp_path, monkeypatch, capsys
):
    """``--dry-run`` prints reference energies and zero-shot errors and trains nothing; DFT
    labels in kcal/mol declared as eV are flagged by the spread of the forces (23x)."""
    monkeypatch.chdir(tmp_path)
    os.symlink(pretrained["root"] / "dft_small.xyz", tmp_path / "dft_small.xyz")
    section = {"finetune": {"read_from": pretrained["checkpoint"]}}
    good = run(tmp_path, "good", section, "dft_small.xyz")
    assert main(["train", good, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "zero-shot errors" in out and "reference energies" in out
    assert "check the energy and length units" not in out
    assert not os.path.exists("outputs") and not os.path.exists("model.pt")
    wrong = run(tmp_path, "wrong", section, "dft_small.xyz", unit="eV")
    assert main(["train", wrong, "--dry-run"]) == 0
    assert "check the energy and length units" in capsys.readouterr().out


def test_dry_run_refuses_an_element_the_pretrained_model_lacks(
    pretrained, tmp_path, monkeypatch, capsys
):
    """New data with an element the pretrained model never saw is refused, naming it."""
    monkeypatch.chdir(tmp_path)
    frames = ase.io.read(pretrained["root"] / "dft_small.xyz", ":")
    frames[3].numbers[0] = 7
    ase.io.write("with_n.xyz", frames)
    options = run(
        tmp_path, "n", {"finetune": {"read_from": pretrained["checkpoint"]}}, "with_n.xyz"
    )
    assert main(["train", options, "--dry-run"]) == 1
    assert "elements [7]" in capsys.readouterr().err


def test_data_in_another_length_unit_is_refused_with_a_conversion(
    pretrained, tmp_path, monkeypatch, capsys
):
    """Data in bohr for a model in angstrom: the error asked to 'declare the length unit the
    model uses', i.e. to call bohr positions angstrom, which trains on stretched structures."""
    monkeypatch.chdir(tmp_path)
    os.symlink(pretrained["root"] / "dft_small.xyz", tmp_path / "dft_small.xyz")
    path = run(tmp_path, "bohr", {"finetune": {"read_from": pretrained["checkpoint"]}}, "x")
    options = yaml.safe_load(Path(path).read_text())
    options["training_set"]["systems"] = {"read_from": "dft_small.xyz", "length_unit": "bohr"}
    Path(path).write_text(yaml.safe_dump(options))
    message = _error(capsys, "train", path, "--dry-run")
    assert "convert the positions, cells, forces and stress of the file to 'angstrom'" in message
    assert message.endswith("declare length_unit: angstrom")


def test_finetuning_adds_a_generic_target_and_keeps_the_energy(tmp_path, monkeypatch):
    """Fine-tuning an energy-only model (QM9 U0) on dipole magnitudes (``mtt::mu``) adds a
    head for the new target and keeps the energy: the exported model predicts both, the
    energies as the pretrained model did (no weight they use trains: the new head reads the
    fixed descriptors), and the dipoles better than their mean does."""
    monkeypatch.chdir(tmp_path)
    frames = ase.io.read(os.path.join(DATA, "qm9_reduced_100.xyz"), ":")
    ase.io.write("energies.xyz", frames[:40])
    ase.io.write("dipoles.xyz", frames[40:])
    energy = {"energy": {"key": "U0", "unit": "Hartree"}}
    pre = run(tmp_path, "pre", {"num_epochs": 4}, "energies.xyz")
    set_targets(tmp_path / "pre.yaml", energy)
    assert main(["train", pre, "-o", "pre.pt"]) == 0
    (checkpoint,) = glob.glob(str(tmp_path / "outputs" / "*" / "model.ckpt"))
    section = {"finetune": {"read_from": checkpoint}, "num_epochs": 30, "learning_rate": 0.01}
    ft = run(tmp_path, "ft", section, "dipoles.xyz")
    set_targets(tmp_path / "ft.yaml", {"mtt::mu": {"unit": "D"}})
    assert main(["train", ft, "-o", "ft.pt", "--force"]) == 0
    model = load_model("ft.pt")
    outputs = model.capabilities().outputs
    assert outputs["energy"].unit == "Hartree" and outputs["mtt::mu"].unit == "D"
    test = frames[40:]
    before = predict(load_model("pre.pt"), test, "energy", "angstrom", "Hartree")
    after = predict(model, test, "energy", "angstrom", "Hartree")
    for old, new in zip(before, after):
        np.testing.assert_allclose(new["energy"], old["energy"], rtol=1e-6)
    mu = np.array([r["mtt::mu"][0] for r in generic_outputs(model, test, ["mtt::mu"], "angstrom")])
    labels = np.array([a.info["mu"] for a in test])
    assert np.sqrt(np.mean((mu - labels) ** 2)) < 0.9 * labels.std()


def set_targets(path, targets):
    raw = yaml.safe_load(path.read_text())
    raw["training_set"]["targets"] = targets
    path.write_text(yaml.safe_dump(raw))


def test_refit_keeps_the_reference_energy_of_an_element_absent_from_the_new_data():
    """Refitting reference energies on new data without oxygen keeps the pretrained oxygen
    reference (a least-squares fit would set it to zero, shifting every energy of a
    structure with oxygen by the full atomic energy), while H and C are refitted."""
    from mtt.data.dataset import dataset_from_atoms
    from mtt.hypers import parse
    from mtt.options import EnergyTargetOptions
    from mtt.testing import random_model
    from mtt.training.hypers import TrainingHypers
    from mtt.training.trainer import Trainer

    model = random_model("soap_bpnn", TINY_MODEL, torch.float64, generic=False)
    model.scale.zero_()  # the network predicts nothing: the references alone fit the labels
    old = model.baseline.clone()
    frames = []
    for n_carbon, n_hydrogen in ((1, 4), (2, 6), (2, 4), (3, 8), (6, 6)):
        atoms = ase.Atoms(
            f"C{n_carbon}H{n_hydrogen}",
            positions=np.arange(3 * (n_carbon + n_hydrogen)).reshape(-1, 3),
        )
        atoms.info["energy"] = -10.0 * n_carbon - 0.5 * n_hydrogen
        frames.append(atoms)
    dataset = dataset_from_atoms(
        frames, {"energy": EnergyTargetOptions(unit="eV", forces=False, stress=False)}
    )
    hypers = parse(TrainingHypers, {"finetune": {"read_from": "pretrained.ckpt"}})
    trainer = Trainer(hypers)
    trainer.pretrained_targets = ["energy"]
    trainer._fit_baseline(model, dataset, ["energy"])
    hydrogen, carbon, oxygen = (model.atomic_types.index(z) for z in (1, 6, 8))
    assert float(model.baseline[0, oxygen]) == float(old[0, oxygen]) != 0.0
    assert float(model.baseline[0, hydrogen]) == pytest.approx(-0.5)
    assert float(model.baseline[0, carbon]) == pytest.approx(-10.0)


def test_refit_on_a_single_composition_changes_the_references_as_little_as_it_can(caplog):
    """New data of one composition (a single molecule's trajectory) determine only one sum
    of reference energies: the refit moves the pretrained references along the composition
    by just enough to fit the data's mean, and keeps their split between the elements (a fit
    from scratch would split the whole energy in proportion to the composition, moving each
    element's reference by electronvolts and every other molecule's energy with it)."""
    from mtt.data.dataset import dataset_from_atoms
    from mtt.hypers import parse
    from mtt.options import EnergyTargetOptions
    from mtt.testing import random_model
    from mtt.training.hypers import TrainingHypers
    from mtt.training.trainer import Trainer

    model = random_model("soap_bpnn", TINY_MODEL, torch.float64, generic=False)
    model.scale.zero_()  # the network predicts nothing: the references alone fit the labels
    old = model.baseline[0].clone().numpy()
    hydrogen, carbon, oxygen = (model.atomic_types.index(z) for z in (1, 6, 8))
    composition = np.zeros(len(model.atomic_types))
    composition[[hydrogen, carbon]] = 6.0, 2.0
    frames = []
    for offset in (6.9, 7.0, 7.1):  # the new method sits 7 eV above the pretrained one
        atoms = ase.Atoms("C2H6", positions=np.arange(24).reshape(-1, 3))
        atoms.info["energy"] = float(composition @ old) + offset
        frames.append(atoms)
    dataset = dataset_from_atoms(
        frames, {"energy": EnergyTargetOptions(unit="eV", forces=False, stress=False)}
    )
    trainer = Trainer(parse(TrainingHypers, {"finetune": {"read_from": "pretrained.ckpt"}}))
    trainer.pretrained_targets = ["energy"]
    with caplog.at_level("INFO", logger="mtt"):
        trainer._fit_baseline(model, dataset, ["energy"])
    change = model.baseline[0].numpy() - old
    np.testing.assert_allclose(change, 7.0 * composition / (composition @ composition))
    assert change[oxygen] == 0.0
    # shifts of 1.05 and 0.35 eV, against per-atom energies spread by 0.01 eV: marked
    marked = [line.split(":")[0].split()[-1] for line in caplog.messages if "large shift" in line]
    assert marked == ["H", "C"]


def _molecules_labelled_by(model, shift, target="energy", factor=1.0):
    """Small molecules, each labelled ``factor`` times the model's own energy plus a shift per
    element (another code's reference energies)."""
    import ase.build

    from mtt.testing import energy_of

    rng = np.random.default_rng(0)
    frames = []
    for formula in ("CH4", "C2H6", "H2O", "CH3OH", "CH3CH2OH", "CO2", "H2CO"):
        atoms = ase.build.molecule(formula)
        atoms.positions += rng.normal(0.0, 0.05, atoms.positions.shape)
        own = factor * float(energy_of(model, atoms)[0])
        atoms.info[target] = own + sum(shift[int(z)] for z in atoms.numbers)
        frames.append(atoms)
    return frames


def _network_energy_per_atom(model, frames):
    """The mean of what the network adds to the references, per atom (eV)."""
    from mtt.testing import energy_of

    baseline = model.baseline[0].numpy()
    total = sum(
        float(energy_of(model, atoms)[0])
        - sum(baseline[model.atomic_types.index(int(z))] for z in atoms.numbers)
        for atoms in frames
    )
    return total / sum(len(atoms) for atoms in frames)


def test_refit_fits_what_the_pretrained_network_leaves_of_the_labels():
    """Labels that are the pretrained model's own energies plus a shift per element (another
    code's references) are fitted by shifting the references by exactly that: the refitted
    model predicts the labels. Fitted to the raw labels, every reference moved by what the
    network's energies average to, and fine-tuning started worse than the pretrained model."""
    from mtt.data.dataset import dataset_from_atoms
    from mtt.hypers import parse
    from mtt.options import EnergyTargetOptions
    from mtt.testing import energy_of, random_model
    from mtt.training.hypers import TrainingHypers
    from mtt.training.trainer import Trainer

    model = random_model("soap_bpnn", TINY_MODEL, torch.float64, generic=False)
    shift = {1: 0.3, 6: -1.2, 8: 0.7}
    frames = _molecules_labelled_by(model, shift)
    assert abs(_network_energy_per_atom(model, frames)) > 0.01  # else the test proves nothing
    old = model.baseline[0].clone()
    dataset = dataset_from_atoms(
        frames, {"energy": EnergyTargetOptions(unit="eV", forces=False, stress=False)}
    )
    trainer = Trainer(parse(TrainingHypers, {"finetune": {"read_from": "pretrained.ckpt"}}))
    trainer.pretrained_targets = ["energy"]
    trainer._fit_baseline(model, dataset, ["energy"])
    for z, delta in shift.items():
        k = model.atomic_types.index(z)
        assert float(model.baseline[0, k] - old[k]) == pytest.approx(delta, abs=1e-8)
    for atoms in frames:
        assert float(energy_of(model, atoms)[0]) == pytest.approx(atoms.info["energy"], abs=1e-8)


def test_the_energy_scale_of_fine_tuning_is_the_datas_own():
    """The loss divides energy errors by the per-atom spread of the labels beyond their
    composition fit, as when training from scratch. Measured after references fitted next to
    a network that predicts most of the energy, it held the network's cohesive energies: ten
    times larger on mixed compositions (SevenNet on ethanol and SiGe), and fine-tuning
    neglected the energies."""
    from mtt.data.dataset import dataset_from_atoms
    from mtt.options import EnergyTargetOptions
    from mtt.training.composition import fit_baseline

    frames = []
    for n, atoms in enumerate(ase.io.read(os.path.join(DATA, "qm9_reduced_100.xyz"), ":30")):
        atoms.info["E"] = -4.0 * len(atoms) + 0.05 * np.sin(n)  # composition + a small rest
        frames.append(atoms)
    dataset = dataset_from_atoms(frames, {"energy": EnergyTargetOptions(key="E", forces=False)})
    types = dataset.atomic_types
    network = np.array([-3.0 * len(a) + 1.0 * (a.numbers == 6).sum() for a in frames])
    _, alone = fit_baseline(dataset, "energy", types, {}, "x")
    weights, spread = fit_baseline(dataset, "energy", types, {}, "x", np.zeros(len(types)), network)
    assert spread == pytest.approx(alone, rel=1e-9)
    assert 0.0 < alone < 0.01  # the small rest per atom, not the network's energies
    counts = np.array([[(a.numbers == z).sum() for z in types] for a in frames])
    labels = np.array([a.info["E"] for a in frames])
    np.testing.assert_allclose(counts @ weights + network, labels, atol=0.2)  # fits the rest


def test_an_inherited_head_starts_as_its_source_in_the_new_unit():
    """A new target inheriting the pretrained energy's head keeps that head's output scale
    (converted to its unit) and gets references fitted to what the inherited network leaves
    of its labels: labels equal to the pretrained energies in kcal/mol plus a shift per
    element are predicted exactly before any training."""
    from metatomic.torch import ModelOutput

    from mtt.data.dataset import dataset_from_atoms
    from mtt.data.targets import DatasetInfo
    from mtt.hypers import parse
    from mtt.options import EnergyTargetOptions
    from mtt.testing import random_model, systems_with_neighbors
    from mtt.training.hypers import TrainingHypers
    from mtt.training.trainer import Trainer
    from mtt.units import conversion

    model = random_model("soap_bpnn", TINY_MODEL, torch.float64, generic=False)
    factor = conversion("eV", "kcal/mol")
    shift = {1: 5.0, 6: -20.0, 8: 12.0}
    frames = _molecules_labelled_by(model, shift, "dft", factor)
    options = {"energy/dft": EnergyTargetOptions(key="dft", unit="kcal/mol", forces=False)}
    dataset = dataset_from_atoms(frames, options)
    info = DatasetInfo("angstrom", dataset.atomic_types, dataset.targets)
    inherit = {"energy/dft": "energy"}
    model.restart(info, inherit)
    hypers = {"finetune": {"read_from": "pretrained.ckpt", "inherit_heads": inherit}}
    trainer = Trainer(parse(TrainingHypers, hypers))
    trainer.pretrained_targets = ["energy"]
    trainer._fit_baseline(model, dataset, ["energy/dft"])
    assert float(model.scale[1]) == pytest.approx(factor * float(model.scale[0]), rel=1e-12)
    request = {"energy/dft": ModelOutput(unit="kcal/mol", sample_kind="system")}
    for atoms in frames:
        result = model(systems_with_neighbors(model, [atoms], torch.float64), request)
        value = float(result["energy/dft"].block().values.detach().reshape(-1)[0])
        assert value == pytest.approx(atoms.info["dft"], abs=1e-6)


@pytest.mark.parametrize(
    "inherit, message",
    [
        ({"energy/DFT": "energy"}, "names no new energy target of the training set; did you "),
        ({"energy": "energy"}, "'energy' is a target of the pretrained model"),
        ({"energy/dft": "energy/xyz"}, "names 'energy/xyz', which the pretrained model does not"),
    ],
)
def test_inherit_heads_that_name_no_new_target_or_no_source_are_refused(inherit, message):
    """A typo in ``inherit_heads`` was silently ignored: the new head started from zero."""
    from mtt.data.targets import DatasetInfo, TargetInfo
    from mtt.errors import MttError
    from mtt.testing import random_model

    model = random_model("soap_bpnn", TINY_MODEL, torch.float64, generic=False)
    info = DatasetInfo(
        "angstrom", [1, 6, 8], {"energy/dft": TargetInfo("energy/dft", "eV", forces=False)}
    )
    with pytest.raises(MttError) as error:
        model.restart(info, inherit)
    assert str(error.value).startswith(
        f"'architecture.training.finetune.inherit_heads.{next(iter(inherit))}'"
    )
    assert message in str(error.value)


def test_dry_run_does_not_check_the_force_units_of_a_new_head(
    pretrained, tmp_path, monkeypatch, capsys
):
    """A new target's head starts at zero: its forces say nothing about the data's units
    (the check compared them with zero and warned of a factor 1e13)."""
    monkeypatch.chdir(tmp_path)
    os.symlink(pretrained["root"] / "dft_small.xyz", tmp_path / "dft_small.xyz")
    options = run(
        tmp_path, "new", {"finetune": {"read_from": pretrained["checkpoint"]}}, "dft_small.xyz"
    )
    set_targets(tmp_path / "new.yaml", {"energy/dft": {"key": "energy", "unit": "kcal/mol"}})
    assert main(["train", options, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "zero-shot errors" in out and "energy/dft/forces: spread" not in out
    assert "check the energy and length units" not in out


def _error(capsys, *argv) -> str:
    assert main(list(argv)) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    return line.removeprefix("mtt: error: ")


def test_fine_tuning_records_the_pretrained_model_and_refuses_other_hypers(
    pretrained, tmp_path, monkeypatch, capsys
):
    """The pretrained model keeps its hypers: a model option that differs was ignored
    without a word, and options.yaml recorded the defaults instead of the model trained."""
    monkeypatch.chdir(tmp_path)
    os.symlink(pretrained["root"] / "dft_small.xyz", tmp_path / "dft_small.xyz")
    section = {"read_from": pretrained["checkpoint"], "method": "heads"}
    path = run(tmp_path, "ft", {"finetune": section, "num_epochs": 1}, "dft_small.xyz")
    options = yaml.safe_load(Path(path).read_text())
    options["architecture"]["model"] = {"num_neurons_per_layer": 32}
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(options))
    message = _error(capsys, "train", "other.yaml", "-o", "other.pt")
    assert message.startswith(
        "option 'architecture.model.num_neurons_per_layer': the pretrained model "
        f"({pretrained['checkpoint']!r}) has 8, the options ask for 32; fine-tuning keeps"
    )
    del options["architecture"]["model"]  # the defaults (32 neurons) are not a request
    (tmp_path / "bare.yaml").write_text(yaml.safe_dump(options))
    assert main(["train", "bare.yaml", "-o", "bare.pt"]) == 0
    (recorded,) = glob.glob(str(tmp_path / "outputs" / "*" / "options.yaml"))
    model = yaml.safe_load(Path(recorded).read_text())["architecture"]["model"]
    assert (model["num_neurons_per_layer"], model["max_radial"]) == (8, 3)


def test_a_restart_continues_the_fine_tuning_it_was(pretrained, tmp_path, monkeypatch, capsys):
    """Without its finetune section a LoRA run would restart as plain training of the adapted
    model (the error was about a default cutoff); a changed rank was silently kept; a
    finetune section added to a run that was not one was accepted."""
    monkeypatch.chdir(tmp_path)
    os.symlink(pretrained["root"] / "dft_small.xyz", tmp_path / "dft_small.xyz")
    section = {"read_from": pretrained["checkpoint"], "method": "lora", "config": {"rank": 2}}
    path = run(tmp_path, "ft", {"finetune": section, "num_epochs": 1}, "dft_small.xyz")
    assert main(["train", path, "-o", "ft.pt"]) == 0
    (checkpoint,) = glob.glob(str(tmp_path / "outputs" / "*" / "model.ckpt"))
    longer = ["-r", "architecture.training.num_epochs=2", "--restart", checkpoint]
    message = _error(capsys, "train", path, *longer, "-r", "architecture.training.finetune=null")
    assert message.startswith(f"{checkpoint!r} is a checkpoint of a fine-tuning run (lora from")
    rank = "architecture.training.finetune.config={rank: 4}"
    message = _error(capsys, "train", path, *longer, "-r", rank)
    assert message.startswith(
        "option 'architecture.training.finetune.config': the run of "
        f"{checkpoint!r} fine-tuned with {{'rank': 2"
    )
    pretraining = [
        "--restart",
        pretrained["checkpoint"],
        "-r",
        "architecture.training.num_epochs=20",
    ]
    message = _error(capsys, "train", path, *pretraining)
    assert message.startswith(
        f"{pretrained['checkpoint']!r} is a checkpoint of a run that did not fine-tune"
    )
    assert main(["train", path, *longer, "-o", "more.pt"]) == 0  # the same section continues
    # the defaults written out are the same config (a restart with them was refused)
    same = "architecture.training.finetune.config={rank: 2, alpha: 8.0}"
    assert main(["train", path, *longer, "-r", same, "-o", "same.pt"]) == 0
    message = _error(
        capsys,
        "train",
        path,
        *longer,
        "-r",
        "architecture.training.finetune.reference_energies=keep",
    )
    assert message.startswith(
        "option 'architecture.training.finetune.reference_energies': the run of "
    )
    # another pretrained model under the same options (teacher, L2-SP and old-task report
    # switched mid-run without a word)
    other = tmp_path / "other.ckpt"
    shutil.copy(checkpoint, other)
    message = _error(
        capsys,
        "train",
        path,
        *longer,
        "-r",
        f"architecture.training.finetune.read_from={other}",
    )
    assert message.startswith(
        f"option 'architecture.training.finetune.read_from' ({str(other)!r}) holds another "
        f"model than the one the run of {checkpoint!r} fine-tuned"
    )


def _carbon_run(tmp_path, name, virial, finetune=None):
    """Options for a tiny model on carbon_reduced_100.xyz (forces under 'force', virials)."""
    training = {"num_epochs": 1, "batch_size": 4}
    if finetune:
        training["finetune"] = {"read_from": finetune}
    energy = {"unit": "eV", "forces": "force", "stress": False, "virial": virial}
    options = {
        "architecture": {"name": "soap_bpnn", "model": MODEL, "training": training},
        "training_set": {"systems": "carbon.xyz", "targets": {"energy": energy}},
        "validation_set": 0.25,
    }
    (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(options))
    return f"{name}.yaml"


def test_stress_labels_new_to_the_pretrained_model_train(tmp_path, monkeypatch):
    """A model pretrained without stress, fine-tuned on data with stress: the stress labels
    were read and counted in the log, then left out of the loss and the metrics."""
    monkeypatch.chdir(tmp_path)
    ase.io.write("carbon.xyz", ase.io.read(os.path.join(DATA, "carbon_reduced_100.xyz"), ":16"))
    pre = _carbon_run(tmp_path, "pre", virial=False)
    assert main(["train", pre, "-o", "pre.pt", "--output-dir", "pre"]) == 0
    (checkpoint,) = glob.glob(str(tmp_path / "pre" / "*" / "model.ckpt"))
    options = _carbon_run(tmp_path, "ft", virial=True, finetune=checkpoint)
    assert main(["train", options, "-o", "ft.pt", "--output-dir", "ft"]) == 0
    (csv,) = glob.glob(str(tmp_path / "ft" / "*" / "train.csv"))
    assert "train_energy/stress_rmse" in Path(csv).read_text().splitlines()[0]


def test_a_restart_without_the_pretrained_file_names_the_option(
    pretrained, tmp_path, monkeypatch, capsys
):
    """The pretrained checkpoint moved away after fine-tuning started: the restart said
    'checkpoint not found' of a file the user did not name on the command line."""
    monkeypatch.chdir(tmp_path)
    os.symlink(pretrained["root"] / "dft_small.xyz", tmp_path / "dft_small.xyz")
    shutil.copy(pretrained["checkpoint"], tmp_path / "pre.ckpt")
    section = {"read_from": "pre.ckpt", "method": "heads"}
    path = run(tmp_path, "ft", {"finetune": section, "num_epochs": 1}, "dft_small.xyz")
    assert main(["train", path, "-o", "ft.pt"]) == 0
    (checkpoint,) = glob.glob(str(tmp_path / "outputs" / "*" / "model.ckpt"))
    os.remove(tmp_path / "pre.ckpt")
    longer = ["-r", "architecture.training.num_epochs=2", "--restart", checkpoint]
    message = _error(capsys, "train", path, *longer, "-o", "more.pt")
    assert message.startswith(
        f"option 'architecture.training.finetune.read_from': {str(tmp_path / 'pre.ckpt')!r} "
        "does not exist"
    )


@pytest.mark.parametrize("learning_rate, worse", [(0.3, True), (1e-4, False)])
def test_a_fine_tune_worse_than_the_pretrained_model_is_said(
    pretrained, tmp_path, monkeypatch, capsys, learning_rate, worse
):
    """The pretrained model's validation loss before fine-tuning is recorded, and a best
    fine-tuned model above it is warned about with the learning rate to lower (pet at 1e-3
    went from 8.9 to 47 meV/atom on 36 structures, exported without a word)."""
    monkeypatch.chdir(tmp_path)
    os.symlink(pretrained["root"] / "dft_small.xyz", tmp_path / "dft_small.xyz")
    section = {"read_from": pretrained["checkpoint"], "method": "full"}
    training = {"finetune": section, "learning_rate": learning_rate}
    assert main(["train", run(tmp_path, "ft", training, "dft_small.xyz"), "-o", "ft.pt"]) == 0
    (path,) = glob.glob(str(tmp_path / "outputs" / "*" / "model.ckpt"))
    state = read_checkpoint(path)["trainer_state"]
    before = state["pretrained_validation"]["loss"]
    out = capsys.readouterr().out
    assert f"validation loss of the pretrained model before fine-tuning: {before:.6g}" in out
    assert (state["best_metric"] > before) == worse, (state["best_metric"], before)
    warned = "is worse than the pretrained model was before fine-tuning" in out
    assert warned == worse
    if worse:
        assert f"lower the learning rate ({learning_rate:g} now" in out


def test_a_restart_refuses_stress_labels_its_run_did_not_train(tmp_path, monkeypatch, capsys):
    """A run trained without stress, restarted with the data's virial declared: the labels
    were read and counted, then silently left out of the loss (fine-tuning trains them)."""
    monkeypatch.chdir(tmp_path)
    ase.io.write("carbon.xyz", ase.io.read(os.path.join(DATA, "carbon_reduced_100.xyz"), ":16"))
    first = _carbon_run(tmp_path, "first", virial=False)
    assert main(["train", first, "-o", "first.pt", "-r", "architecture.training.num_epochs=1"]) == 0
    (checkpoint,) = glob.glob(str(tmp_path / "outputs" / "*" / "model.ckpt"))
    again = _carbon_run(tmp_path, "again", virial=True)
    message = _error(capsys, "train", again, "--restart", checkpoint, "-o", "again.pt")
    assert message.startswith(
        f"the training data label the stress of 'energy', which the run of {checkpoint!r} did "
        "not train on"
    )
    assert "'training_set.targets.energy.stress: false' (and no virial)" in message


def test_a_config_for_a_method_without_one_says_so(pretrained, tmp_path, monkeypatch, capsys):
    """``method: full`` with lora's ``config: {rank: 2}`` said 'valid options here are none'."""
    monkeypatch.chdir(tmp_path)
    os.symlink(pretrained["root"] / "dft_small.xyz", tmp_path / "dft_small.xyz")
    section = {"read_from": pretrained["checkpoint"], "method": "full", "config": {"rank": 2}}
    path = run(tmp_path, "ft", {"finetune": section}, "dft_small.xyz")
    assert _error(capsys, "train", path, "--dry-run") == (
        "unknown option 'architecture.training.finetune.config.rank': "
        "'architecture.training.finetune.config' takes no options here; remove it"
    )
