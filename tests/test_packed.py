"""Packed data sets (``mtt data pack``) and streamed evaluation (``mtt eval``).

A packed directory must be a faithful copy of its files: the same structures and labels, the
same training run to the last digit, the same predictions; and it must fail loudly when
damaged. Memory is measured in ``benchmarks/memory.py``, not here.
"""

import csv
import json
import os
import shutil

import ase
import ase.io
import numpy as np
import pytest
import yaml

import mtt
from mtt.cli import main
from mtt.data.dataset import load_dataset
from mtt.data.packed import open_arrays, pack, pack_atoms
from mtt.errors import MttError
from mtt.evaluate import ParitySample, load_model, predict
from mtt.hypers import parse
from mtt.options import DatasetOptions

from .conftest import DATA
from .helpers import TINY_MODEL

ETHANOL = "ethanol_reduced_100.xyz"
CARBON = "carbon_reduced_100.xyz"
CARBON_TARGETS = {"energy": {"forces": "force", "stress": False, "virial": True}}


def dataset(systems, targets=None, where="training_set"):
    options = {"systems": systems} if targets is None else {"systems": systems, "targets": targets}
    return load_dataset(parse(DatasetOptions, options), ".", where)


def assert_same_data(packed, read):
    assert len(packed) == len(read)
    assert packed.targets == read.targets
    assert packed.atomic_types == read.atomic_types
    for (atoms, labels), (expected, expected_labels) in zip(packed, read):
        np.testing.assert_array_equal(atoms.numbers, expected.numbers)
        np.testing.assert_array_equal(atoms.positions, expected.positions)
        np.testing.assert_array_equal(atoms.cell[:], expected.cell[:])
        np.testing.assert_array_equal(atoms.pbc, expected.pbc)
        assert sorted(labels) == sorted(expected_labels)
        for key, value in labels.items():
            np.testing.assert_array_equal(value, expected_labels[key])


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("converted", ["energy", "energy/pbe0"])
def test_a_unit_conversion_scales_only_its_own_targets_labels(
    tmp_path, data_dir, packed, converted
):
    """Fine-tuning converts each target to the pretrained model's unit. Converting 'energy'
    also scaled the variant 'energy/pbe0' held in memory; a pack looked factors up by the
    name's first part, so 'energy/pbe0' was never converted (and took 'energy''s)."""
    frames = ase.io.read(os.path.join(data_dir, ETHANOL), ":4")
    for atoms in frames:
        atoms.info["e2"] = atoms.get_potential_energy() + 1.0
        atoms.arrays["f2"] = atoms.get_forces() + 1.0
    ase.io.write(tmp_path / "two.xyz", frames)
    systems = str(tmp_path / "two.xyz")
    if packed:
        pack([systems], tmp_path / "pk")
        systems = str(tmp_path / "pk")
    targets = {
        "energy": {"unit": "kcal/mol"},
        "energy/pbe0": {"key": "e2", "unit": "kcal/mol", "forces": {"key": "f2"}},
    }
    data = dataset(systems, targets)
    before = [dict(labels) for labels in data.labels]
    data.scale_target(converted, 0.5)
    for old, new in zip(before, data.labels):
        assert sorted(old) == sorted(new)
        for key in old:
            own = key in (converted, f"{converted}/forces")
            np.testing.assert_allclose(new[key], old[key] * (0.5 if own else 1.0), err_msg=key)


def test_pack_round_trip_equals_the_ase_frames(tmp_path, data_dir):
    """Structures and every label come back as ASE read them (positions, cells, pbc,
    energies, forces, a 3x3 virial turned into a stress), in the order of the files."""
    files = [os.path.join(data_dir, name) for name in (ETHANOL, CARBON)]
    manifest = pack(files, tmp_path / "both")
    frames = ase.io.read(files[0], ":") + ase.io.read(files[1], ":")
    assert manifest["structures"] == len(frames) == 200
    assert [s["structures"] for s in manifest["sources"]] == [100, 100]
    arrays = open_arrays(str(tmp_path / "both"))
    for i in (0, 99, 100, 199):
        atoms = arrays.atoms(i)
        np.testing.assert_array_equal(atoms.positions, frames[i].positions)
        np.testing.assert_array_equal(atoms.cell[:], frames[i].cell[:])
        np.testing.assert_array_equal(atoms.pbc, frames[i].pbc)
    assert arrays.value(("energy", False), 7) == frames[7].get_potential_energy()
    np.testing.assert_array_equal(arrays.value(("forces", True), 7), frames[7].get_forces())
    assert arrays.value(("forces", True), 150) is None  # carbon's forces are under 'force'
    np.testing.assert_array_equal(arrays.value(("virial", False), 150), frames[150].info["virial"])

    pack([files[1]], tmp_path / "carbon")
    assert_same_data(
        dataset(str(tmp_path / "carbon"), CARBON_TARGETS), dataset(files[1], CARBON_TARGETS)
    )
    pack([files[0]], tmp_path / "ethanol")
    targets = {"energy": {"unit": "kcal/mol"}}
    assert_same_data(dataset(str(tmp_path / "ethanol"), targets), dataset(files[0], targets))


def test_a_pack_takes_the_options_a_file_takes(tmp_path, data_dir):
    """An explicit virial key with the default stress (absent from carbon) reads the virial,
    as from the file: the default stress was required in a pack because both give the
    quantity 'energy/stress'."""
    carbon = os.path.join(data_dir, CARBON)
    pack([carbon], tmp_path / "carbon")
    targets = {"energy": {"forces": "force", "virial": {"key": "virial"}}}
    packed = dataset(str(tmp_path / "carbon"), targets)
    assert packed.targets["energy"].stress
    assert_same_data(packed, dataset(carbon, targets))


def carbon_with_stress(tmp_path, data_dir, sign):
    """Carbon frames (a virial, no stress) given a stress ``sign`` * -virial / volume (right
    for +1) under 'stress'."""
    frames = ase.io.read(os.path.join(data_dir, CARBON), ":10")
    for atoms in frames:
        virial = np.asarray(atoms.info["virial"]).reshape(3, 3)
        atoms.info["stress"] = -sign * virial / atoms.get_volume()
    ase.io.write(tmp_path / "c.xyz", frames)
    pack([str(tmp_path / "c.xyz")], tmp_path / "c", overwrite=True)
    return str(tmp_path / "c.xyz"), str(tmp_path / "c")


@pytest.mark.parametrize("source", ["file", "pack"])
def test_a_virial_that_disagrees_with_the_stress_is_refused_in_a_pack_too(
    tmp_path, data_dir, source
):
    targets = {"energy": {"forces": "force", "virial": {"key": "virial"}}}
    xyz, packed = carbon_with_stress(tmp_path, data_dir, sign=-1.0)
    with pytest.raises(MttError, match=r"^virial 'virial' of structure 0 of .* disagrees"):
        dataset(xyz if source == "file" else packed, targets)
    xyz, packed = carbon_with_stress(tmp_path, data_dir, sign=1.0)
    assert dataset(xyz if source == "file" else packed, targets).targets["energy"].stress


def test_default_forces_dropped_at_packing_are_refused_not_left_out(tmp_path, data_dir):
    """One structure whose forces have the wrong shape: read from the file, training is
    refused with that structure named; packed, the key was dropped from every structure and
    training went on without forces, the pack's info line alone saying so. Now refused too,
    with the reason; forces: false still trains on energies."""
    frames = ase.io.read(os.path.join(data_dir, ETHANOL), ":6")
    frames[3].calc.results["forces"] = frames[3].get_forces()[:, :2]
    manifest = pack_atoms(iter(frames), tmp_path / "pack")
    assert "forces" in manifest["dropped_keys"]
    with pytest.raises(MttError, match=r"^'forces' was not packed in .* \(structure 3 of .* has "):
        dataset(str(tmp_path / "pack"), {"energy": {"unit": "kcal/mol"}})
    data = dataset(str(tmp_path / "pack"), {"energy": {"unit": "kcal/mol", "forces": False}})
    assert not data.targets["energy"].forces


def test_labels_in_an_ase_database_rows_key_value_pairs_and_data(tmp_path, data_dir):
    """``db.write(atoms, dft_energy=..., data={"dft_forces": ...})`` keeps labels in a row's
    key-value pairs and data, which ase.io drops: the file read no labels ("keys found: []").
    Read, packed and streamed alike; calculator results in a row still work."""
    import ase.db

    frames = ase.io.read(os.path.join(data_dir, ETHANOL), ":4")
    with ase.db.connect(str(tmp_path / "kvp.db")) as db:
        for atoms in frames:
            plain = ase.Atoms(atoms.numbers, atoms.positions)
            db.write(plain, dft_energy=atoms.get_potential_energy(), data={"f": atoms.get_forces()})
    ase.db.connect(str(tmp_path / "calc.db")).write(frames[0])
    targets = {"energy": {"key": "dft_energy", "unit": "kcal/mol", "forces": "f"}}
    manifest = pack([str(tmp_path / "kvp.db")], tmp_path / "pack")
    assert {entry["key"] for entry in manifest["labels"]} == {"dft_energy", "f"}
    for source in (str(tmp_path / "kvp.db"), str(tmp_path / "pack")):
        data = dataset(source, targets)
        for atoms, labels in zip(frames, data.labels):
            np.testing.assert_allclose(labels["energy"], [atoms.get_potential_energy()])
            np.testing.assert_allclose(labels["energy/forces"], atoms.get_forces())
    (labels,) = dataset(str(tmp_path / "calc.db"), {"energy": {"unit": "kcal/mol"}}).labels
    np.testing.assert_allclose(labels["energy/forces"], frames[0].get_forces())


def test_labels_missing_in_some_structures_stay_masked(tmp_path, data_dir):
    """A key absent from some structures is masked there (not dropped, not zero); a key whose
    shape changes between structures is not a label and is left out, with the reason."""
    frames = ase.io.read(os.path.join(data_dir, ETHANOL), ":6")
    for index, atoms in enumerate(frames):
        if index % 2:
            atoms.calc.results.pop("forces")
        atoms.info["note"] = np.zeros(index + 1)  # shape changes: metadata
        atoms.info["dipole"] = np.arange(3.0) + index
    manifest = pack_atoms(iter(frames), tmp_path / "pack")
    assert "note" in manifest["dropped_keys"]
    with pytest.raises(MttError, match=r"^'note' was not packed in .* \(structure 1 of .* has "):
        dataset(str(tmp_path / "pack"), {"energy": {}, "mtt::note": {}})
    with pytest.raises(MttError, match=r"but it is in atoms.info, per structure: set '.*per_atom"):
        dataset(str(tmp_path / "pack"), {"energy": {}, "mtt::dipole": {"per_atom": True}})
    data = dataset(
        str(tmp_path / "pack"), {"energy": {}, "mtt::dipole": {"type": {"cartesian": {"rank": 1}}}}
    )
    assert ["energy/forces" in labels for labels in data.labels] == [True, False] * 3
    np.testing.assert_array_equal(data.labels[3]["mtt::dipole"].ravel(), [3.0, 4.0, 5.0])


def train_options(systems, epochs=2):
    return {
        "architecture": {
            "name": "soap_bpnn",
            "model": dict(TINY_MODEL, max_radial=2, max_angular=1, num_neurons_per_layer=4),
            "training": {"num_epochs": epochs, "batch_size": 8, "progress_bar": False},
        },
        "training_set": {"systems": systems, "targets": {"energy": {"unit": "kcal/mol"}}},
        "validation_set": 0.2,
        "test_set": 0.1,
        "seed": 3,
    }


def train(tmp_path, name, systems):
    output_dir = tmp_path / f"runs_{name}"
    model = mtt.train(
        train_options(systems), output=str(tmp_path / f"{name}.pt"), output_dir=str(output_dir)
    )
    (run,) = os.listdir(output_dir)
    with open(output_dir / run / "train.csv") as file:
        return model, list(csv.DictReader(file))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The same run on the xyz file and on its pack: (directory, models, train.csv rows)."""
    tmp_path = tmp_path_factory.mktemp("packed")
    xyz = os.path.join(DATA, ETHANOL)
    assert main(["data", "pack", xyz, "-o", str(tmp_path / "ethanol")]) == 0
    models, rows = {}, {}
    for name, systems in (("xyz", xyz), ("pack", str(tmp_path / "ethanol"))):
        models[name], rows[name] = train(tmp_path, name, systems)
    return tmp_path, models, rows


def test_training_on_the_pack_gives_the_metrics_of_the_file(trained):
    """Same seed, same split, same batches: every loss and error of train.csv is the same
    whether the structures come from the xyz file or from its pack (neighbour lists built
    per batch instead of once do not change a number)."""
    _, _, rows = trained
    assert len(rows["pack"]) == len(rows["xyz"]) == 2
    for packed, read in zip(rows["pack"], rows["xyz"]):
        assert packed.keys() == read.keys()
        for key in read:
            assert float(packed[key]) == pytest.approx(float(read[key]), rel=1e-12), key


def eval_yaml(path, systems):
    path.write_text(
        yaml.safe_dump({"systems": systems, "targets": {"energy": {"unit": "kcal/mol"}}})
    )
    return str(path)


def test_eval_streams_the_predictions_of_the_model(trained, data_dir, capsys):
    """``mtt eval`` written batch by batch gives each structure the model's in-memory
    prediction, from an xyz file or a pack, and the same errors for both."""
    tmp_path, models, _ = trained
    xyz = os.path.join(data_dir, ETHANOL)
    frames = ase.io.read(xyz, ":")
    expected = predict(load_model(models["xyz"]), frames, "energy", "angstrom", "kcal/mol")
    printed = {}
    for name, systems in (("xyz", xyz), ("pack", str(tmp_path / "ethanol"))):
        data = eval_yaml(tmp_path / f"eval_{name}.yaml", systems)
        output = str(tmp_path / f"pred_{name}.xyz")
        capsys.readouterr()
        assert main(["eval", models["xyz"], data, "-o", output, "-b", "7"]) == 0
        printed[name] = [line for line in capsys.readouterr().out.splitlines() if "RMSE" in line]
        written = ase.io.read(output, ":")
        assert len(written) == 100 and os.path.isfile(str(tmp_path / f"pred_{name}.png"))
        np.testing.assert_allclose(
            [a.get_potential_energy() for a in written], [p["energy"] for p in expected], rtol=1e-6
        )
        np.testing.assert_allclose(
            written[42].get_forces(), expected[42]["forces"], rtol=1e-5, atol=1e-6
        )
    assert printed["xyz"] == printed["pack"] and len(printed["xyz"]) == 2
    bare = str(tmp_path / "bare.xyz")
    assert main(["eval", models["xyz"], str(tmp_path / "ethanol"), "-o", bare]) == 0
    assert len(ase.io.read(bare, ":")) == 100 and not os.path.exists(tmp_path / "bare.png")
    manifest = (tmp_path / "ethanol" / "manifest.json").read_text()
    inside = str(tmp_path / "ethanol" / "manifest.json")
    assert main(["eval", models["xyz"], str(tmp_path / "ethanol"), "-o", inside, "-f"]) == 1
    assert "predictions are written as extended XYZ" in capsys.readouterr().err
    assert (tmp_path / "ethanol" / "manifest.json").read_text() == manifest


def test_parity_sample_is_bounded_and_reproducible():
    """Up to its size every structure is kept, in order; beyond, a uniform sample of that
    size, the same for the same data."""
    samples = [ParitySample(5), ParitySample(5)]
    for sample in samples:
        for i in range(1000):
            sample.offer({"q": (np.array([i]), np.array([i]))})
    assert len(samples[0].slots) == 5 and samples[0].seen == 1000
    np.testing.assert_array_equal(samples[0].arrays()[0]["q"], samples[1].arrays()[0]["q"])
    small = ParitySample(5)
    for i in range(3):
        small.offer({"q": (np.array([i]), np.array([i]))})
    np.testing.assert_array_equal(small.arrays()[0]["q"], [0, 1, 2])


def fail(capsys, *argv) -> str:
    capsys.readouterr()
    assert main(list(argv)) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("mtt: error: ")
    return line[len("mtt: error: ") :]


def test_pack_never_overwrites_what_a_user_made(tmp_path, data_dir, capsys, monkeypatch):
    """An existing directory is kept unless --overwrite; --overwrite replaces only a packed
    directory, and a failed pack leaves the old one intact."""
    monkeypatch.chdir(tmp_path)
    xyz = os.path.join(data_dir, ETHANOL)
    assert main(["data", "pack", xyz, "-o", "data"]) == 0
    message = fail(capsys, "data", "pack", xyz, "-o", "data")
    assert (
        message
        == "'data' already exists; choose another directory or pass --overwrite to replace it"
    )
    (tmp_path / "bad.xyz").write_text("not a structure\n")
    message = fail(capsys, "data", "pack", "bad.xyz", "-o", "data", "--overwrite")
    assert message.startswith("could not read structure 0 of 'bad.xyz': ")
    assert open_arrays("data").manifest["structures"] == 100
    assert sorted(os.listdir(tmp_path)) == ["bad.xyz", "data"]  # no temporary left over
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    message = fail(capsys, "data", "pack", xyz, "-o", "mine", "--overwrite")
    assert "is not a packed data set" in message
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    carbon = os.path.join(data_dir, CARBON)
    assert main(["data", "pack", carbon, "-o", "data", "--overwrite"]) == 0
    assert open_arrays("data").manifest["atomic_types"] == [6]

    # files a user put in a packed directory (here the very file being packed) are not
    # deleted with it
    shutil.copy(xyz, "data/mine.xyz")
    (tmp_path / "data" / "labels" / "notes.txt").write_text("keep me")
    message = fail(capsys, "data", "pack", "data/mine.xyz", "-o", "data", "--overwrite")
    assert message == (
        "'data' holds files 'mtt data pack' did not write ('labels/notes.txt', 'mine.xyz'), "
        "which --overwrite would delete with the directory; move them out, or choose another "
        "directory"
    )
    assert (tmp_path / "data" / "labels" / "notes.txt").read_text() == "keep me"
    assert open_arrays("data").manifest["atomic_types"] == [6]
    message = fail(capsys, "data", "pack", "data", "-o", "again")
    assert message.startswith("'data' is already a packed data set: train or evaluate from it")


def test_damaged_pack_is_a_clear_error(tmp_path, data_dir, capsys, monkeypatch):
    """A truncated manifest or array, or a newer format, is one line that says what to do."""
    monkeypatch.chdir(tmp_path)
    assert main(["data", "pack", os.path.join(data_dir, ETHANOL), "-o", "data"]) == 0
    manifest = (tmp_path / "data" / "manifest.json").read_text()

    message = fail(capsys, "data", "info", "nope")
    assert message == "no such directory: 'nope'; give a directory written by 'mtt data pack'"
    (tmp_path / "data" / "manifest.json").write_text(manifest[: len(manifest) // 2])
    message = fail(capsys, "data", "info", "data")
    assert message.startswith("'data' is a damaged packed data set (manifest.json cannot be read")
    assert message.endswith("pack the files again with 'mtt data pack FILE... -o data --overwrite'")

    newer = dict(json.loads(manifest), version=99)
    (tmp_path / "data" / "manifest.json").write_text(json.dumps(newer))
    message = fail(capsys, "data", "info", "data")
    assert message.startswith("'data' was packed in format version 99, but this mtt reads")

    (tmp_path / "data" / "manifest.json").write_text(manifest)
    for name, edit, expected in (
        (
            "numbers",
            lambda a: a.__setitem__(5, 200),
            "numbers.npy gives atom 5 the atomic "
            "number 200, which the manifest's elements [1, 6, 8] do not have",
        ),
        ("offsets", lambda a: a.__setitem__(4, a[6]), "offsets.npy does not split the atoms"),
    ):
        original = np.load(tmp_path / "data" / f"{name}.npy")
        edited = original.copy()
        edit(edited)
        np.save(tmp_path / "data" / f"{name}.npy", edited)
        message = fail(capsys, "data", "info", "data")
        assert message.startswith(f"'data' is a damaged packed data set ({expected}")
        np.save(tmp_path / "data" / f"{name}.npy", original)

    positions = tmp_path / "data" / "positions.npy"
    positions.write_bytes(positions.read_bytes()[:1000])
    with pytest.raises(MttError, match=r"damaged packed data set \(positions.npy: "):
        dataset(str(tmp_path / "data"), {"energy": {}})


def test_bad_structures_and_labels_name_the_file_and_index(tmp_path, data_dir, capsys, monkeypatch):
    """Bad input is reported at packing (structures) or when the targets are chosen (labels,
    keys), naming the structure, as for the xyz file."""
    monkeypatch.chdir(tmp_path)
    frames = ase.io.read(os.path.join(data_dir, ETHANOL), ":5")
    frames[3].positions[0, 0] = np.nan
    ase.io.write("nan.xyz", frames)
    message = fail(capsys, "data", "pack", "nan.xyz", "-o", "nan")
    assert (
        message
        == "structure 3 of 'nan.xyz' has NaN or infinite positions; fix or remove that frame"
    )
    assert not os.path.exists("nan")

    frames = ase.io.read(os.path.join(data_dir, ETHANOL), ":5")
    frames[2].calc.results["forces"][1, 2] = np.inf
    pack_atoms(frames, "inf")
    with pytest.raises(MttError, match=r"^forces 'forces' of structure 2 of '.*inf' is NaN or"):
        dataset("inf", {"energy": {}})
    with pytest.raises(MttError, match=r"has the energy key 'U0'; keys found: \['energy'\]; set"):
        dataset("inf", {"energy": {"key": "U0"}})
    with pytest.raises(MttError, match=r"has forces under the key 'f'; keys found: \['forces'\]"):
        dataset("inf", {"energy": {"forces": "f"}})


def test_unit_conversion_of_a_pack_applies_as_labels_are_read(tmp_path, data_dir):
    """Fine-tuning converts labels to the pretrained model's units in place; a pack, whose
    labels are read from disk each time, applies the factor when reading, in its subsets too."""
    pack([os.path.join(data_dir, ETHANOL)], tmp_path / "pack")
    packed = dataset(str(tmp_path / "pack"), {"energy": {}})
    before = packed.labels[5]
    packed.scale_target("energy", 0.5)
    after, subset = packed.labels[5], packed.subset([5], "part").labels[0]
    for key in ("energy", "energy/forces"):
        np.testing.assert_array_equal(after[key], 0.5 * before[key])
        np.testing.assert_array_equal(subset[key], after[key])


def test_streamed_evaluation_refuses_a_virial_that_disagrees_with_the_stress(tmp_path, data_dir):
    """``mtt eval`` of a file reads labels one structure at a time: a stress and a virial that
    disagree are refused there as in training, not scored against whichever came last."""
    from mtt.data.dataset import _specs
    from mtt.data.lazy import stream_labelled
    from mtt.data.packed import stream_structures

    options = parse(DatasetOptions, {"systems": "c.xyz", "targets": CARBON_TARGETS})
    options.targets["energy"].stress = True
    specs = _specs(options.targets, "eval")
    for sign, fails in ((-1.0, True), (1.0, False)):
        xyz, _ = carbon_with_stress(tmp_path, data_dir, sign)
        labelled = stream_labelled(stream_structures(xyz), specs, xyz, "eval")
        if fails:
            with pytest.raises(MttError, match=r"^virial 'virial' of structure 0 .* disagrees"):
                next(labelled)
        else:
            assert len([labels["energy/stress"] for _, labels in labelled]) == 10


def test_a_closed_pipe_on_stdout_does_not_print_tracebacks(tmp_path, data_dir):
    """``mtt data pack ... | head -1``: the reader is gone after one line; the pack is still
    written, and stderr does not fill with logging's tracebacks."""
    import subprocess
    import sys

    read, write = os.pipe()
    os.close(read)  # every write to stdout fails from the first line on
    completed = subprocess.run(
        [sys.executable, "-m", "mtt", "data", "pack", os.path.join(data_dir, ETHANOL)]
        + ["-o", str(tmp_path / "pack")],
        stdout=write,
        stderr=subprocess.PIPE,
        text=True,
        timeout=300,
    )
    os.close(write)
    assert (completed.returncode, completed.stderr) == (0, "")
    assert open_arrays(str(tmp_path / "pack")).manifest["structures"] == 100
