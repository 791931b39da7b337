"""Bad input to ``mtt eval`` is one line naming the key, file or option and saying how to fix
it; nothing the user made (the predictions file or its parity plot) is overwritten without
--force.

The helpers and fixtures are those of ``test_bad_input.py``: each test drives the real command
line in a fresh directory holding ``train.xyz`` (a dozen labelled ethanol structures), and one
tiny model is trained for this module.
"""

import shutil
from pathlib import Path

import ase.io
import pytest
import test_bad_input
from test_bad_input import fail, run, write_options

from mtt.cli import main

work = test_bad_input.work
trained = test_bad_input.trained  # module scope: trained once for this file

LABELLED = {"systems": "train.xyz", "targets": {"energy": {"unit": "kcal/mol"}}}


def test_existing_parity_plot_is_refused_before_evaluating_and_force_overwrites_both(
    work, capsys, trained
):
    write_options(LABELLED, "eval.yaml")
    Path("fig.png").write_text("my figure")
    message = fail(capsys, "eval", trained["model"], "eval.yaml", "-o", "fig.xyz")
    assert message == (
        "'fig.png' already exists (the parity plot of 'fig.xyz' goes there); choose another "
        "output path or pass --force to overwrite it"
    )
    assert Path("fig.png").read_text() == "my figure"
    assert not Path("fig.xyz").exists()  # refused before anything was evaluated

    Path("fig.xyz").write_text("my predictions")
    status, problems = run(capsys, "eval", trained["model"], "eval.yaml", "-o", "fig.xyz", "-f")
    assert (status, problems) == (0, [])
    assert Path("fig.png").read_bytes()[:4] == b"\x89PNG"
    assert Path("fig.xyz").read_text() != "my predictions"


def test_existing_png_is_kept_when_no_parity_plot_is_drawn(work, capsys, trained):
    """Structures without compared labels give no plot: a file of that name is no obstacle."""
    Path("fig.png").write_text("my figure")
    status, problems = run(capsys, "eval", trained["model"], "train.xyz", "-o", "fig.xyz")
    assert (status, problems) == (0, [])
    assert Path("fig.png").read_text() == "my figure"


@pytest.mark.parametrize("output", ["out.png", "pred.traj"])
def test_predictions_path_not_of_extended_xyz(work, capsys, trained, output):
    """Predictions are extended XYZ text: a .traj held text ASE could not read, and a .png
    was then overwritten by the parity plot."""
    write_options(LABELLED, "eval.yaml")
    message = fail(capsys, "eval", trained["model"], "eval.yaml", "-o", output)
    assert message == (
        f"-o {output!r}: predictions are written as extended XYZ; give a path ending in .xyz "
        "(ASE reads it, and converts it to other formats)"
    )
    assert not Path(output).exists()


def test_unknown_length_unit_in_the_eval_yaml(work, capsys, trained):
    systems = {"read_from": "train.xyz", "length_unit": "furlong"}
    write_options({"systems": systems}, "eval.yaml")
    message = fail(capsys, "eval", trained["model"], "eval.yaml")
    assert message.startswith("eval.systems.length_unit: 'furlong' is not a valid length unit")
    assert "e.g. 'angstrom'" in message  # the fix, as training words it
    assert not Path("predictions.xyz").exists()


def test_empty_structure_file_given_directly(work, capsys, trained):
    """An empty file is said to be empty (it was 'could not read structure 0 ... fix that
    structure'); an unreadable one names the flag that sets the format of a file given
    directly."""
    Path("empty.xyz").write_text("")
    message = fail(capsys, "eval", trained["model"], "empty.xyz")
    assert message == "'empty.xyz' is empty: it holds no structures"
    Path("garbage.xyz").write_text("not a structure\n")
    message = fail(capsys, "eval", trained["model"], "garbage.xyz")
    assert message.startswith("could not read structure 0 of 'garbage.xyz'")
    assert message.endswith("pass --reader <ASE format> if it is guessed wrong")
    assert not Path("predictions.xyz").exists()


def test_reader_names_the_format_of_a_structure_file(work, capsys, trained):
    """A file whose name does not tell its format (a POSCAR saved as .dat) is read with
    --reader; without it, the error says so."""
    import ase.io

    frames = ase.io.read("train.xyz", ":2")
    frames[0].center(vacuum=5.0)  # VASP needs a cell
    ase.io.write("structure.dat", frames[0], format="vasp")
    message = fail(capsys, "eval", trained["model"], "structure.dat")
    assert "pass --reader <ASE format>" in message
    status, problems = run(capsys, "eval", trained["model"], "structure.dat", "--reader", "vasp")
    assert (status, problems) == (0, [])
    (predicted,) = ase.io.read("predictions.xyz", ":")
    assert predicted.get_chemical_formula() == frames[0].get_chemical_formula()


def test_reader_with_a_data_set_yaml_is_refused(work, capsys, trained):
    write_options(LABELLED, "eval.yaml")
    message = fail(capsys, "eval", trained["model"], "eval.yaml", "--reader", "extxyz")
    assert message == (
        "--reader is for a structure file, but 'eval.yaml' is a data set YAML; set "
        "systems.reader in it"
    )


def test_unreadable_structure_file_of_an_eval_yaml(work, capsys, trained):
    Path("junk.xyz").write_text("junk\nmore junk\n")
    write_options({"systems": "junk.xyz"}, "eval.yaml")
    message = fail(capsys, "eval", trained["model"], "eval.yaml")
    assert "--reader" not in message  # the YAML is where its format is set
    assert "set 'systems.reader' in 'eval.yaml' to an ASE format name" in message


def test_missing_structure_file_given_directly(work, capsys, trained):
    message = fail(capsys, "eval", trained["model"], "nothere.xyz")
    assert message.startswith("file not found: 'nothere.xyz';")
    assert "options file" not in message  # there is none
    assert "current directory" in message


def test_missing_structure_file_of_an_eval_yaml_keeps_its_message(work, capsys, trained):
    """Paths in a YAML are relative to its directory, as the message says."""
    write_options({"systems": "nothere.xyz"}, "eval.yaml")
    message = fail(capsys, "eval", trained["model"], "eval.yaml")
    assert f"file not found: {str(work / 'nothere.xyz')!r}" in message
    assert "relative paths start at the directory of the options file" in message


@pytest.mark.parametrize("size", [0, -3])
def test_batch_size_below_one(work, capsys, trained, size):
    message = fail(capsys, "eval", trained["model"], "train.xyz", "-b", size)
    assert message == f"-b/--batch-size must be at least 1, got {size}"
    assert not Path("predictions.xyz").exists()


def test_target_the_model_does_not_have(work, capsys, trained):
    targets = {"mtt::dipole": {"type": {"cartesian": {"rank": 1}}, "unit": "D"}}
    write_options({"systems": "train.xyz", "targets": targets}, "eval.yaml")
    message = fail(capsys, "eval", trained["model"], "eval.yaml")
    assert message.startswith("eval.targets.mtt::dipole: the model has no output 'mtt::dipole'")
    assert "(its outputs are ['energy'])" in message
    assert not Path("predictions.xyz").exists()


def test_the_declared_energy_variant_is_the_output_compared(work, capsys):
    """A model with 'energy' (kcal/mol) and 'energy/ev' (eV), evaluated on labels declared as
    'energy/ev' only: without --output-name the default 'energy' output was compared with
    them (an RMSE of ~4000 eV/atom, reported without a word)."""
    frames = ase.io.read("train.xyz", ":")
    for atoms in frames:  # the same energies in eV
        atoms.info["e_ev"] = atoms.get_potential_energy() * 0.0433641042
    ase.io.write("ev.xyz", frames)
    ev = {"key": "e_ev", "unit": "eV", "forces": False}
    targets = {"energy": {"unit": "kcal/mol"}, "energy/ev": ev}
    options = test_bad_input.options(training_set__systems="ev.xyz", training_set__targets=targets)
    write_options(options)
    assert main(["train", "options.yaml", "-o", "two.pt"]) == 0
    declared = {"energy/ev": ev}
    write_options({"systems": "ev.xyz", "targets": declared}, "eval.yaml")
    capsys.readouterr()
    assert main(["eval", "two.pt", "eval.yaml", "-o", "p.xyz"]) == 0
    out = capsys.readouterr().out
    assert "comparing the model's output 'energy/ev', the energy eval.targets declares" in out
    (line,) = [line for line in out.splitlines() if line.startswith("energy_per_atom: RMSE")]
    assert float(line.split()[2]) < 1.0, line  # eV per atom: the same model's two heads


def test_two_energies_declared_for_one_energy_output(work, capsys, trained):
    """Only one energy output is compared per run: a second declared energy is refused, not
    silently left without errors."""
    targets = {"energy": {"unit": "kcal/mol"}, "energy/pbe0": {"key": "energy", "unit": "eV"}}
    write_options({"systems": "train.xyz", "targets": targets}, "eval.yaml")
    message = fail(capsys, "eval", trained["model"], "eval.yaml")
    assert message.startswith(
        "eval.targets declares the energies ['energy', 'energy/pbe0'], but mtt eval compares "
        "one energy output at a time (here 'energy', chosen with --output-name)"
    )
    assert not Path("predictions.xyz").exists()


def test_predictions_keep_the_structures_own_labels(tmp_path):
    """predictions.xyz keeps each structure's info and arrays (labels such as U0 next to the
    predictions), except keys a prediction is written under; an energy label stored in info
    under the calculator's name gives way to the predicted energy (extxyz refuses both)."""
    import ase
    import ase.io
    import numpy as np
    from ase.calculators.singlepoint import SinglePointCalculator

    from mtt.evaluate import write_predictions

    atoms = ase.Atoms("H2O", positions=[[0, 0, 0], [0, 0, 0.96], [0.93, 0, -0.24]])
    atoms.info.update({"U0": -76.4, "energy": 1.0, "mu": 1.9})
    atoms.arrays["charges_ref"] = np.array([0.4, 0.4, -0.8])
    atoms.calc = SinglePointCalculator(atoms, energy=2.0, forces=np.ones((3, 3)))
    prediction = {"energy": np.array(-3.0), "forces": np.zeros((3, 3))}
    generic = {"mtt::mu": np.array([2.5])}
    write_predictions(str(tmp_path / "p.xyz"), [atoms], [prediction], [generic])
    (read,) = ase.io.read(tmp_path / "p.xyz", ":")
    assert read.get_potential_energy() == -3.0 and not read.get_forces().any()
    assert read.info["U0"] == -76.4 and float(np.ravel(read.info["mu"])[0]) == 2.5
    np.testing.assert_array_equal(read.arrays["charges_ref"], [0.4, 0.4, -0.8])


def test_a_label_moved_aside_does_not_overwrite_a_key_of_that_name(tmp_path):
    """The carbon allotropes have 'class' (one-hot) and 'class_label' (diamond, ...): the
    predicted mtt::class moved 'class' to 'class_label', overwriting the names of the phases."""
    import ase
    import ase.io
    import numpy as np

    from mtt.evaluate import write_predictions

    atoms = ase.Atoms("C2", positions=[[0, 0, 0], [0, 0, 1.5]])
    atoms.info.update({"class": np.array([1.0, 0.0, 0.0]), "class_label": "diamond"})
    generic = {"mtt::class": np.array([0.9, 0.1, 0.0])}
    write_predictions(str(tmp_path / "p.xyz"), [atoms], [{}], [generic])
    (read,) = ase.io.read(tmp_path / "p.xyz", ":")
    assert read.info["class_label"] == "diamond"
    np.testing.assert_array_equal(read.info["class_label_2"], [1.0, 0.0, 0.0])
    np.testing.assert_allclose(read.info["class"], [0.9, 0.1, 0.0])


def test_predictions_keep_the_labels_ase_read_as_calculator_results(tmp_path):
    """An extxyz file's energy, forces and stress are read by ASE as calculator results; the
    predictions take the calculator, and the labels stay next to them as <key>_label."""
    import ase
    import ase.io
    import numpy as np
    from ase.calculators.singlepoint import SinglePointCalculator

    from mtt.evaluate import write_predictions

    atoms = ase.Atoms("Si2", positions=[[0, 0, 0], [1.3, 1.3, 1.3]], cell=[4, 4, 4], pbc=True)
    forces = np.arange(6.0).reshape(2, 3)
    stress = np.array([1.0, 2.0, 3.0, 0.1, 0.2, 0.3])
    atoms.calc = SinglePointCalculator(atoms, energy=-9.5, forces=forces, stress=stress)
    ase.io.write(tmp_path / "labels.xyz", atoms)
    (labelled,) = ase.io.read(tmp_path / "labels.xyz", ":")
    prediction = {"energy": np.array(-9.0), "forces": np.zeros((2, 3)), "stress": np.zeros(6)}
    write_predictions(str(tmp_path / "p.xyz"), [labelled], [prediction])
    (read,) = ase.io.read(tmp_path / "p.xyz", ":")
    assert read.get_potential_energy() == -9.0 and not read.get_stress().any()
    assert float(read.info["energy_label"]) == -9.5
    np.testing.assert_array_equal(read.arrays["forces_label"], forces)
    np.testing.assert_array_equal(np.ravel(read.info["stress_label"]), stress)


def test_generic_targets_named_like_the_calculator_results_are_written_beside_them(tmp_path):
    """mtt::energy (a generic target, not the energy) went under 'energy' in info, which
    extxyz refuses next to the calculator's energy: eval failed after predicting."""
    import ase
    import ase.io
    import numpy as np

    from mtt.evaluate import write_predictions

    atoms = ase.Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]])
    prediction = {"energy": np.array(-1.0), "forces": np.zeros((2, 3))}
    generic = {"mtt::energy": np.array([4.0]), "mtt::forces": np.ones((2, 1, 1))}
    write_predictions(str(tmp_path / "p.xyz"), [atoms], [prediction], [generic])
    (read,) = ase.io.read(tmp_path / "p.xyz", ":")
    assert read.get_potential_energy() == -1.0
    assert float(np.ravel(read.info["mtt_energy"])[0]) == 4.0
    np.testing.assert_array_equal(np.ravel(read.arrays["mtt_forces"]), [1.0, 1.0])


def test_extensions_directory_that_does_not_exist(work, capsys, trained):
    message = fail(capsys, "eval", trained["model"], "train.xyz", "-e", "nowhere")
    assert message == "extensions directory not found: 'nowhere'"


def test_model_that_needs_extensions_points_to_the_option(work, capsys, trained, monkeypatch):
    """A model of another tool built with a compiled extension (metatrain's soap_bpnn needs
    sphericart) names -e/--extensions-dir and the 'extensions/' directory beside it, instead
    of suggesting to export the model again with mtt."""
    import mtt.evaluate

    def missing(path, extensions_directory=None):
        raise RuntimeError(
            f"failed to load the model at '{path}'. This is likely due to missing TorchScript "
            "extensions.\nmore detail"
        )

    monkeypatch.setattr(mtt.evaluate, "load_atomistic_model", missing)
    Path("extensions").mkdir()
    shutil.copy(trained["model"], "other.pt")
    message = fail(capsys, "eval", "other.pt", "train.xyz")
    assert "give their directory with -e/--extensions-dir" in message
    assert f"{str(Path('extensions').resolve())!r} exists" in message


@pytest.mark.parametrize("labelled", [False, True])
def test_predictions_never_replace_the_structures_they_are_made_from(
    work, capsys, trained, labelled
):
    """Even with --force: the file named on the command line or in the data set YAML."""
    before = Path("train.xyz").read_bytes()
    if labelled:
        write_options(LABELLED, "eval.yaml")
    data = "eval.yaml" if labelled else "train.xyz"
    message = fail(capsys, "eval", trained["model"], data, "-o", "train.xyz", "-f")
    assert message == "'train.xyz' is the file this command reads; write the output to another path"
    assert Path("train.xyz").read_bytes() == before


@pytest.mark.parametrize("labelled", [False, True])
def test_atoms_on_top_of_each_other_are_refused_not_predicted_as_nan(
    work, capsys, trained, labelled
):
    """Their energy and forces were NaN, written without a word (or, with labels, an
    internal error from the parity plot's axis limits)."""
    import ase.io

    frames = ase.io.read("train.xyz", ":")
    frames[4].positions[1] = frames[4].positions[0]
    ase.io.write("dup.xyz", frames)
    data, named = "dup.xyz", "dup.xyz"
    if labelled:  # the structure file is named, not the YAML that names it
        write_options(dict(LABELLED, systems="dup.xyz"), "eval.yaml")
        data, named = "eval.yaml", str(Path.cwd() / "dup.xyz")
    message = fail(capsys, "eval", trained["model"], data, "-o", "out.xyz")
    assert message.startswith(f"structure 4 of {named!r}: atoms 0 and 1 are 0 apart")
    assert not Path("out.xyz").exists()


def test_a_file_of_no_structure_format_is_named_as_such(work, capsys, trained):
    """ASE's message is the bare extension: 'could not read structure 0 of ...: pt'."""
    message = fail(capsys, "eval", trained["model"], trained["model"], "-o", "p.xyz")
    assert message.startswith(
        f"{str(trained['model'])!r} is not a structure file ASE can read (no format for 'pt': "
        "a model or an options file?); give a structure file, or "
    )


def test_the_training_options_file_given_to_eval(work, capsys, trained):
    write_options(test_bad_input.options())
    message = fail(capsys, "eval", trained["model"], "options.yaml")
    assert message.startswith("'options.yaml' is an options file of 'mtt train'; give mtt eval")


def test_a_labelled_file_given_directly_says_its_labels_are_not_compared(work, capsys, trained):
    """No errors were printed and nothing said why: a file given directly has no declared
    units, so its labels are not compared, and the log says so with the way to compare."""
    capsys.readouterr()
    assert main(["eval", str(trained["model"]), "train.xyz", "-o", "p.xyz"]) == 0
    out = capsys.readouterr().out
    assert "train.xyz has labels (energy, forces), not compared: a structure file" in out
    assert "RMSE" not in out


def test_energy_labels_without_a_unit_are_in_the_models_unit(work, capsys, trained):
    """As metatrain's eval: an energy target without ``unit`` is read in the model's unit
    (kcal/mol here); it was read in eV, which made a well-trained model look 23x off, with no
    hint why."""
    write_options(LABELLED, "declared.yaml")
    write_options({"systems": "train.xyz", "targets": {"energy": {}}}, "bare.yaml")
    lines = {}
    for name in ("declared", "bare"):
        capsys.readouterr()
        assert main(["eval", str(trained["model"]), f"{name}.yaml", "-o", f"{name}.xyz"]) == 0
        out = capsys.readouterr().out
        lines[name] = [line for line in out.splitlines() if line.startswith("energy_per_atom")]
    assert "eval.targets.energy.unit is not given: labels read in kcal/mol, the model's unit" in out
    assert lines["bare"] == lines["declared"] and len(lines["bare"]) == 1
    # the predictions file says what ASE would otherwise take for eV
    written = ase.io.read("bare.xyz", ":")
    assert {(a.info["energy_unit"], a.info["length_unit"]) for a in written} == {
        ("kcal/mol", "angstrom")
    }


def test_labels_per_structure_of_an_output_offered_per_atom(tmp_path, capsys):
    """metatrain's models offer every output per atom; labels declared per structure are
    compared with the per-structure value the model gives when asked so (the sum over atoms),
    not with its first atom's value (an RMSE of 214 instead of 0.017 Hartree on QM9 U0).
    mtt's models give it too. Labels per atom of a per-structure output are refused."""
    import numpy as np
    import torch

    from mtt.api import save_model
    from mtt.evaluate import generic_outputs, load_model
    from mtt.testing import molecule, random_model

    model = random_model(
        "soap_bpnn", {"cutoff": 3.0, "max_radial": 2, "max_angular": 1}, torch.float64
    )
    save_model(model.export(), str(tmp_path / "model.pt"))
    frames = []
    for seed in range(4):
        atoms = molecule()
        atoms.rattle(0.1, seed=seed)
        frames.append(atoms)
    per_atom = generic_outputs(
        load_model(str(tmp_path / "model.pt")), frames, ["mtt::charges"], "angstrom"
    )
    for atoms, values in zip(frames, per_atom):
        atoms.info["total"] = values["mtt::charges"].sum(axis=0) + 0.25
    ase.io.write(tmp_path / "data.xyz", frames)
    target = {"key": "total", "unit": "", "num_subtargets": 2}
    write_options(
        {"systems": "data.xyz", "targets": {"mtt::charges": target}}, str(tmp_path / "e.yaml")
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path)
        assert main(["eval", "model.pt", "e.yaml", "-o", "p.xyz"]) == 0
        written = ase.io.read("p.xyz", ":")
        dipoles = {
            "key": "total",
            "unit": "D",
            "per_atom": True,
            "type": {"cartesian": {"rank": 1}},
        }
        write_options({"systems": "data.xyz", "targets": {"mtt::dipole": dipoles}}, "d.yaml")
        assert fail(capsys, "eval", "model.pt", "d.yaml", "-o", "d.xyz") == (
            "eval.targets.mtt::dipole.per_atom: the labels are per atom but the model predicts "
            "'mtt::dipole' per structure; set per_atom: false with labels per structure"
        )
    np.testing.assert_allclose(
        written[0].info["charges"], frames[0].info["total"] - 0.25, atol=1e-6
    )


@pytest.fixture(scope="module")
def generic_model(tmp_path_factory):
    """An untrained exported model with the outputs energy and mtt::charges, dipole, gap and
    polar, for H, C and O."""
    import torch

    from mtt.api import save_model
    from mtt.testing import random_model

    model = random_model(
        "soap_bpnn", {"cutoff": 3.0, "max_radial": 2, "max_angular": 1}, torch.float64
    )
    path = tmp_path_factory.mktemp("generic") / "model.pt"
    save_model(model.export(), str(path))
    return path


SILANE = ase.Atoms("SiH4", [[0, 0, 0], [1, 1, 1], [-1, -1, 1], [-1, 1, -1], [1, -1, -1]])
OUTPUTS = "['energy', 'mtt::charges', 'mtt::dipole', 'mtt::gap', 'mtt::polar']"


@pytest.mark.parametrize(
    "change, message",
    [
        (
            {"names": ["mtt::dipol"]},
            f"the model has no output 'mtt::dipol'; did you mean 'mtt::dipole'? it has {OUTPUTS}",
        ),
        (
            {"names": ["dipole"]},
            "the model has no output 'dipole'; did you mean 'mtt::dipole' (generic outputs are "
            f"named mtt::<name>)? it has {OUTPUTS}",
        ),
        (
            {"names": "mtt::dipole"},
            "names is a string ('mtt::dipole'); give a list of outputs, e.g. ['mtt::dipole']",
        ),
        ({"model": "missing.pt"}, "model file not found: 'missing.pt'"),
        (
            {"model": {}},
            "model is a dict, not an exported model; give the path of one (e.g. 'model.pt') or "
            "mtt.evaluate.load_model(path)",
        ),
        (
            {"frames": "data.xyz"},
            "frames is a path ('data.xyz'), where structures are expected; read them with "
            "ase.io.read(path, ':')",
        ),
        (
            {"length_unit": "angstrm"},
            "generic_outputs length_unit: 'angstrm' is not a valid length unit",
        ),
        (
            {"frames": [SILANE]},
            "structure 0 of the data has elements [14] the model was not trained on (it knows "
            "[1, 6, 8]); such structures cannot be evaluated with this model",
        ),
    ],
)
def test_bad_input_to_generic_outputs_is_one_line(generic_model, change, message):
    """mtt.evaluate.generic_outputs (the documented way to get generic targets in Python) gave
    a bare KeyError for a misspelt output, an AttributeError for a path, metatomic's errors
    for an unknown element or length unit; now each is one line saying what to give."""
    from mtt.errors import MttError
    from mtt.evaluate import generic_outputs, load_model
    from mtt.testing import molecule

    arguments = {
        "model": load_model(str(generic_model)),
        "frames": [molecule()],
        "names": ["mtt::dipole"],
        "length_unit": "angstrom",
    }
    arguments.update(change)
    with pytest.raises(MttError) as error:
        generic_outputs(**arguments)
    assert str(error.value).startswith(message)


def test_generic_outputs_and_predict_take_the_path_of_a_model(generic_model):
    import numpy as np

    from mtt.evaluate import generic_outputs, load_model, predict
    from mtt.testing import molecule

    frames = [molecule()]
    model = load_model(str(generic_model))
    for path in (str(generic_model), generic_model):
        from_path = generic_outputs(path, frames, ["mtt::dipole"], "angstrom")
        loaded = generic_outputs(model, frames, ["mtt::dipole"], "angstrom")
        np.testing.assert_array_equal(from_path[0]["mtt::dipole"], loaded[0]["mtt::dipole"])
        energy = predict(path, frames, "energy", "angstrom", "eV")[0]["energy"]
        assert energy == predict(model, frames, "energy", "angstrom", "eV")[0]["energy"]


@pytest.mark.parametrize(
    "energy, energy_unit, message",
    [
        ("enrgy", "eV", "the model has no output 'enrgy'; it has ['energy']"),
        ("energy", "eVV", "predict energy_unit: 'eVV' is not a valid energy unit"),
    ],
)
def test_bad_energy_output_or_unit_given_to_predict(generic_model, energy, energy_unit, message):
    from mtt.errors import MttError
    from mtt.evaluate import predict
    from mtt.testing import molecule

    with pytest.raises(MttError) as error:
        predict(str(generic_model), [molecule()], energy, "angstrom", energy_unit)
    assert str(error.value).startswith(message)


def test_labels_in_another_unit_than_declared_are_said_by_their_force_spread(work, capsys, trained):
    """kcal/mol labels declared as eV gave an RMSE of thousands of eV/atom without a word;
    forces spread ~23x the (converted) predictions then, which is said with the units."""
    write_options({"systems": "train.xyz", "targets": {"energy": {"unit": "eV"}}}, "eval.yaml")
    capsys.readouterr()
    assert main(["eval", str(trained["model"]), "eval.yaml", "-o", "p.xyz"]) == 0
    (line,) = [line for line in capsys.readouterr().out.splitlines() if "labels spread" in line]
    ratio = float(line.split("labels spread ")[1].split()[0])
    assert ratio > 10, line
    assert "check the energy and length units declared for the data" in line


def test_the_force_spread_ratio_and_its_limits(caplog):
    """The ratio is the labels' standard deviation over the predictions' (numpy's, over
    batches added one at a time); within 3x either way nothing is said."""
    import logging

    import numpy as np

    from mtt.cli.eval import _check_force_spread
    from mtt.evaluate import ErrorSums

    rng = np.random.default_rng(0)
    labels = rng.normal(0.3, 2.0, size=(40, 3))
    predicted = 0.1 * labels + rng.normal(0.0, 0.01, size=labels.shape)
    sums = ErrorSums()
    for k in range(0, 40, 7):
        sums.add("forces", predicted[k : k + 7], labels[k : k + 7])
    expected = np.std(labels) / np.std(predicted)
    assert sums.spread_ratio("forces") == pytest.approx(expected, rel=1e-10)
    assert sums.spread_ratio("stress") is None
    with caplog.at_level(logging.WARNING, logger="mtt"):
        for ratio in (None, 1.0, 2.9, 0.34):
            _check_force_spread(ratio)
        assert caplog.records == []
        _check_force_spread(expected)
        _check_force_spread(0.2)
    assert [r.getMessage().split(" times")[0] for r in caplog.records] == [
        f"forces: the labels spread {expected:.3g}",
        "forces: the labels spread 0.2",
    ]
