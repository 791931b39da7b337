"""Generic targets on real data: QM7-X polarizabilities (rank-2 tensors) and QM9 properties
(dipole magnitude and HOMO-LUMO gap, with the energy in Hartree)."""

import glob
import os
from types import SimpleNamespace

import ase.io
import numpy as np
import pytest
import yaml
from helpers import TINY_MODEL

from mtt import api
from mtt.cli import main
from mtt.data.targets import TargetInfo
from mtt.evaluate import generic_outputs, load_model
from mtt.training.composition import generic_normalization


def train(tmp_path, data_dir, data, targets, epochs=30):
    frames = ase.io.read(os.path.join(data_dir, data), ":")
    rng = np.random.default_rng(0)
    order = rng.permutation(len(frames))
    ase.io.write(tmp_path / "train.xyz", [frames[i] for i in order[20:]])
    ase.io.write(tmp_path / "val.xyz", [frames[i] for i in order[:20]])
    options = {
        "architecture": {
            "name": "soap_bpnn",
            "model": TINY_MODEL,
            "training": {"num_epochs": epochs, "batch_size": 8, "learning_rate": 0.005},
        },
        "training_set": {"systems": "train.xyz", "targets": targets},
        "validation_set": "val.xyz",
    }
    (tmp_path / "options.yaml").write_text(yaml.safe_dump(options))
    assert main(["train", "options.yaml"]) == 0
    return [frames[i] for i in order[:20]]


def test_polarizability_tensor_learnt_and_exported(tmp_path, data_dir, monkeypatch):
    """A rank-2 target (QM7-X polarizability, bohr^3) ends with a validation error well below
    the spread of the labels, and the exported model returns symmetric 3x3 tensors."""
    monkeypatch.chdir(tmp_path)
    val = train(
        tmp_path,
        data_dir,
        "qm7x_reduced_100.xyz",
        {
            "mtt::polarizability": {
                "key": "polarizability",
                "unit": "bohr^3",
                "type": {"cartesian": {"rank": 2}},
            }
        },
    )
    model = load_model("model.pt")
    assert model.capabilities().outputs["mtt::polarizability"].unit == "bohr^3"
    predicted = np.array(
        [
            r["mtt::polarizability"][..., 0]
            for r in generic_outputs(model, val, ["mtt::polarizability"], "angstrom")
        ]
    )
    labels = np.array([np.reshape(a.info["polarizability"], (3, 3)) for a in val])
    np.testing.assert_allclose(predicted, predicted.transpose(0, 2, 1), atol=1e-3)
    error = np.sqrt(np.mean((predicted - labels) ** 2))
    spread = np.sqrt(np.mean((labels - labels.mean(axis=0)) ** 2))
    assert error < 0.7 * spread, (error, spread)  # the isotropic mean alone gives 1.0

    (tmp_path / "eval.yaml").write_text(
        yaml.safe_dump(
            {
                "systems": "val.xyz",
                "targets": {
                    "mtt::polarizability": {
                        "key": "polarizability",
                        "unit": "bohr^3",
                        "type": {"cartesian": {"rank": 2}},
                    }
                },
            }
        )
    )
    assert main(["eval", "model.pt", "eval.yaml", "-o", "pred.xyz"]) == 0
    written = ase.io.read("pred.xyz", ":")
    np.testing.assert_allclose(
        np.reshape(written[0].info["polarizability"], (3, 3)), predicted[0], rtol=1e-5
    )
    # the label under the same key is kept next to the prediction, not replaced by it
    np.testing.assert_allclose(
        np.reshape(written[0].info["polarizability_label"], (3, 3)), labels[0], rtol=1e-12
    )


def test_qm9_energy_and_scalar_properties(tmp_path, data_dir, monkeypatch):
    """Energy (U0, Hartree) together with two graph properties: the dipole magnitude (a sum
    over atoms) and the gap (a mean): each ends below the error of predicting the mean."""
    monkeypatch.chdir(tmp_path)
    val = train(
        tmp_path,
        data_dir,
        "qm9_reduced_100.xyz",
        {
            "energy": {"key": "U0", "unit": "Hartree"},
            "mtt::mu": {"unit": "D"},
            "mtt::gap": {"key": "epsgap", "unit": "Hartree", "reduction": "mean"},
        },
    )
    # the run's expanded options can be run again: no energy defaults (forces: true) on
    # generic targets, which options.yaml refuses
    (run_options,) = glob.glob(str(tmp_path / "outputs" / "*" / "options.yaml"))
    expanded = api.validate_options(api.read_options(run_options)).expanded
    mu = expanded["training_set"]["targets"]["mtt::mu"]
    assert (mu["forces"], mu["stress"], mu["virial"]) == (False, False, False)
    results = generic_outputs(load_model("model.pt"), val, ["mtt::mu", "mtt::gap"], "angstrom")
    for name, key in (("mtt::mu", "mu"), ("mtt::gap", "epsgap")):
        predicted = np.array([r[name][0] for r in results])
        labels = np.array([a.info[key] for a in val])
        assert np.sqrt(np.mean((predicted - labels) ** 2)) < 0.9 * labels.std(), name


@pytest.mark.parametrize(
    "target, message",
    [
        ({"type": {"cartesian": {"rank": 3}}}, "must be scalar, {cartesian: {rank: 1}}"),
        ({"type": {"cartesian": {"rank": 1}}}, "has 1 numbers, expected 3"),
        ({"forces": "force"}, "only energies have forces"),
        ({"type": {"cartesian": {"rank": 1}}, "reduction": "max"}, "max is only for scalars"),
        ({"key": "nothere"}, "has 'nothere' in atoms.info"),
        (
            {"per_atom": True},
            "has 'mu' in atoms.arrays, but it is in atoms.info, per structure: "
            "set 'training_set.targets.mtt::mu.per_atom: false'",
        ),
    ],
)
def test_bad_generic_targets(tmp_path, data_dir, monkeypatch, capsys, target, message):
    """Malformed generic targets are refused with a one-line error naming the problem."""
    monkeypatch.chdir(tmp_path)
    frames = ase.io.read(os.path.join(data_dir, "qm9_reduced_100.xyz"), ":10")
    ase.io.write("data.xyz", frames)
    options = {
        "architecture": {"name": "soap_bpnn"},
        "training_set": {
            "systems": "data.xyz",
            "targets": {"mtt::mu": dict({"unit": "D"}, **target)},
        },
    }
    (tmp_path / "options.yaml").write_text(yaml.safe_dump(options))
    assert main(["train", "options.yaml"]) == 1
    assert message in capsys.readouterr().err


def test_rank_2_labels_that_are_not_symmetric_are_reported(data_dir, caplog):
    """QM7-X polarizabilities are symmetric; the same numbers with one off-diagonal entry
    changed (or read in a wrong order) are not: a warning names the structure, since the
    model predicts symmetric tensors and would learn only their symmetric part."""
    from mtt.data.dataset import dataset_from_atoms
    from mtt.options import TargetOptions

    frames = ase.io.read(os.path.join(data_dir, "qm7x_reduced_100.xyz"), ":5")
    target = {"mtt::polar": TargetOptions(key="polarizability", type={"cartesian": {"rank": 2}})}
    with caplog.at_level("WARNING", logger="mtt"):
        dataset_from_atoms(frames, target)
    assert not [line for line in caplog.messages if "not symmetric" in line]
    frames[3].info["polarizability"] = np.array(frames[3].info["polarizability"], float)
    frames[3].info["polarizability"][1] += 30.0  # T_01
    with caplog.at_level("WARNING", logger="mtt"):
        dataset_from_atoms(frames, target)
    (warning,) = [line for line in caplog.messages if "not symmetric" in line]
    assert "|T_ij - T_ji| up to 30" in warning and "structure 3" in warning


def test_rank_2_normalisation_removes_the_mean_isotropic_part(data_dir):
    """Rank-2 labels are shifted by their mean isotropic part per atom (times the identity,
    which rotations leave alone) and scaled by their spread about it. QM7-X polarizabilities
    are mostly isotropic: scaled by their size instead, the head's numbers varied by a few
    per cent, and the validation error was 40 % above metatrain's (below it with the shift)."""
    frames = ase.io.read(os.path.join(data_dir, "qm7x_reduced_100.xyz"), ":")
    values = [np.reshape(a.info["polarizability"], (1, 9, 1)) for a in frames]
    dataset = SimpleNamespace(frames=frames, labels=[{"mtt::p": v} for v in values])
    target = TargetInfo("mtt::p", "bohr^3", kind="generic", rank=2)
    shift, spread = generic_normalization(dataset, target)

    per_atom = np.array([v[0, :, 0].reshape(3, 3) / len(a) for v, a in zip(values, frames)])
    expected_shift = np.mean(np.trace(per_atom, axis1=1, axis2=2) / 3)
    np.testing.assert_allclose(shift, expected_shift, rtol=1e-12)
    about = per_atom - expected_shift * np.eye(3)
    np.testing.assert_allclose(spread, np.sqrt(np.mean(about**2)), rtol=1e-12)
    assert spread < 0.3 * np.sqrt(np.mean(per_atom**2))  # the isotropic part dominated (0.29)

    vector = TargetInfo("mtt::v", "D", kind="generic", rank=1)
    dipoles = SimpleNamespace(frames=frames, labels=[{"mtt::v": v[:, :3]} for v in values])
    assert generic_normalization(dipoles, vector)[0] == 0.0  # no constant vector rotates
