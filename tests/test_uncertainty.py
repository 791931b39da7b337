"""Energy uncertainties (LLPR): the last-layer features really are what the energies are a
linear function of, the calibration is honest on held-out data, distorted structures get
larger uncertainties, and the exported model serves them to ASE without mtt."""

import json
import os
import re
import textwrap

import ase.io
import numpy as np
import pytest
import torch
from helpers import TINY_MODEL
from metatensor.torch import Labels

import mtt
from mtt import architectures
from mtt.checkpoints import read_checkpoint
from mtt.data.graph import atoms_to_graph, collate_graphs
from mtt.errors import MttError
from mtt.testing import molecule, random_model
from mtt.testing._tools import _json_from_fresh_process, systems_with_neighbors
from mtt.uncertainty import uncertainty_name

DATA = os.path.join(os.path.dirname(__file__), "..", "examples", "data")
OPTIONS = {
    "architecture": {
        "name": "soap_bpnn",
        "model": TINY_MODEL,
        "training": {
            "num_epochs": 30,
            "batch_size": 8,
            "learning_rate": 3e-3,
            "uncertainty": "llpr",
            "progress_bar": False,
            "log_interval": 100,
        },
    },
    "training_set": {
        "systems": {"read_from": "ethanol.xyz", "length_unit": "angstrom"},
        "targets": {"energy": {"unit": "kcal/mol", "forces": "forces"}},
    },
    "validation_set": 0.25,
}


def test_output_names_follow_metatomic_variants():
    assert uncertainty_name("energy") == "energy_uncertainty"
    assert uncertainty_name("energy/pbe0") == "energy_uncertainty/pbe0"


def test_energies_are_a_linear_function_of_the_last_layer_features():
    """The per-atom energies equal the last-layer features times the stacked output layers
    (weights and bias of each element's last Linear), which is what LLPR assumes. A failure
    means the features are not the output layer's inputs and the uncertainties are wrong."""
    model = random_model("soap_bpnn", TINY_MODEL, torch.float64)
    graph = collate_graphs(
        [atoms_to_graph(molecule(s), model.cutoff, torch.float64) for s in (0, 1)]
    )
    species = model.type_to_index[graph.types]
    features = model.last_layer_features(graph, species)
    heads = [model.get_submodule(name) for name in model.head_modules()]
    weights = torch.cat([torch.cat([h.weight, h.bias[:, None]], dim=1) for h in heads], dim=1)
    expected = model.per_atom_energies(graph, species)
    linear = (features @ weights.T).detach()
    assert torch.allclose(linear, expected.detach(), rtol=0, atol=1e-12)
    assert expected.abs().max() > 1e-3  # a real comparison, not of zeros


@pytest.fixture(scope="module")
def calibrated_run(tmp_path_factory):
    """A tiny soap_bpnn trained on ethanol with ``uncertainty: llpr``."""
    work = tmp_path_factory.mktemp("llpr")
    frames = ase.io.read(os.path.join(DATA, "ethanol_reduced_100.xyz"), ":")
    ase.io.write(work / "ethanol.xyz", frames[:80])
    (work / "options.yaml").write_text(json.dumps(OPTIONS))
    cwd = os.getcwd()
    os.chdir(work)
    try:
        torch.manual_seed(0)
        mtt.train("options.yaml", output="model.pt")
    finally:
        os.chdir(cwd)
    run_dir = next((work / "outputs").iterdir())
    return work, run_dir, frames


def _uncertainties(model, frames, per_atom=False, selected=None):
    from metatomic.torch import ModelOutput

    systems = systems_with_neighbors(model, frames, model.baseline.dtype)
    output = ModelOutput(unit="kcal/mol", sample_kind="atom" if per_atom else "system")
    result = model(systems, {"energy_uncertainty": output}, selected)
    return result["energy_uncertainty"].block()


def test_calibration_is_kept_in_checkpoints_and_reset_by_fine_tuning(calibrated_run):
    """The final checkpoint holds the calibration; a model adapted to new data forgets it
    (its weights will change) rather than exporting a stale one."""
    _, run_dir, _ = calibrated_run
    checkpoint = read_checkpoint(str(run_dir / "model.ckpt"))
    assert checkpoint["uncertainty"] is not None
    model = architectures.load("soap_bpnn").__model__.load_checkpoint(checkpoint, "export")
    assert model.uncertainty.calibrated()
    assert "energy_uncertainty" in model.supported_outputs()
    model.restart(model.dataset_info)
    assert not model.uncertainty.calibrated()
    assert "energy_uncertainty" not in model.supported_outputs()


def test_uncertainties_are_calibrated_and_grow_away_from_the_data(calibrated_run):
    """On the held-out test structures the predicted standard deviations are of the size of
    the actual errors (their ratio within a factor 3), and structures squeezed far from the
    training data get much larger uncertainties than the training structures. Per-atom
    values respect ``selected_atoms``."""
    _, run_dir, frames = calibrated_run
    checkpoint = read_checkpoint(str(run_dir / "model.ckpt"))
    model = architectures.load("soap_bpnn").__model__.load_checkpoint(checkpoint, "export")
    model.eval()
    report = _report_on_frames(model, frames[80:])  # never seen in training
    assert 1 / 3 < report["rms_uncertainty"] / report["rms_error"] < 3
    squeezed = []
    for atoms in frames[:5]:
        atoms = atoms.copy()
        atoms.positions *= 0.8
        squeezed.append(atoms)
    normal = _uncertainties(model, frames[:5]).values.detach().reshape(-1)
    far = _uncertainties(model, squeezed).values.detach().reshape(-1)
    assert torch.all(normal > 0)
    assert far.mean() > 5 * normal.mean()
    selected = Labels(["system", "atom"], torch.tensor([[0, 2], [0, 0]], dtype=torch.int32))
    block = _uncertainties(model, frames[:1], per_atom=True, selected=selected)
    every = _uncertainties(model, frames[:1], per_atom=True).values.detach().reshape(-1)
    assert block.values.detach().reshape(-1).tolist() == pytest.approx(
        [float(every[2]), float(every[0])]
    )


def test_the_log_names_a_threshold_above_the_validation_atoms_uncertainties(calibrated_run):
    """Per-atom uncertainties exceed a structure's, so the ASE calculator's default threshold
    can warn on training data: the log reports the largest per-atom value on the validation
    set (the model's own per-atom output, in eV) and a threshold above it."""
    from mtt.uncertainty import atom_uncertainties

    _, run_dir, frames = calibrated_run
    checkpoint = read_checkpoint(str(run_dir / "model.ckpt"))
    model = architectures.load("soap_bpnn").__model__.load_checkpoint(checkpoint, "export")
    model.eval()
    sigmas = atom_uncertainties(model, [(atoms, {}) for atoms in frames[:3]])[:, 0]
    served = _uncertainties(model, frames[:3], per_atom=True).values.detach().reshape(-1)
    np.testing.assert_allclose(sigmas, served.double().numpy(), rtol=1e-5)
    log = (run_dir / "train.log").read_text()
    match = re.search(r"validation_set: energy per-atom uncertainties up to ([0-9.e-]+) eV", log)
    assert match is not None, log[-2000:]
    if float(match.group(1)) > 0.1:
        suggested = float(re.search(r"uncertainty_threshold=([0-9.e-]+) to warn", log).group(1))
        assert float(match.group(1)) <= suggested < 1.1 * float(match.group(1)) + 1e-12


def _report_on_frames(model, frames):
    from mtt.uncertainty import calibration_report

    dataset = [(atoms, {"energy": np.array([atoms.get_potential_energy()])}) for atoms in frames]
    return calibration_report(model, dataset)["energy"]


FRESH = textwrap.dedent(
    """
    import json, sys, warnings
    warnings.simplefilter("ignore")
    sys.modules["mtt"] = None
    import ase.io
    from metatomic.torch import ModelOutput
    from metatomic_ase import MetatomicCalculator

    calculator = MetatomicCalculator(sys.argv[1], extensions_directory=None)
    atoms = ase.io.read(sys.argv[2])
    outputs = {"energy_uncertainty": ModelOutput(unit="eV", sample_kind="system")}
    result = calculator.run_model(atoms, outputs)
    print(json.dumps(float(result["energy_uncertainty"].block().values[0, 0])))
    """
)


def test_exported_model_serves_uncertainties_to_ase_without_mtt(calibrated_run):
    """The ``.pt`` alone gives ASE the structure's uncertainty, converted to eV."""
    work, run_dir, frames = calibrated_run
    checkpoint = read_checkpoint(str(run_dir / "model.ckpt"))
    model = architectures.load("soap_bpnn").__model__.load_checkpoint(checkpoint, "export")
    sigma = _uncertainties(model.eval(), frames[:1]).values.detach()
    expected = float(sigma[0, 0]) / 23.060547830619029
    ase.io.write(work / "one.xyz", frames[0])
    arguments = [str(work / "model.pt"), str(work / "one.xyz")]
    value = _json_from_fresh_process(FRESH, arguments, str(work), "ASE without mtt")
    assert value == pytest.approx(expected, rel=1e-6)


def test_llpr_is_refused_up_front_for_architectures_without_last_layer_features(
    tmp_path, data_dir, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    frames = ase.io.read(os.path.join(data_dir, "ethanol_reduced_100.xyz"), ":8")
    ase.io.write(tmp_path / "ethanol.xyz", frames)
    options = json.loads(json.dumps(OPTIONS))
    options["architecture"] = {
        "name": "pet",
        "model": {"cutoff": 3.0, "d_pet": 8, "num_heads": 1, "num_gnn_layers": 1},
        "training": {"num_epochs": 1, "uncertainty": "llpr"},
    }
    with pytest.raises(MttError, match="architecture.training.uncertainty"):
        mtt.train(options, output="pet.pt")
    assert not os.path.exists("pet.pt")
    # with the other option errors, before any data is read (the file need not exist)
    from mtt.api import validate_options

    options["training_set"] = "nowhere.xyz"
    options["sed"] = 3
    with pytest.raises(MttError) as error:
        validate_options(options)
    assert "'llpr' is not available for it" in str(error.value)
    assert "'sed'" in str(error.value)


def test_llpr_without_an_energy_target_is_refused_before_training(tmp_path, data_dir, monkeypatch):
    """Uncertainties are those of energies: with only generic targets the run stopped after
    its last epoch, leaving no model; now it stops before the first."""
    monkeypatch.chdir(tmp_path)
    frames = ase.io.read(os.path.join(data_dir, "qm9_reduced_100.xyz"), ":8")
    ase.io.write(tmp_path / "qm9.xyz", frames)
    options = json.loads(json.dumps(OPTIONS))
    options["training_set"] = {"systems": "qm9.xyz", "targets": {"mtt::mu": {"unit": "D"}}}
    options["architecture"]["training"].update(num_epochs=1, uncertainty="llpr")
    with pytest.raises(MttError, match="^option 'architecture.training.uncertainty': 'llpr' gives"):
        mtt.train(options, output="mu.pt", output_dir="runs")
    assert not os.path.exists("mu.pt")
    assert not [name for _, _, files in os.walk("runs") for name in files if ".ckpt" in name]


def assert_same_calibration(model, first, second) -> None:
    """``fit_uncertainty`` on the (training, calibration) sets ``first`` and ``second``
    leaves the same whitening and scales."""
    from mtt import uncertainty

    uncertainty.fit_uncertainty(model, *first)
    expected = model.uncertainty.state_dict()
    uncertainty.fit_uncertainty(model, *second)
    for name, value in model.uncertainty.state_dict().items():
        torch.testing.assert_close(expected[name], value)


def test_a_validation_set_too_small_to_calibrate_falls_back_to_the_training_set(monkeypatch):
    """One validation structure fits every regulariser equally: the choice was arbitrary and
    gave per-atom uncertainties of 1e4 eV, without a word. Below 5 structures the training
    set calibrates, as without a validation set, and a warning says so."""
    from mtt import uncertainty
    from mtt.data.dataset import dataset_from_atoms
    from mtt.options import EnergyTargetOptions

    frames = ase.io.read(os.path.join(DATA, "ethanol_reduced_100.xyz"), ":12")
    targets = {"energy": EnergyTargetOptions(unit="kcal/mol")}
    train = dataset_from_atoms(frames[:10], targets)
    small = dataset_from_atoms(frames[10:11], targets)
    warnings = []
    monkeypatch.setattr(uncertainty.LOGGER, "warning", lambda *a: warnings.append(a[0] % a[1:]))
    model = random_model("soap_bpnn", TINY_MODEL, torch.float64)
    assert_same_calibration(model, (train, small), (train, train))
    assert warnings == [
        "the validation set has 1 structure(s), too few to calibrate energy uncertainties (at "
        "least 5): calibrated on the training set, where errors are smaller than on new "
        "structures; give a larger validation_set"
    ]


def test_structures_without_energies_neither_fit_nor_calibrate_silently(monkeypatch):
    """Training structures without an energy label entered the covariance (the model was
    confident on geometries it had no energy for: 3x smaller uncertainties); a target
    without labels to calibrate it was left at a scale of 1 without a word."""
    from mtt import uncertainty
    from mtt.data.dataset import dataset_from_atoms
    from mtt.options import EnergyTargetOptions

    frames = ase.io.read(os.path.join(DATA, "ethanol_reduced_100.xyz"), ":20")
    targets = {"energy": EnergyTargetOptions(unit="kcal/mol")}
    squeezed = []
    for atoms in frames[10:]:
        atoms = atoms.copy()  # (without the calculator: no energy label)
        atoms.positions *= 0.85
        squeezed.append(atoms)
    warnings = []
    monkeypatch.setattr(uncertainty.LOGGER, "warning", lambda *a: warnings.append(a[0] % a[1:]))
    labelled = dataset_from_atoms(frames[:10], targets)
    mixed = dataset_from_atoms(frames[:10] + squeezed, targets)
    model = random_model("soap_bpnn", TINY_MODEL, torch.float64)
    assert_same_calibration(model, (labelled, labelled), (mixed, labelled))
    assert warnings == []
    unlabelled = dataset_from_atoms(frames[10:], targets)
    for labels in unlabelled.labels:  # (a set of other labels only, as after fine-tuning)
        labels.clear()
    uncertainty.fit_uncertainty(model, labelled, unlabelled)
    assert warnings == [
        "energy_uncertainty: no 'energy' labels to calibrate it with, so it is uncalibrated (a "
        "scale of 1 in the target's unit): do not trust it, or add such labels to the "
        "validation set"
    ]


def test_exporting_an_epoch_checkpoint_says_it_has_no_uncertainties(
    calibrated_run, tmp_path, caplog
):
    """The run calibrates at its end: its epoch checkpoints exported models without
    energy_uncertainty, without a word."""
    _, run_dir, _ = calibrated_run
    (epoch,) = (run_dir / "checkpoints").glob("epoch_*.ckpt")
    with caplog.at_level("WARNING", logger="mtt"):
        mtt.export(str(run_dir / "model.ckpt"), str(tmp_path / "final.pt"))
        assert caplog.messages == []
        mtt.export(str(epoch), str(tmp_path / "epoch.pt"))
    assert caplog.messages == [
        f"{epoch} is from before its run calibrated the energy uncertainties (at the end): the "
        "exported model has none; export the run's model.ckpt for them"
    ]
