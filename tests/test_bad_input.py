"""Bad input never crashes: each problem is one line naming the key, file or structure and saying
how to fix it, the exit status is 1, and no model.pt or checkpoint (not even half of one) is left.

Every test drives the real command line in-process (``mtt.cli.main``) in a fresh directory; the
two property tests throw random options and random structures at the validators.
"""

import copy
import errno
import math
import os
import pickle
import shutil
import signal
import zipfile
from contextlib import contextmanager
from functools import cache
from pathlib import Path

import ase
import ase.io
import numpy as np
import pytest
import torch
import yaml
from ase.calculators.singlepoint import SinglePointCalculator
from helpers import fill_disk
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mtt.api import validate_options
from mtt.cli import main
from mtt.data.dataset import dataset_from_atoms, load_dataset
from mtt.errors import MttError, OptionsError
from mtt.options import DatasetOptions, EnergyTargetOptions, GradientOptions

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def example(name: str) -> Path:
    """A shipped data file (in ``examples/data``, or beside the example using it)."""
    found = [p for p in (EXAMPLES / "data", EXAMPLES / "ethanol", EXAMPLES) if (p / name).is_file()]
    return (found[0] if found else EXAMPLES / "data") / name


ETHANOL = example("ethanol_reduced_100.xyz")
CARBON = example("carbon_reduced_100.xyz")
HINT = "mtt: the full traceback is in "  # followed by the run's train.log
PREFIX = "mtt: error: "

# Options of a tiny model that trains in a few seconds on a dozen ethanol structures.
OPTIONS = {
    "architecture": {
        "name": "soap_bpnn",
        "model": {"cutoff": 3.0, "max_radial": 2, "max_angular": 1, "num_neurons_per_layer": 4},
        "training": {"num_epochs": 1, "batch_size": 4},
    },
    "training_set": {"systems": "train.xyz", "targets": {"energy": {"unit": "kcal/mol"}}},
    "validation_set": 0.2,
}


@cache
def _read(path: Path, count: int):
    return ase.io.read(path, f":{count}")


def _copy(atoms: ase.Atoms) -> ase.Atoms:
    """A copy with its labels (``Atoms.copy`` drops the calculator that holds them)."""
    copy = atoms.copy()
    if atoms.calc is not None:
        copy.calc = SinglePointCalculator(copy, **atoms.calc.results)
    return copy


def ethanol(count: int = 12):
    return [_copy(atoms) for atoms in _read(ETHANOL, count)]


def carbon(count: int = 3):
    return [_copy(atoms) for atoms in _read(CARBON, count)]


def with_labels(atoms: ase.Atoms, **results) -> ase.Atoms:
    """``atoms`` with exactly these calculator results (what extxyz writes as labels)."""
    atoms = atoms.copy()
    atoms.calc = SinglePointCalculator(atoms, **results)
    return atoms


def options(**changes):
    """The tiny options with changes at ``__``-separated paths, e.g. ``architecture__name="x"``."""
    result = copy.deepcopy(OPTIONS)
    for path, value in changes.items():
        *parents, last = path.split("__")
        node = result
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return result


def write_options(data, name: str = "options.yaml") -> str:
    with open(name, "w") as file:
        yaml.safe_dump(data, file)
    return name


def artifacts(root: Path):
    """Files a run must not leave behind when it fails: models, checkpoints, temporary files."""
    return {
        (path, path.stat().st_mtime_ns)
        for path in root.rglob("*")
        if path.is_file() and (path.suffix in (".pt", ".ckpt") or path.name.startswith("."))
    }


@pytest.fixture
def work(tmp_path, monkeypatch):
    """An empty working directory holding a dozen ethanol structures as ``train.xyz``."""
    monkeypatch.chdir(tmp_path)
    ase.io.write("train.xyz", ethanol())
    return tmp_path


def run(capsys, *argv):
    """Exit status and the error lines (without the ``mtt: error:`` prefix) of one command."""
    status = main([str(arg) for arg in argv])
    err = capsys.readouterr().err
    lines = err.splitlines()
    problems = [line[len(PREFIX) :] for line in lines if line.startswith(PREFIX)]
    noise = [line for line in lines if not line.startswith(PREFIX) and not line.startswith(HINT)]
    assert not noise, f"unexpected output on stderr:\n{err}"
    return status, problems


def fail(capsys, *argv, count: int = 1):
    """Run a command that must refuse its input: status 1, ``count`` one-line problems, and no
    model, checkpoint or temporary file created or touched. Returns the problems' text."""
    root = Path.cwd()
    before = artifacts(root)
    runs = set(root.glob("outputs/*"))
    status, problems = run(capsys, *argv)
    assert status == 1, problems
    assert len(problems) == count, problems
    assert artifacts(root) == before, "a failed command left a model or checkpoint behind"
    assert set(root.glob("outputs/*")) == runs, "a refused run left its run directory behind"
    return problems[0] if count == 1 else problems


def train(capsys, options_file="options.yaml"):
    return fail(capsys, "train", options_file)


# ------------------------------------------------------------------------------ options


def test_relative_paths_start_beside_the_options_and_fall_back_to_here(work, capsys):
    """metatrain reads relative paths from the working directory, mtt from the options'
    folder: a file only here is read from here; a second, different file of that name
    beside the options is read, with a warning naming both."""
    Path("cfg").mkdir()
    write_options(options(validation_set=0.25), "cfg/options.yaml")
    assert main(["train", "cfg/options.yaml", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "'train.xyz' is not beside the options file: read from the working directory" in out
    ase.io.write("cfg/train.xyz", ethanol(8))
    assert main(["train", "cfg/options.yaml", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert (
        f"'train.xyz' is read from the options file's folder ({work / 'cfg' / 'train.xyz'}); "
        "the working directory holds another 'train.xyz', which metatrain would read: give "
        "an absolute path to pick one"
    ) in out
    assert "training_set: 6 structures" in out  # 8 beside the options, 2 for validation


@pytest.mark.parametrize("argv", [["--bogus"], ["-b", "abc"], []])
def test_a_command_line_mistake_exits_1_with_the_commands_usage(work, capsys, argv):
    """argparse's status 2 is mtt's status for a bug; and an unknown flag after the command
    printed mtt's top-level usage, not the command's."""
    write_options(options())
    command = ["eval", "model.pt", "train.xyz", *argv] if argv[:1] == ["-b"] else ["train"]
    command += [] if argv[:1] == ["-b"] else (["options.yaml", *argv] if argv else [])
    with pytest.raises(SystemExit) as exit:
        main(command)
    assert exit.value.code == 1
    assert f"usage: mtt {command[0]} " in capsys.readouterr().err


def test_a_device_as_options_or_a_directory_as_restart_is_named_for_what_it_is(work, capsys):
    """They were said not to exist ('options file not found', 'no such checkpoint file')."""
    assert fail(capsys, "train", "/dev/null") == (
        "'/dev/null' is not a file (a device or pipe); give the options file"
    )
    write_options(options())
    Path("outputs").mkdir()
    message = fail(capsys, "train", "options.yaml", "--restart", "outputs")
    assert message.startswith("--restart 'outputs': is a directory; give a .ckpt written by")
    assert message.endswith("or 'auto' (with --output-dir for runs elsewhere than outputs/)")


def test_a_file_system_refusal_is_the_users_error_not_a_bug(work, capsys, monkeypatch):
    """A full disk, a read-only or forbidden file met anywhere is one line naming the file
    (status 1), not an internal error asking for a bug report (status 2)."""
    import mtt.cli.train

    def refused(args):
        raise PermissionError(13, "Permission denied", "/shared/outputs/x.pt")

    monkeypatch.setattr(mtt.cli.train, "run", refused)
    assert main(["train", "options.yaml"]) == 1
    assert capsys.readouterr().err == "mtt: error: '/shared/outputs/x.pt': Permission denied\n"


def test_an_internal_error_keeps_earlier_reports(work, capsys, monkeypatch):
    """The traceback of a bug went to ./mtt-error.log, replacing the report of the last one."""
    import mtt.cli.train

    def bug(args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(mtt.cli.train, "run", bug)
    Path("mtt-error.log").write_text("my earlier report")
    assert main(["train", "options.yaml"]) == 2
    assert main(["train", "options.yaml"]) == 2
    assert Path("mtt-error.log").read_text() == "my earlier report"
    assert len(list(Path(".").glob("mtt-error-*.log"))) == 2
    assert "please report this bug with mtt-error-" in capsys.readouterr().err


def test_unknown_top_level_option(work, capsys):
    write_options(options(seeed=1))
    assert train(capsys) == "unknown option 'seeed'; did you mean 'seed'?"


def test_unknown_nested_option(work, capsys):
    write_options(options(architecture__training__num_epoch=3))
    message = train(capsys)
    assert message == "unknown option 'architecture.training.num_epoch'; did you mean 'num_epochs'?"


def test_unknown_option_without_close_match_lists_valid_ones(work, capsys):
    write_options(options(training_set__targets__energy__colour="blue"))
    message = train(capsys)
    assert "unknown option 'training_set.targets.energy.colour'" in message
    assert "valid options here are" in message and "'unit'" in message


def test_wrong_type(work, capsys):
    write_options(options(architecture__training__batch_size="ten"))
    message = train(capsys)
    assert (
        message == "option 'architecture.training.batch_size' must be an integer, got 'ten' (str)"
    )


def test_several_problems_reported_at_once(work, capsys):
    write_options(
        options(
            architecture__training__num_epoch=3,
            architecture__training__batch_size="ten",
            architecture__model__cutof=4.0,
        )
    )
    problems = fail(capsys, "train", "options.yaml", count=3)
    assert any("'architecture.training.num_epoch'" in p and "'num_epochs'" in p for p in problems)
    assert any("'architecture.training.batch_size' must be an integer" in p for p in problems)
    assert any("'architecture.model.cutof'" in p and "'cutoff'" in p for p in problems)


def test_several_top_level_problems_reported_at_once(work, capsys):
    write_options(options(seeed=1, device=3))
    problems = fail(capsys, "train", "options.yaml", count=2)
    assert any("'seeed'" in p and "did you mean 'seed'" in p for p in problems)
    assert any("option 'device' must be a string, got 3 (int)" == p for p in problems)


def test_top_level_and_architecture_problems_reported_at_once(work, capsys):
    write_options(options(seeed=1, architecture__training__batch_size="ten"))
    fail(capsys, "train", "options.yaml", count=2)


@pytest.mark.parametrize(
    ("key", "value"), [("training", {"learning_rate": math.nan}), ("model", {"cutoff": math.inf})]
)
def test_nan_or_infinite_hypers_are_refused(key, value):
    raw = options(**{f"architecture__{key}": value})
    with pytest.raises(OptionsError, match=f"architecture.{key}.{next(iter(value))}"):
        validate_options(raw)


def test_missing_options_file(work, capsys):
    message = train(capsys, "nope.yaml")
    assert "'nope.yaml'" in message and "not found" in message


def test_options_file_that_is_not_yaml(work, capsys):
    Path("options.yaml").write_text("architecture:\n  name: [soap_bpnn\ntraining_set: a.xyz\n")
    message = train(capsys)
    assert message.startswith("'options.yaml' is not valid YAML at line ")


def test_options_file_that_holds_a_list(work, capsys):
    Path("options.yaml").write_text("- architecture\n- training_set\n")
    message = train(capsys)
    assert "'options.yaml'" in message and "must hold a mapping of options" in message


def test_malformed_override(work, capsys):
    write_options(options())
    message = fail(capsys, "train", "options.yaml", "-r", "architecture.training.num_epochs")
    assert message == (
        "malformed override 'architecture.training.num_epochs'; expected the form -r key.path=value"
    )


def test_unknown_architecture(work, capsys):
    write_options(options(architecture__name="soap_bpn"))
    message = train(capsys)
    assert "'soap_bpn'" in message and "'architecture.name'" in message
    assert "did you mean 'soap_bpnn'?" in message


@pytest.mark.parametrize(
    ("key", "unit", "expected"),
    [
        ("training_set__targets__energy__unit", "kcals", "unknown unit 'kcals'"),
        ("training_set__targets__energy__unit", "angstrom", "dimension mismatch"),
        ("training_set__targets__energy__unit", "", "the energy unit is empty"),
        (
            "training_set__systems",
            {"read_from": "train.xyz", "length_unit": "furlong"},
            "unknown unit 'furlong'",
        ),
        (
            "training_set__systems",
            {"read_from": "train.xyz", "length_unit": "eV"},
            "dimension mismatch",
        ),
    ],
)
def test_bad_units(work, capsys, key, unit, expected):
    write_options(options(**{key: unit}))
    message = train(capsys)
    where = (
        "training_set.targets.energy.unit" if "unit" in key else "training_set.systems.length_unit"
    )
    assert message.startswith(f"{where}: ") and expected in message
    kind = "energy" if "unit" in key else "length"
    assert f"e.g. {'eV' if kind == 'energy' else 'angstrom'!r}" in message  # the fix


@pytest.mark.parametrize("variant", ["forces", "stress", "virial"])
def test_an_energy_variant_named_like_a_gradient_is_refused(work, capsys, variant):
    """'energy/forces' is the name of the forces of 'energy': a variant so named mixed its
    labels with them and crashed with an internal error (a shape mismatch)."""
    targets = {"energy": {"unit": "kcal/mol"}, f"energy/{variant}": {"unit": "kcal/mol"}}
    write_options(options(training_set__targets=targets))
    assert train(capsys) == (
        f"target name 'energy/{variant}' is taken by the {variant} of 'energy': declare them "
        f"in its section ('energy: {{{variant}: <key>}}'), and give another energy a variant "
        "name such as 'energy/pbe0'"
    )


@pytest.mark.parametrize("unit", ["kcal", "kJ"])
def test_an_energy_unit_per_structure_instead_of_per_mole(work, capsys, unit):
    write_options(options(training_set__targets__energy__unit=unit))
    message = train(capsys)
    assert message.startswith(f"training_set.targets.energy.unit: {unit!r} is an energy per")
    assert message.endswith(f"write '{unit}/mol'")


# ------------------------------------------------------------------------------ splits


@pytest.mark.parametrize("fraction", [1.0, -0.1, 1])
def test_validation_fraction_outside_0_1(work, capsys, fraction):
    write_options(options(validation_set=fraction))
    message = train(capsys)
    assert message == f"option 'validation_set' must be a fraction in [0, 1), got {float(fraction)}"


def test_fractions_that_leave_no_training_structure(work, capsys):
    ase.io.write("train.xyz", ethanol(2))
    write_options(options(validation_set=0.5, test_set=0.5))
    message = train(capsys)
    assert "training set (2 structures) is empty" in message
    assert "lower those fractions or add structures" in message


def test_element_in_validation_set_that_training_set_lacks(work, capsys):
    frames = ethanol(3)
    frames[1].numbers[-1] = 7  # the oxygen becomes a nitrogen
    ase.io.write("validation.xyz", frames)
    validation = {"systems": "validation.xyz", "targets": {"energy": {"unit": "kcal/mol"}}}
    write_options(options(validation_set=validation))
    message = train(capsys)
    where = f"structure 1 of {str(work / 'validation.xyz')!r} (in the validation_set)"
    assert message.startswith(f"{where} has elements [7]")
    assert message.endswith(
        "add such structures to training_set, or remove these from the validation_set (a "
        "fine-tuned model knows only its pretrained elements)"
    )


def test_element_that_the_split_put_in_the_validation_set_only(work, capsys):
    """The structure is named by its index in the file (the split reorders them), and the
    advice is about the split: the structure is in the training file already."""
    frames = ethanol(12)
    frames[9].numbers[-1] = 7
    ase.io.write("train.xyz", frames)
    for seed in range(40):  # a seed whose split puts structure 9 in the validation set
        write_options(options(validation_set=0.5, seed=seed))
        status, problems = run(capsys, "train", "options.yaml", "--dry-run")
        if status == 1:
            break
    [message] = problems
    assert message.startswith(
        f"structure 9 of {str(work / 'train.xyz')!r} (in the validation_set) has elements [7]"
    )
    assert message.endswith(
        "the random split put every structure with them in the validation_set: add more such "
        "structures to the file, or remove these"
    )


def test_a_target_that_the_split_left_without_training_labels(work, capsys):
    """Only structure 9 has 'mtt::q', and the split put it in the validation set: training went
    on with a loss of 0 for mtt::q and exported an untrained output for it, without a word."""
    frames = ethanol(12)
    frames[9].info["q"] = 0.5
    ase.io.write("train.xyz", frames)
    targets = {"energy": {"unit": "kcal/mol"}, "mtt::q": {"unit": "e"}}
    for seed in range(40):  # a seed whose split puts structure 9 in the validation set
        write_options(options(validation_set=0.25, seed=seed, training_set__targets=targets))
        status, problems = run(capsys, "train", "options.yaml", "--dry-run")
        if status == 1:
            break
    assert problems == [
        "training_set: no structure has the label 'mtt::q' (the validation_set has 1), so the "
        "model would not learn it: put labelled structures in the training set (label more of "
        "them, or change 'seed' or the fractions of the split), or remove 'mtt::q' from "
        "'training_set.targets'"
    ]
    fail(capsys, "train", "options.yaml")  # nothing is trained or left behind


# ------------------------------------------------------------------------------ structure files


def test_missing_structure_file(work, capsys):
    write_options(options(training_set__systems="missing.xyz"))
    message = train(capsys)
    assert f"file not found: {str(work / 'missing.xyz')!r}" in message
    assert "check the path" in message
    assert not Path("outputs").exists()  # made for the run, and empty once it is removed
    Path("outputs").mkdir()  # the user's own, even empty, stays
    train(capsys)
    assert Path("outputs").is_dir() and not list(Path("outputs").iterdir())


def test_unreadable_structure_file(work, capsys):
    Path("train.xyz").write_bytes(os.urandom(300) + b"\n\x00garbage\n")
    write_options(options())
    message = train(capsys)
    assert f"could not read structure 0 of {str(work / 'train.xyz')!r}" in message
    assert "set 'reader'" in message


def test_a_bad_structure_in_a_file_is_named(work, capsys):
    """A frame ASE cannot parse (here an unknown element in frame 2) is named, and the
    message does not blame the file format alone."""
    lines = Path("train.xyz").read_text().splitlines(keepends=True)
    n = int(lines[0]) + 2
    frame = lines[2 * n : 3 * n]
    frame[2] = "Xx" + frame[2][frame[2].index(" ") :]
    Path("train.xyz").write_text("".join(lines[: 2 * n] + frame + lines[3 * n :]))
    write_options(options())
    message = train(capsys)
    assert message.startswith(
        f"could not read structure 2 of {str(work / 'train.xyz')!r}: unknown name 'Xx' (not an "
        "element symbol?); fix that structure in the file, or set 'reader'"
    )


def test_directory_instead_of_structure_file(work, capsys):
    os.mkdir("data")
    write_options(options(training_set__systems="data"))
    message = train(capsys)
    assert (
        f"{str(work / 'data')!r} is a directory but not one written by 'mtt data pack'" in message
    )
    np.save("data/numbers.npy", np.ones(3, dtype=np.int32))  # a pack that lost its manifest
    message = train(capsys)
    assert "looks like a packed data set without its manifest.json (damaged, or not" in message


def test_energy_key_missing_in_every_structure(work, capsys):
    frames = []
    for atoms in ethanol():
        relabelled = with_labels(atoms, forces=atoms.get_forces())
        relabelled.info["E_dft"] = atoms.get_potential_energy()
        frames.append(relabelled)
    ase.io.write("train.xyz", frames)
    write_options(options())
    message = train(capsys)
    assert f"no structure of {str(work / 'train.xyz')!r} has the energy key 'energy'" in message
    assert "keys found: ['E_dft', 'forces']" in message
    assert "set 'training_set.targets.energy.key' to the right one" in message


def test_energy_missing_in_some_structures_is_masked(work):
    frames = ethanol()
    for index in (2, 5):
        frames[index] = with_labels(frames[index], forces=frames[index].get_forces())
    ase.io.write("train.xyz", frames)
    options = DatasetOptions(
        systems="train.xyz", targets={"energy": EnergyTargetOptions(unit="kcal/mol")}
    )
    dataset = load_dataset(options, str(work), "training_set")
    assert len(dataset) == 12
    assert [i for i, labels in enumerate(dataset.labels) if "energy" not in labels] == [2, 5]
    assert all("energy/forces" in labels for labels in dataset.labels)
    assert dataset.targets["energy"].forces


def test_forces_are_read_from_the_energy_file_by_default(work):
    """As in metatrain: an energy read from another file takes its forces from there too
    (they used to come from the systems' file, so energies and forces of two different
    label sets trained together); a forces section naming the systems' file still can."""
    frames = ethanol()
    labels = [
        with_labels(a, energy=2 * a.get_potential_energy(), forces=2 * a.get_forces())
        for a in frames
    ]
    ase.io.write("labels.xyz", labels)
    energy = EnergyTargetOptions(unit="kcal/mol", read_from="labels.xyz")
    dataset = load_dataset(
        DatasetOptions(systems="train.xyz", targets={"energy": energy}), str(work), "training_set"
    )
    for atoms, label in zip(frames, dataset.labels):
        np.testing.assert_allclose(label["energy"], [2 * atoms.get_potential_energy()])
        np.testing.assert_allclose(label["energy/forces"], 2 * atoms.get_forces(), atol=1e-6)
    energy.forces = GradientOptions(read_from="train.xyz")
    dataset = load_dataset(
        DatasetOptions(systems="train.xyz", targets={"energy": energy}), str(work), "training_set"
    )
    np.testing.assert_allclose(dataset.labels[0]["energy/forces"], frames[0].get_forces())


def test_energies_under_another_key_in_part_of_the_data_are_warned_about(work, capsys):
    """Half the structures labelled 'energy', the other half 'REF_energy' (two sources
    concatenated): training went on with half the data, without a word. Now a warning names
    the count, the first such structure and its keys."""
    frames = ethanol()
    for index in range(6, 12):
        atoms = frames[index]
        frames[index] = with_labels(atoms)
        frames[index].info["REF_energy"] = atoms.get_potential_energy()
        frames[index].arrays["REF_forces"] = atoms.get_forces()
    ase.io.write("train.xyz", frames)
    ase.io.write("val.xyz", frames[:3])
    write_options(options(validation_set="val.xyz"))
    assert main(["train", "options.yaml", "--dry-run"]) == 0
    assert (
        f"training_set: 6 of 12 structures have no 'energy' label (the first: structure 6 of "
        f"{str(work / 'train.xyz')!r} (in the training_set), whose keys are ['REF_energy']); "
        "they train on their other labels only, if any"
    ) in capsys.readouterr().out


def test_explicit_forces_key_that_does_not_exist(work, capsys):
    write_options(options(training_set__targets__energy__forces="dft_forces"))
    message = train(capsys)
    assert f"no structure of {str(work / 'train.xyz')!r} has forces under the key" in message
    assert "'dft_forces'; keys found: ['energy', 'forces']" in message
    assert "set 'training_set.targets.energy.forces' to the right key, or to false" in message


def test_nan_in_a_position(work, capsys):
    frames = ethanol()
    frames[4].positions[2, 0] = math.nan
    ase.io.write("train.xyz", frames)
    write_options(options())
    message = train(capsys)
    assert message.startswith(
        f"structure 4 of {str(work / 'train.xyz')!r} has NaN or infinite positions"
    )
    assert "fix or remove that frame" in message


@pytest.mark.parametrize("key", ["REF_force", "F"])
def test_forces_under_another_key_are_named_not_left_unused_silently(work, capsys, key):
    """Read by default only under 'forces': a file's forces under 'REF_force' or 'F' were
    left unused without a word; the run goes on, with the setting that learns them named."""
    frames = []
    for atoms in ethanol():
        forces = atoms.get_forces()
        atoms = with_labels(atoms, energy=atoms.get_potential_energy())
        atoms.arrays[key] = forces
        frames.append(atoms)
    ase.io.write("train.xyz", frames)
    write_options(options())
    assert main(["train", "options.yaml", "--dry-run"]) == 0
    assert (
        f"no forces under 'forces', but {key!r} looks like them: set "
        f"'training_set.targets.energy.forces: {{key: {key}}}' to learn them"
    ) in capsys.readouterr().out


@pytest.mark.parametrize("dry_run", [True, False])
def test_atoms_on_top_of_each_other(work, capsys, dry_run):
    """Two atoms at the same place (a duplicated atom) would make the loss NaN: refused
    with the structure and the atoms, before training and by the dry run."""
    frames = ethanol()
    frames[4].positions[3] = frames[4].positions[1] + 0.01
    ase.io.write("train.xyz", frames)
    write_options(options(validation_set=0.0))
    message = fail(capsys, "train", "options.yaml", *(["--dry-run"] if dry_run else []))
    where = f"structure 4 of {str(work / 'train.xyz')!r} (in the training_set)"
    assert message.startswith(f"{where}: atoms 1 and 3 are 0.0173 apart")
    assert "(less than 0.1 in the data's length unit, 0.1 Å: duplicated atoms?)" in message
    assert "duplicated atoms?); fix or remove that structure" in message


@pytest.mark.parametrize("dry_run", [True, False])
def test_a_cutoff_within_which_no_atom_has_a_neighbour(work, capsys, dry_run):
    write_options(options(architecture__model__cutoff=0.6, architecture__model__cutoff_width=0.1))
    message = fail(capsys, "train", "options.yaml", *(["--dry-run"] if dry_run else []))
    assert message == (
        "no atom of the training set has a neighbour within the cutoff (0.6 angstrom); raise "
        "'architecture.model.cutoff', or check the length unit of the structures"
    )


@pytest.mark.parametrize(
    "cell, pbc, axis, height",
    [
        ([[5, 0, 0], [10, 0, 0], [0, 0, 5]], [True, True, False], 0, "0"),  # killed Python
        ([[5, 0, 0], [0, 5, 0], [5, 0, 1e-4]], True, 0, "0.0001"),  # ran for ever
    ],
)
def test_a_flat_periodic_cell(work, capsys, cell, pbc, axis, height):
    """Parallel periodic vectors crashed the process in vesin (SIGFPE); a nearly flat cell
    kept the neighbour search running for ever."""
    frames = ethanol()
    frames[3].cell, frames[3].pbc = cell, pbc
    ase.io.write("train.xyz", frames)
    write_options(options())
    message = fail(capsys, "train", "options.yaml", "--dry-run")
    assert message == (
        f"structure 3 of {str(work / 'train.xyz')!r} has a flat periodic cell: cell vector "
        f"{axis} is {height} from the span of the other periodic vectors (at least 0.1 is "
        "needed); fix the cell or make a direction non-periodic"
    )


def test_a_cutoff_spanning_too_many_periodic_images(work, capsys, monkeypatch):
    """A cutoff in the wrong unit (1e6 for a cell of Å) ran vesin for hours, deaf to Ctrl-C;
    refused with the structure named (the limit lowered here so that the check is cheap to
    miss: 343 images of a 10 Å box within 30 Å)."""
    import mtt.data.neighbors

    monkeypatch.setattr(mtt.data.neighbors, "MAX_PERIODIC_IMAGES", 100)
    frames = ethanol()
    for atoms in frames:
        atoms.cell, atoms.pbc = np.eye(3) * 10.0, True
    ase.io.write("train.xyz", frames)
    write_options(options(architecture__model__cutoff=30.0))
    message = fail(capsys, "train", "options.yaml", "--dry-run")
    assert message == (
        f"structure 0 of {str(work / 'train.xyz')!r} (in the training_set): the cutoff 30 "
        "reaches 343 periodic images of a cell 10 high; is the cutoff (or the cell) in the "
        "length unit of the data?"
    )


def test_every_labelled_quantity_weighing_zero(work, capsys):
    """Weights that leave nothing to learn on this data (energy and forces 0, the stress's
    default weight 1 useless on molecules) trained nothing for the whole budget."""
    ase.io.write("train.xyz", ethanol())
    weights = {"energy": 0.0, "energy/forces": 0.0}
    write_options(options(architecture__training__loss={"weights": weights}))
    assert train(capsys) == (
        "option 'architecture.training.loss.weights': every quantity labelled in the "
        "training set (energy, energy/forces) weighs 0, so nothing would be learnt; give one "
        "of them a positive weight"
    )


@pytest.mark.parametrize("frames_with_text", [range(12), [5]])
def test_a_label_key_holding_text(work, capsys, frames_with_text):
    """A key that holds text (a class name) is not reported as missing; in a single frame
    it is not taken for a structure without labels either (it was dropped silently)."""
    frames = ethanol()
    for atoms in frames:
        atoms.info["phase"] = 1.0
    for index in frames_with_text:
        frames[index].info["phase"] = "gas"
    ase.io.write("train.xyz", frames)
    targets = {"energy": {"key": "phase", "unit": "kcal/mol"}}
    write_options(options(training_set__targets=targets))
    message = train(capsys)
    first = frames_with_text[0]
    assert message == (
        f"'phase' of structure {first} of {str(work / 'train.xyz')!r} holds 'gas', not "
        "numbers; labels must be numbers: fix that structure, or set "
        "'training_set.targets.energy.key' to a numeric key"
    )


def test_nan_in_an_energy(work, capsys):
    frames = ethanol()
    frames[7] = with_labels(frames[7], energy=math.nan, forces=frames[7].get_forces())
    ase.io.write("train.xyz", frames)
    write_options(options())
    message = train(capsys)
    assert message == (
        f"energy 'energy' of structure 7 of {str(work / 'train.xyz')!r} is NaN or "
        "infinite; fix or remove that structure"
    )


# ------------------------------------------------------------------------------ trained models


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny ethanol model: its run directory, checkpoint and exported model."""
    root = tmp_path_factory.mktemp("trained")
    ase.io.write(root / "train.xyz", ethanol())
    with open(root / "options.yaml", "w") as file:
        yaml.safe_dump(options(), file)
    status = main(
        [
            "train",
            str(root / "options.yaml"),
            "-o",
            str(root / "model.pt"),
            "--output-dir",
            str(root / "outputs"),
        ]
    )
    assert status == 0
    (checkpoint,) = root.glob("outputs/*/model.ckpt")
    return {"root": root, "model": root / "model.pt", "checkpoint": checkpoint}


def test_existing_output_is_refused_before_training_and_force_overwrites(work, capsys):
    write_options(options())
    Path("model.pt").write_bytes(b"my precious model")
    message = train(capsys)
    assert message == (
        "'model.pt' already exists; choose another output path or pass --force (force=True in "
        "Python) to overwrite it"
    )
    assert Path("model.pt").read_bytes() == b"my precious model"
    assert not Path("outputs").exists()  # refused before anything started
    assert fail(capsys, "train", "options.yaml", "--dry-run") == message  # (it said all's well)

    status, problems = run(capsys, "train", "options.yaml", "-f")
    assert (status, problems) == (0, [])
    assert Path("model.pt").read_bytes()[:2] == b"PK"  # a TorchScript archive now


def checkpoint_dict(trained):
    return torch.load(trained["checkpoint"], weights_only=True)


def test_export_missing_file(work, capsys):
    message = fail(capsys, "export", "missing.ckpt")
    assert message.startswith("checkpoint not found: 'missing.ckpt'; give the .ckpt file")


def test_export_random_bytes(work, capsys):
    Path("random.ckpt").write_bytes(os.urandom(4096))
    message = fail(capsys, "export", "random.ckpt")
    assert "'random.ckpt'" in message and "checkpoint" in message
    assert "weights_only" not in message  # never the advice to load it unsafely
    assert "written by 'mtt train'" in message


def test_export_empty_file(work, capsys):
    Path("empty.ckpt").write_bytes(b"")
    message = fail(capsys, "export", "empty.ckpt")
    assert message.startswith("'empty.ckpt' is empty (an unfinished copy?); give a .ckpt")


def test_export_a_text_file(work, capsys):
    """Not a file torch wrote: named as such, not with pickle's opcodes ('Unsupported
    operand 103') or torch's KeyError."""
    Path("notes.ckpt").write_text("hello world\n")
    message = fail(capsys, "export", "notes.ckpt")
    assert message == (
        "'notes.ckpt' is not a checkpoint (not a file written by torch: a text or other file?); "
        "give a .ckpt file written by 'mtt train'"
    )


def test_export_an_exported_model(work, capsys, trained):
    message = fail(capsys, "export", trained["model"])
    assert message.startswith(f"{str(trained['model'])!r} is an exported model, not a checkpoint")
    assert "outputs/<run>/model.ckpt" in message


class Payload:
    """Unpickling this runs code: creates ``PWNED`` in the current directory."""

    def __reduce__(self):
        return (os.system, ("touch PWNED",))


@pytest.mark.parametrize("writer", ["torch.save", "pickle-2", "pickle"])
def test_export_refuses_a_checkpoint_that_would_run_code(work, capsys, writer):
    content = {"format": "mtt-checkpoint", "architecture": "soap_bpnn", "payload": Payload()}
    if writer == "torch.save":
        torch.save(content, "evil.ckpt")
    else:
        with open("evil.ckpt", "wb") as file:
            pickle.dump(content, file, protocol=2 if writer == "pickle-2" else None)
    message = fail(capsys, "export", "evil.ckpt")
    assert not Path("PWNED").exists()
    assert message.startswith("refusing to load 'evil.ckpt'")
    assert "nothing in it was run" in message and "weights_only" not in message
    if writer != "pickle":  # the default protocol frames the file: torch stops before the call
        assert "asks to load Python objects" in message and "system" in message


@pytest.mark.parametrize("command", [["export"], ["train", "options.yaml", "--restart"]])
def test_a_metatrain_checkpoint_is_named_as_such_and_not_unpickled(work, capsys, command):
    """metatrain's checkpoints hold TorchScript objects (its model's metadata), which a safe
    load refuses: the message says whose checkpoint it is, and nothing in it runs."""
    content = {"architecture_name": "soap_bpnn", "model_ckpt_version": 9, "extra": Payload()}
    torch.save(content, "metatrain.ckpt")
    write_options(options())
    message = fail(capsys, *command, "metatrain.ckpt")
    assert not Path("PWNED").exists()
    assert message == (
        "'metatrain.ckpt' is a checkpoint of metatrain (soap_bpnn), which mtt does not read; "
        "evaluate metatrain's exported model with 'mtt eval', or train with mtt from the "
        "options.yaml you gave metatrain (its expanded options_restart.yaml holds "
        "metatrain-only sections)"
    )


def test_export_truncated_checkpoint(work, capsys, trained):
    content = trained["checkpoint"].read_bytes()
    Path("half.ckpt").write_bytes(content[: len(content) // 2])
    message = fail(capsys, "export", "half.ckpt")
    assert message.startswith("'half.ckpt' is truncated or damaged")
    assert "earlier outputs/<run>/checkpoints/epoch_<n>.ckpt" in message


def zero_the_largest_tensor(source: Path, destination: str) -> str:
    """A copy of a torch archive with the bytes of its largest tensor zeroed, as a damaged
    disk or copy leaves it: the archive's structure is intact, one checksum is not. Returns
    the damaged member's name."""
    raw = bytearray(source.read_bytes())
    with zipfile.ZipFile(source) as archive:
        info = max(
            (i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size
        )
    header = raw[info.header_offset : info.header_offset + 30]
    start = info.header_offset + 30 + int.from_bytes(header[26:28], "little")
    start += int.from_bytes(header[28:30], "little")
    raw[start : start + info.file_size] = bytes(info.file_size)
    Path(destination).write_bytes(raw)
    return info.filename


def test_a_checkpoint_with_damaged_bytes_is_refused(work, capsys, trained):
    """Zeroed tensor bytes (disk or NFS damage) loaded silently: torch does not check the
    zip's checksums, and the model exported from it was silently wrong."""
    member = zero_the_largest_tensor(trained["checkpoint"], "zeroed.ckpt")
    message = fail(capsys, "export", "zeroed.ckpt")
    assert message == (
        f"'zeroed.ckpt' is damaged: the bytes of {member!r} in it do not match their checksum "
        "(a disk or copy error); copy it again, or use another checkpoint such as an earlier "
        "outputs/<run>/checkpoints/epoch_<n>.ckpt"
    )


def test_a_model_with_damaged_bytes_is_refused(work, capsys, trained):
    zero_the_largest_tensor(trained["model"], "zeroed.pt")
    ase.io.write("test.xyz", ethanol(1))
    message = fail(capsys, "eval", "zeroed.pt", "test.xyz")
    assert message.startswith("'zeroed.pt' is damaged: the bytes of ")
    assert message.endswith("export it again with 'mtt export outputs/<run>/model.ckpt'")


def test_eval_of_a_truncated_model(work, capsys, trained):
    """An unfinished copy of model.pt: the fix is copying or exporting again, not torch's
    paragraph about corrupted checkpoints."""
    content = Path(trained["model"]).read_bytes()
    Path("half.pt").write_bytes(content[: len(content) // 2])
    ase.io.write("test.xyz", ethanol(1))
    message = fail(capsys, "eval", "half.pt", "test.xyz")
    assert message.startswith("'half.pt' is truncated or damaged")
    assert "export it again with 'mtt export" in message and "\n" not in message


def test_export_of_something_else_saved_by_torch(work, capsys):
    torch.save({"a": 1}, "plain.ckpt")
    message = fail(capsys, "export", "plain.ckpt")
    assert message == (
        "'plain.ckpt' is not an mtt checkpoint; give a .ckpt file written by 'mtt train' "
        "(outputs/<run>/model.ckpt)"
    )


def test_export_of_the_intact_checkpoint_works(work, capsys, trained):
    """The control: the checks above do not refuse what mtt itself wrote."""
    status, problems = run(capsys, "export", trained["checkpoint"], "-o", "exported.pt")
    assert (status, problems) == (0, [])
    assert Path("exported.pt").read_bytes()[:2] == b"PK"


def test_export_onto_a_full_disk(work, capsys, trained, monkeypatch):
    """torch writes TorchScript files in C++ and a full disk there aborted the process (exit
    134, 'unexpected pos') with a hidden temporary file left; serialised in memory and
    written by Python, it is one line naming the file, and nothing is left behind."""
    from mtt import api

    fill_disk(monkeypatch, api)
    message = fail(capsys, "export", trained["checkpoint"], "-o", "exported.pt")
    assert message.startswith("no space left on the device writing 'exported.pt'; free some")
    assert os.listdir() == ["train.xyz"]


def test_export_checkpoint_from_a_newer_mtt(work, capsys, trained):
    checkpoint = checkpoint_dict(trained)
    checkpoint["model_checkpoint_version"] = 999
    torch.save(checkpoint, "future.ckpt")
    message = fail(capsys, "export", "future.ckpt")
    assert message.startswith("'future.ckpt': this checkpoint's model part has version 999,")
    assert "newer than the" in message and "this mtt reads" in message
    assert "upgrade mtt (pip install --upgrade mtt)" in message


def test_restart_from_a_checkpoint_whose_trainer_part_is_newer(work, capsys, trained):
    """The version errors did not name the file (under --restart auto, the user had no way
    to know which of the run's checkpoints it was)."""
    checkpoint = checkpoint_dict(trained)
    checkpoint["trainer_checkpoint_version"] = 999
    torch.save(checkpoint, "future.ckpt")
    write_options(options(architecture__training__num_epochs=5))
    message = fail(capsys, "train", "options.yaml", "--restart", "future.ckpt")
    assert message.startswith("'future.ckpt': this checkpoint's trainer part has version 999,")


def test_export_checkpoint_of_unknown_architecture(work, capsys, trained):
    checkpoint = checkpoint_dict(trained)
    checkpoint["architecture"] = "gap"
    torch.save(checkpoint, "gap.ckpt")
    message = fail(capsys, "export", "gap.ckpt")
    assert "architecture 'gap'" in message and "soap_bpnn" in message


def test_export_checkpoint_of_unknown_architecture_names_the_file(work, capsys, trained):
    checkpoint = checkpoint_dict(trained)
    checkpoint["architecture"] = "gap"
    torch.save(checkpoint, "gap.ckpt")
    message = fail(capsys, "export", "gap.ckpt")
    assert "'gap.ckpt'" in message and "'architecture.name'" not in message


def test_export_checkpoint_missing_a_part(work, capsys, trained):
    checkpoint = checkpoint_dict(trained)
    del checkpoint["model_hypers"]
    torch.save(checkpoint, "damaged.ckpt")
    message = fail(capsys, "export", "damaged.ckpt")
    assert "'damaged.ckpt'" in message


def test_restart_from_a_checkpoint_of_another_architecture(work, capsys, trained):
    checkpoint = checkpoint_dict(trained)
    checkpoint["architecture"] = "pet"
    torch.save(checkpoint, "other.ckpt")
    write_options(options())
    message = fail(capsys, "train", "options.yaml", "--restart", "other.ckpt")
    assert message == (
        "'other.ckpt' is a checkpoint of 'pet', but the options ask for "
        "'soap_bpnn'; set architecture.name to match"
    )


def test_restart_with_a_changed_model_option(work, capsys, trained):
    """A restart continues the checkpoint's model: a changed model option is refused (it
    would be ignored, and recorded in the new run's options.yaml as if it had been used)."""
    write_options(options(architecture__model__cutoff=5.0))
    message = fail(capsys, "train", "options.yaml", "--restart", trained["checkpoint"])
    assert message.startswith(
        f"option 'architecture.model.cutoff': the model of '{trained['checkpoint']}' has 3.0, "
        "the options ask for 5.0; a restart continues the same model"
    )
    assert not Path("model.pt").exists()
    # the same model with a longer training restarts
    write_options(options(architecture__training__num_epochs=2))
    assert main(["train", "options.yaml", "--restart", str(trained["checkpoint"])]) == 0


def test_restart_with_a_new_target(work, capsys, trained):
    """A target the checkpoint's model lacks was an internal KeyError after the set-up."""
    targets = {"energy": {"unit": "kcal/mol"}, "energy/b": {"key": "energy", "unit": "kcal/mol"}}
    write_options(options(architecture__training__num_epochs=2, training_set__targets=targets))
    message = fail(capsys, "train", "options.yaml", "--restart", trained["checkpoint"])
    assert message.startswith(
        "the options declare targets ['energy/b'] that the model of "
        f"'{trained['checkpoint']}' does not have (it has ['energy']); a restart continues"
    )
    assert not Path("model.pt").exists() and not list(Path("outputs").glob("*"))


def test_dry_run_checks_the_restart(work, capsys, trained):
    """``--dry-run --restart`` refuses what the restart would refuse, and writes nothing."""
    write_options(options(architecture__model__cutoff=5.0))
    message = fail(capsys, "train", "options.yaml", "--restart", trained["checkpoint"], "--dry-run")
    assert message.startswith("option 'architecture.model.cutoff': the model of")
    write_options(options(architecture__training__num_epochs=2))
    assert (
        main(["train", "options.yaml", "--restart", str(trained["checkpoint"]), "--dry-run"]) == 0
    )
    assert not Path("outputs").exists() and not Path("model.pt").exists()


def test_a_refused_restart_leaves_the_runs_options_as_they_are(work, capsys, trained):
    """``--restart auto`` continues an interrupted run in its directory; refused (options of
    another architecture), it had already replaced the run's options.yaml with its own."""
    (run,) = (trained["root"] / "outputs").glob("*")
    shutil.copytree(run, work / "outputs" / run.name)
    interrupted = work / "outputs" / run.name
    (interrupted / "model.pt").unlink()
    (interrupted / "model.ckpt").unlink()
    before = (interrupted / "options.yaml").read_text()
    write_options(options(architecture__name="pet", architecture__model={}))
    message = fail(capsys, "train", "options.yaml", "--restart", "auto")
    assert "is a checkpoint of 'soap_bpnn', but the options ask for 'pet'" in message
    assert (interrupted / "options.yaml").read_text() == before


def test_restart_with_nothing_left_to_train(work, capsys, trained):
    """A checkpoint already at ``num_epochs`` is refused with the two ways on, not 'trained'
    for zero epochs into a new run directory."""
    write_options(options())
    message = fail(capsys, "train", "options.yaml", "--restart", trained["checkpoint"])
    assert message == (
        f"{str(trained['checkpoint'])!r} is of a finished run (epoch 1): nothing to train; "
        "raise num_epochs (or early_stopping_patience) to train further, or export the "
        "checkpoint with 'mtt export'"
    )
    assert not Path("model.pt").exists() and not list(Path("outputs").glob("*"))


@pytest.mark.parametrize(
    "output, message",
    [
        ("newdir/", "'newdir/' is a directory; give the path of a file to write"),
        ("afile/model.pt", "cannot write 'afile/model.pt': "),
    ],
)
def test_an_output_path_that_cannot_be_written_is_refused_before_training(
    work, capsys, output, message
):
    """Found after training, the run's model stayed in its run directory and the command
    ended in an internal error."""
    Path("afile").write_text("mine")
    write_options(options())
    assert fail(capsys, "train", "options.yaml", "-o", output).startswith(message)
    assert not Path("outputs").exists() and Path("afile").read_text() == "mine"


def test_export_never_writes_over_its_checkpoint(work, capsys, trained):
    shutil.copy(trained["checkpoint"], "model.ckpt")
    before = Path("model.ckpt").read_bytes()
    message = fail(capsys, "export", "model.ckpt", "-o", "model.ckpt", "-f")
    assert (
        message == "'model.ckpt' is the file this command reads; write the output to another path"
    )
    assert Path("model.ckpt").read_bytes() == before


def test_restart_from_a_checkpoint_that_does_not_exist(work, capsys):
    write_options(options())
    message = fail(capsys, "train", "options.yaml", "--restart", "nope.ckpt")
    assert message.startswith("--restart 'nope.ckpt': no such checkpoint file;")


def test_output_dir_that_is_a_file(work, capsys):
    write_options(options())
    Path("runs").write_text("my notes")
    message = fail(capsys, "train", "options.yaml", "--output-dir", "runs")
    assert message.startswith("--output-dir 'runs' is a file;")
    assert Path("runs").read_text() == "my notes"


@pytest.mark.parametrize("output", ["options.yaml", "train.xyz", "other.xyz", "my.ckpt"])
def test_an_input_of_the_run_is_never_its_output_even_with_force(work, capsys, trained, output):
    """The options, a data file (here also the validation set's) or the checkpoint the run
    restarts from were replaced by the model with --force."""
    shutil.copy(trained["checkpoint"], "my.ckpt")
    ase.io.write("other.xyz", ethanol(4))
    write_options(options(validation_set="other.xyz"))
    before = Path(output).read_bytes()
    command = ["train", "options.yaml", "-o", output, "--force"]
    command += ["--restart", "my.ckpt"] if output == "my.ckpt" else []
    message = fail(capsys, *command)
    assert message == f"{output!r} is the file this command reads; write the output to another path"
    assert Path(output).read_bytes() == before


def test_output_dir_on_a_read_only_file_system(work, capsys, monkeypatch):
    """A read-only mount (EROFS) was an internal error 'please report this bug'."""
    real_mkdir = os.mkdir

    def read_only_below_ro(path, *args, **kwargs):
        if str(path).startswith("ro"):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", read_only_below_ro)
    write_options(options())
    message = fail(capsys, "train", "options.yaml", "--output-dir", "ro/out")
    assert message.startswith("cannot make the run directory 'ro/out/")
    assert message.endswith(
        "(Read-only file system); give --output-dir a directory you can write, or a new one"
    )


def test_output_inside_the_packed_data_the_run_reads_is_refused(work, capsys):
    from mtt.data.packed import pack

    pack(["train.xyz"], "pk")
    manifest = Path("pk/manifest.json").read_text()
    write_options(options(training_set__systems="pk"))
    message = fail(capsys, "train", "options.yaml", "-o", "pk/manifest.json", "--force")
    assert message.endswith("which this command reads; write the output outside it")
    assert Path("pk/manifest.json").read_text() == manifest


def test_an_output_path_through_a_missing_directory_and_back(work, capsys):
    """'./missing/../model.pt' names model.pt here for mtt (the directory of its temporary
    file) but not for the system: an existing model.pt passed the check, and the run failed
    at its end with an internal error."""
    write_options(options())
    Path("model.pt").write_bytes(b"my precious model")
    message = fail(capsys, "train", "options.yaml", "-o", "./missing/../model.pt")
    assert message.startswith("'model.pt' already exists")
    assert Path("model.pt").read_bytes() == b"my precious model"


def test_output_that_is_a_pipe_or_device_is_refused_even_with_force(work, capsys):
    """The model went to a temporary file renamed over the path: with --force, /dev/null
    (or any device or pipe) became a regular file holding the model."""
    os.mkfifo("pipe")
    write_options(options())
    message = fail(capsys, "train", "options.yaml", "-o", "pipe", "--force")
    assert message == (
        "'pipe' is not a regular file (a device, pipe or socket) and would be replaced by one; "
        "give the path of a file to write"
    )
    assert not Path("pipe").is_file()


@pytest.mark.parametrize("deep", [False, True])
def test_an_output_path_too_long_is_refused_before_training(work, capsys, deep):
    """It failed after training, as an internal error (and a deep one left its directories)."""
    write_options(options())
    output = "abcdefghi/" * 420 + "m.pt" if deep else "a" * 300 + ".pt"
    message = fail(capsys, "train", "options.yaml", "-o", output)
    problem = "the path is longer than the 4096 bytes" if deep else "a name in it is 303 bytes"
    assert message.startswith(f"cannot write {output[:40]!r}...: {problem}")
    assert sorted(p.name for p in work.iterdir()) == ["options.yaml", "train.xyz"]


def test_output_that_is_a_directory_is_refused_before_training_even_with_force(work, capsys):
    write_options(options())
    Path("results").mkdir()
    message = fail(capsys, "train", "options.yaml", "-o", "results", "--force")
    assert message == "'results' is a directory; give the path of a file to write"


def test_eval_on_an_element_the_model_was_not_trained_on(work, capsys, trained):
    frames = ethanol(2) + carbon(1) + ethanol(1)
    frames[3].numbers[0] = 7  # carbon is known (ethanol has it); nitrogen is not
    ase.io.write("test.xyz", frames)
    message = fail(capsys, "eval", trained["model"], "test.xyz")
    assert message.startswith("structure 3 of 'test.xyz' has elements [7] the model was not")
    assert "it knows [1, 6, 8]" in message
    assert not Path("predictions.xyz").exists()


def test_eval_with_a_label_key_no_structure_has(work, capsys, trained):
    """A typo in a label key stops ``mtt eval`` before it predicts anything (it streams, so
    it reads ahead until it meets each key, here to the end of the file)."""
    targets = {"energy": {"key": "U0", "unit": "kcal/mol", "forces": False}}
    write_options({"systems": "train.xyz", "targets": targets}, "eval.yaml")
    message = fail(capsys, "eval", trained["model"], "eval.yaml")
    assert message.startswith("no structure of ")
    assert "has energy 'U0'; keys found: ['energy', 'forces']; set 'targets.energy.key'" in message
    assert not Path("predictions.xyz").exists()


# ------------------------------------------------------------------------------ properties


@contextmanager
def time_limit(seconds: int):
    """Fail instead of hanging."""

    def stop(signum, frame):
        raise TimeoutError(f"took more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


KEYS = [
    "architecture",
    "name",
    "model",
    "training",
    "training_set",
    "validation_set",
    "test_set",
    "seed",
    "device",
    "base_precision",
    "systems",
    "targets",
    "energy",
    "energy/pbe",
    "read_from",
    "reader",
    "length_unit",
    "key",
    "unit",
    "forces",
    "stress",
    "virial",
    "conservative",
    "cutoff",
    "max_radial",
    "num_epochs",
    "batch_size",
    "learning_rate",
    "loss",
    "type",
    "weights",
    "fixed_composition_weights",
    "per_structure_targets",
    "soap_bpnn",
]
keys = st.one_of(st.sampled_from(KEYS), st.text(max_size=6), st.integers(-2, 2), st.none())
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(),
    st.text(max_size=8),
    st.sampled_from(["soap_bpnn", "1e-3", "eV", "auto", "cuda:7", "mse"]),
)
values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(keys, children, max_size=4)
    ),
    max_leaves=12,
)
VALID = {
    "architecture": {
        "name": "soap_bpnn",
        "model": {"cutoff": 4.0, "max_radial": 3, "standardize_features": True},
        "training": {
            "num_epochs": 2,
            "learning_rate": 0.01,
            "loss": {"type": "mse"},
            "fixed_composition_weights": {"energy": {"H": -1.0}},
        },
    },
    "training_set": {
        "systems": {"read_from": "a.xyz", "length_unit": "angstrom"},
        "targets": {"energy": {"unit": "eV", "forces": {"key": "f"}, "stress": False}},
    },
    "validation_set": 0.1,
    "test_set": "b.xyz",
    "seed": 1,
}


@st.composite
def mutated_options(draw):
    """The valid options with a few values replaced or keys added at random depths."""
    result = copy.deepcopy(VALID)
    for _ in range(draw(st.integers(1, 3))):
        node = result
        while draw(st.booleans()):
            children = [k for k, v in node.items() if isinstance(v, dict)]
            if not children:
                break
            node = node[draw(st.sampled_from(children))]
        replace = node and draw(st.sampled_from([True, True, True, False]))
        node[draw(st.sampled_from(list(node)) if replace else keys)] = draw(values)
    return result


@settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(raw=st.one_of(mutated_options(), values))
def test_any_options_are_accepted_or_refused_with_an_mtt_error(raw):
    with time_limit(10):
        try:
            validate_options(raw)
        except OptionsError as error:
            assert error.problems and all(p.strip() and "\n" not in p for p in error.problems)
        except MttError as error:
            assert str(error).strip() and "\n" not in str(error)


label_numbers = st.one_of(st.floats(-10, 10), st.sampled_from([math.nan, math.inf]))


def arrays(shape):
    return st.lists(label_numbers, min_size=int(np.prod(shape)), max_size=int(np.prod(shape))).map(
        lambda xs: np.array(xs, dtype=float).reshape(shape)
    )


@st.composite
def weird_atoms(draw):
    """A small structure, often with one flaw, and labels of any type and shape."""
    n = draw(st.integers(1, 3))
    numbers = draw(st.lists(st.sampled_from([1, 6, 8]), min_size=n, max_size=n))
    positions = draw(st.lists(st.floats(-4, 4), min_size=3 * n, max_size=3 * n))
    periodic = draw(st.sampled_from([True, False]))
    atoms = ase.Atoms(
        numbers=numbers,
        positions=np.reshape(positions, (n, 3)),
        cell=np.eye(3) * 5.0 if periodic else None,
        pbc=periodic,
    )
    flaw = draw(st.sampled_from(["none"] * 8 + ["position", "number", "cell", "pbc", "no atoms"]))
    if flaw == "no atoms":
        atoms = atoms[:0]
    elif flaw == "position":
        atoms.positions[draw(st.integers(0, n - 1)), 0] = draw(
            st.sampled_from([math.nan, math.inf, -math.inf])
        )
    elif flaw == "number":
        atoms.numbers[draw(st.integers(0, n - 1))] = draw(st.sampled_from([0, -1, 119]))
    elif flaw == "cell":
        atoms.cell = draw(st.one_of(arrays((3, 3)), st.just(np.ones((3, 3)))))
    elif flaw == "pbc":  # periodic without a cell, or along a zero cell vector
        atoms.cell[draw(st.integers(0, 2))] = 0.0
        atoms.pbc = draw(st.lists(st.booleans(), min_size=3, max_size=3))
    sizes = st.sampled_from([(), (1,), (2,), (3,), (6,), (9,), (3, 3), (n, 3), (n, 2), (n,)])
    labels = st.one_of(
        sizes.flatmap(arrays),
        label_numbers,
        st.text(max_size=3),
        st.none(),
        st.lists(st.lists(label_numbers, max_size=2), max_size=2),  # ragged
        st.just(np.array(["a"] * 3 * n).reshape(n, 3)),
        st.just({"value": 1.0}),
    )
    if draw(st.sampled_from([True, True, True, False])):
        atoms.info["energy"] = draw(label_numbers | labels)
    for name in ("stress", "virial"):
        if draw(st.booleans()):
            atoms.info[name] = draw(labels)
    where = draw(st.sampled_from(["none", "arrays", "calculator"]))
    if where == "arrays":
        atoms.arrays["forces"] = draw(labels)
    elif where == "calculator":  # results set directly: SinglePointCalculator converts them
        atoms.calc = SinglePointCalculator(atoms)
        atoms.calc.results = {"forces": draw(labels), "energy": draw(labels)}
    return atoms


targets = st.builds(
    EnergyTargetOptions,
    forces=st.sampled_from([True, False, "forces"]),
    stress=st.booleans(),
    virial=st.booleans(),
)


@settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    frames=st.lists(weird_atoms(), min_size=1, max_size=3) | st.just([]),
    target=targets,
    length_unit=st.sampled_from(["angstrom"] * 5 + ["bohr", "furlong", ""]),
)
def test_any_structures_are_accepted_or_refused_with_an_mtt_error(frames, target, length_unit):
    with time_limit(10):
        try:
            dataset = dataset_from_atoms(frames, {"energy": target}, length_unit)
        except MttError as error:
            assert str(error).strip() and "\n" not in str(error)
            return
    for atoms, labels in dataset:  # what is accepted is fit to train on
        assert np.all(np.isfinite(atoms.positions))
        for name, value in labels.items():
            assert np.all(np.isfinite(value)), name
            expected = {"energy": (1,), "energy/forces": (len(atoms), 3), "energy/stress": (3, 3)}[
                name
            ]
            assert value.shape == expected, name


@pytest.mark.parametrize(
    "given, message",
    [
        (lambda f: f[0], "training_set is a single ase.Atoms; give a list (or Dataset) of them"),
        (lambda f: (a for a in f), "training_set is a generator, which has no length or indexing"),
        (lambda f: "train.xyz", "training_set is a path ('train.xyz'), where structures are"),
    ],
)
def test_python_training_sets_that_are_not_sequences(work, given, message):
    """A single structure, or a generator (an IterableDataset), in mtt.train: one line."""
    from mtt.api import train as train_api

    write_options(options())
    with pytest.raises(MttError) as error:
        train_api("options.yaml", training_set=given(ethanol()), dry_run=True)
    assert str(error.value).startswith(message)


def _python_split(frames, seed: int, validation: float = 0.3):
    """mtt.train's dry run on structures given from Python, split at random by ``seed``."""
    from mtt.api import train as train_api

    return train_api(options(seed=seed, validation_set=validation), frames, dry_run=True)


@pytest.mark.parametrize("seed", [0, 3])
def test_a_bad_python_structure_is_named_by_its_index_in_the_list(work, seed):
    """The split reorders the structures: a duplicated atom in list[12] was reported as
    'structure 8 of the training_set', an index the user could not find."""
    frames = ethanol(12)
    bad = frames[0].copy()
    bad.positions[3] = bad.positions[1]
    frames.append(with_labels(bad, energy=-10.0))
    with pytest.raises(MttError) as error:
        _python_split(frames, seed)
    assert str(error.value).startswith("structure 12 of the Python training_set (in the ")
    assert "atoms 1 and 3 are 0 apart" in str(error.value)


def test_an_element_that_the_split_put_in_the_python_validation_set_only(work):
    """With data from Python, the advice 'add such structures to training_set' was wrong (they
    are in it): the advice is about the split, as for a file, with the index in the list."""
    frames = ethanol(12)
    nitrogen = frames[0].copy()
    nitrogen.numbers[-1] = 7
    frames.append(with_labels(nitrogen, energy=-10.0))
    order = [np.random.default_rng(seed).permutation(13) for seed in range(40)]
    seed = next(seed for seed in range(40) if 12 in order[seed][:4])  # 4 = 0.3 of 13
    with pytest.raises(MttError) as error:
        _python_split(frames, seed)
    assert str(error.value) == (
        "structure 12 of the Python training_set (in the validation_set) has elements [7] that "
        "the training set does not contain (it has [1, 6, 8]); the random split put every "
        "structure with them in the validation_set: add more such structures to the Python "
        "training_set, or remove these"
    )


def test_unlabelled_python_structures_are_named_by_their_index_in_the_list(work, caplog):
    """The warning named a structure by its index in the split, and told of the validation
    set that 'they train on their other labels only', though it trains nothing."""
    frames = [atoms if i % 3 else with_labels(atoms) for i, atoms in enumerate(ethanol(12))]
    caplog.set_level("WARNING", logger="mtt")
    _python_split(frames, seed=0)
    warnings = [
        r.getMessage() for r in caplog.records if "have no 'energy' label" in r.getMessage()
    ]
    assert len(warnings) == 2, warnings
    training, validation = sorted(warnings)
    assert "(the first: structure 0 of the Python training_set (in the training_set))" in training
    assert training.endswith("they train on their other labels only, if any")
    assert "(the first: structure 9 of the Python training_set (in the validation_set))" in (
        validation
    )
    assert validation.endswith(
        "the validation_set errors are measured on their other labels only, if any"
    )


@pytest.mark.parametrize("configured", [False, True])
def test_python_callers_see_the_report_unless_they_configured_logging(work, configured):
    """mtt.train from a script printed nothing (its messages went to an unconfigured logger),
    not even the dry run's report; with the caller's own logging set up, the messages go
    there, once. A fresh interpreter: pytest configures logging itself."""
    import subprocess
    import sys

    ase.io.write("train.xyz", ethanol())
    write_options(options())
    setup = (
        "import logging; logging.basicConfig(level=logging.INFO, format='LOGGED %(message)s'); "
        if configured
        else ""
    )
    script = f"{setup}import mtt; mtt.train('options.yaml', dry_run=True)"
    completed = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    lines = (completed.stdout + completed.stderr).splitlines()
    reports = [line for line in lines if "training_set: 10 structures" in line]
    assert len(reports) == 1, lines
    assert reports[0].startswith("LOGGED ") == configured


def test_a_quoted_fraction_is_not_taken_for_a_missing_file(work, capsys):
    ase.io.write("train.xyz", ethanol())
    write_options(options(validation_set="0.1"))
    message = train(capsys)
    assert message.endswith("a fraction of the training set is a number: write 0.1 without quotes")


def test_validation_set_read_from_the_training_file_is_flagged(work, capsys):
    ase.io.write("train.xyz", ethanol())
    write_options(options(validation_set="train.xyz"))
    assert main(["train", "options.yaml", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "validation_set reads the training set's file" in out


def test_export_of_a_run_directory_names_its_checkpoint(work, capsys, trained):
    run = trained["checkpoint"].parent
    message = fail(capsys, "export", str(run))
    assert message == (
        f"{str(run)!r} is a directory; give the .ckpt file written by 'mtt train' in it "
        f"(e.g. {str(run / 'model.ckpt')!r})"
    )


def test_export_of_an_unknown_shipped_model_lists_the_shipped_ones(work, capsys):
    from mtt import pretrained

    message = fail(capsys, "export", "sevennet-1")
    assert message.startswith("'sevennet-1' is neither a checkpoint file nor a shipped model")
    assert all(name in message for name in pretrained.names())


@pytest.mark.parametrize("reader, hint", [("vaspp", "did you mean 'vasp'?"), ("metatensor", "")])
def test_a_reader_that_is_not_an_ase_format(work, capsys, reader, hint):
    """'could not read structures from ...: vaspp' did not say the name was unknown."""
    ase.io.write("train.xyz", ethanol())
    systems = {"read_from": "train.xyz", "reader": reader}
    write_options(options(training_set__systems=systems))
    message = train(capsys)
    assert message.startswith(f"reader {reader!r} is not a format ASE reads; {hint}")


def test_a_file_read_as_another_format_names_the_guessed_one(work, capsys):
    ase.io.write("train.data", ethanol(), format="extxyz")
    write_options(options(training_set__systems="train.data"))
    message = train(capsys)
    assert message.endswith("(guessed from the file); set 'reader' if it is another format")


def test_forces_key_that_holds_a_value_per_structure(work, capsys):
    """Found in atoms.info, the key was reported as missing."""
    frames = [with_labels(a, energy=a.get_potential_energy()) for a in ethanol()]
    for atoms in frames:
        atoms.info["F_bad"] = [1.0, 2.0, 3.0, 4.0, 5.0]
    ase.io.write("train.xyz", frames)
    targets = {"energy": {"unit": "kcal/mol", "forces": "F_bad"}}
    write_options(options(training_set__targets=targets))
    message = train(capsys)
    assert "under the key 'F_bad'; 'F_bad' is in atoms.info, one value per structure" in message


def test_a_key_missing_from_a_validation_file_names_the_training_sets_option(work, capsys):
    """A validation file takes the training set's targets: 'validation_set.targets...' does
    not exist to be set."""
    ase.io.write("train.xyz", ethanol())
    ase.io.write("val.xyz", [with_labels(a, forces=a.get_forces()) for a in ethanol(3)])
    write_options(options(validation_set="val.xyz"))
    message = train(capsys)
    assert "set 'training_set.targets.energy.key' to the right one" in message
    assert message.endswith(
        "(validation_set is a file, read with training_set's targets; if its keys differ, give "
        "validation_set its own section with 'systems' and 'targets')"
    )


@pytest.mark.parametrize("factor", [1.0, 10.0])
def test_stress_and_virial_both_read_must_agree(work, capsys, factor):
    """With stress and virial both true and a file holding both, the virial silently won;
    they are read both, and must say the same."""
    frames = carbon()
    for atoms in frames:
        atoms.info["stress"] = -factor * np.asarray(atoms.info["virial"]) / atoms.get_volume()
    ase.io.write("train.xyz", frames)
    targets = {"energy": {"forces": "force", "stress": True, "virial": True}}
    write_options(options(training_set__targets=targets, validation_set=0.0))
    if factor == 1.0:
        assert main(["train", "options.yaml", "--dry-run"]) == 0
        return
    message = train(capsys)
    assert "disagrees with the structure's stress (stress = -virial / volume)" in message
    assert message.endswith(
        "set 'training_set.targets.energy.stress: false' or "
        "'training_set.targets.energy.virial: false' to read only one of them"
    )


def test_no_hint_for_a_key_that_another_setting_reads(work, capsys):
    """Carbon's 'virial' read as the virial is not 'stress under another key'."""
    ase.io.write("train.xyz", carbon())
    targets = {"energy": {"forces": "force", "virial": {"key": "virial"}}}
    write_options(options(training_set__targets=targets, validation_set=0.0))
    assert main(["train", "options.yaml", "--dry-run"]) == 0
    assert "looks like them" not in capsys.readouterr().out


def test_positions_far_from_the_origin_in_float32_are_flagged(work, capsys):
    """At 1e8 Å float32 keeps no digit of the distances; the non-finite loss that follows
    blamed the learning rate. The dry run says what is wrong, and what to do."""
    frames = ethanol()
    for atoms in frames:
        atoms.positions += 1e8
    ase.io.write("train.xyz", frames)
    write_options(options())
    main(["train", "options.yaml", "--dry-run"])
    out = capsys.readouterr().out
    assert "positions of the training set reach 1e+08 angstrom: float32 keeps ~7 digits" in out
    assert "or train with base_precision: 64" in out


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_prints_the_traceback_wherever_it_is_written(work, capsys, where):
    """`mtt --debug export x` (as `mtt --help` shows it) was overridden by the command's own
    --debug default."""
    Path("notes.ckpt").write_text("not a checkpoint\n")
    argv = ["export", "notes.ckpt", "-o", "x.pt"]
    argv = ["--debug", *argv] if where == "before" else [*argv, "--debug"]
    assert main(argv) == 1
    assert "Traceback (most recent call last)" in capsys.readouterr().err


def test_import_mtt_is_cheap_and_its_functions_show_their_signatures():
    """`import mtt` imports no torch; mtt.train is the API's function itself (help() showed
    (*args, **kwargs) of a wrapper)."""
    import subprocess
    import sys

    script = (
        "import inspect, sys, mtt; print('torch' in sys.modules); "
        "print(list(inspect.signature(mtt.train).parameters)[:3]); "
        "print(list(inspect.signature(mtt.export).parameters)[:2])"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "False",
        "['options', 'training_set', 'output']",
        "['checkpoint_path', 'output']",
    ]


def test_a_label_in_info_and_in_the_calculator_with_two_values_is_refused():
    """A stale ``atoms.info["energy"]`` next to a calculator that computed anew: the info value
    was taken without a word; which is right cannot be guessed, so both are named. Equal
    values (a file that stores both) stay fine."""
    frames = ethanol(3)
    for atoms in frames:
        atoms.info["energy"] = atoms.get_potential_energy()
    target = {"energy": EnergyTargetOptions(unit="kcal/mol")}
    assert len(dataset_from_atoms(frames, target, name="training_set")) == 3
    frames[1].info["energy"] += 100.0
    with pytest.raises(MttError) as error:
        dataset_from_atoms(frames, target, name="training_set")
    assert str(error.value) == (
        "'energy' of structure 1 of 'training_set' is in atoms.info and in its calculator's "
        "results, with different values; remove the stale one (del atoms.info[...], or "
        "atoms.calc = None)"
    )


def test_empty_output_and_an_output_dir_below_a_file(work, capsys):
    """``-o ''`` crashed after the whole training (moving the model to ''); an output
    directory below a file was an internal NotADirectoryError. Both refused first."""
    write_options(options())
    assert fail(capsys, "train", "options.yaml", "-o", "") == (
        "the output path is empty; give the path of a file to write (-o)"
    )
    Path("afile").write_text("mine")
    message = fail(capsys, "train", "options.yaml", "--output-dir", "afile/sub")
    assert message.startswith("cannot make the run directory 'afile/sub/")
    assert message.endswith("give --output-dir a directory you can write, or a new one")
    assert Path("afile").read_text() == "mine"


def test_negative_plateau_patience_is_refused():
    from mtt.hypers import parse
    from mtt.training.hypers import TrainingHypers

    with pytest.raises(OptionsError) as error:
        parse(TrainingHypers, {"plateau_patience": -3})
    assert error.value.problems == ["option 'plateau_patience' must not be negative, got -3"]


def test_a_generic_label_of_the_other_kind_is_named_in_the_partial_label_warning(work, capsys):
    """One structure holds its per-structure label per atom instead: the warning listed only
    the keys of the info and missed where the label is."""
    frames = ethanol()
    for index, atoms in enumerate(frames):
        if index == 5:
            atoms.arrays["q"] = np.zeros(len(atoms))
        else:
            atoms.info["q"] = 0.0
    ase.io.write("train.xyz", frames)
    targets = {"energy": {"unit": "kcal/mol"}, "mtt::q": {"key": "q", "unit": ""}}
    write_options(options(validation_set=0.0, training_set__targets=targets))
    assert main(["train", "options.yaml", "--dry-run"]) == 0
    (warning,) = [line for line in capsys.readouterr().out.splitlines() if "'mtt::q' label" in line]
    assert "(the first: structure 5 of" in warning
    assert "; per atom: ['energy', 'forces', 'q']" in warning
