"""Pictures of a run: ``mtt train`` leaves readable learning curves and a parity plot with one
panel per quantity, ``mtt plot`` redraws them from a run directory, ``mtt eval`` draws its own
parity plot, and TensorBoard (when installed) gets exactly the metrics of ``train.csv``."""

import csv
import glob
import logging
import os
import shutil
from pathlib import Path

import ase.io
import numpy as np
import pytest
import yaml
from helpers import TINY_MODEL
from matplotlib.image import imread

from mtt import plots
from mtt.cli import main
from mtt.training.metrics_log import MetricsLog

DATA = os.path.join(os.path.dirname(__file__), "..", "examples", "data")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
KCAL_UNITS = {
    "energy_per_atom": "kcal/mol/atom",
    "energy/forces": "kcal/mol/angstrom",
    "energy/stress": "kcal/mol/angstrom^3",
}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished 2-epoch run on 12 ethanol structures (kcal/mol): (its folder, run dir)."""
    root = tmp_path_factory.mktemp("run")
    frames = ase.io.read(os.path.join(DATA, "ethanol_reduced_100.xyz"), ":12")
    ase.io.write(root / "small.xyz", frames)
    options = {
        "architecture": {
            "name": "soap_bpnn",
            "model": dict(TINY_MODEL, max_radial=2, max_angular=1, num_neurons_per_layer=4),
            "training": {"num_epochs": 2, "batch_size": 4},
        },
        "training_set": {"systems": "small.xyz", "targets": {"energy": {"unit": "kcal/mol"}}},
        "validation_set": 0.25,
    }
    (root / "options.yaml").write_text(yaml.safe_dump(options))
    command = ["train", str(root / "options.yaml"), "--output-dir", str(root / "outputs")]
    assert main(command + ["-o", str(root / "model.pt")]) == 0
    (run_dir,) = glob.glob(str(root / "outputs" / "*"))
    return root, run_dir


def read_csv(path):
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def assert_png(path, width, height):
    """A PNG file (by its signature) that matplotlib reads back at ``width`` x ``height``."""
    with open(path, "rb") as file:
        assert file.read(8) == PNG_SIGNATURE, path
    assert imread(path).shape[:2] == (height, width), path


def test_training_leaves_pictures_and_the_predictions_behind_them(run):
    """learning_curves.png (loss, energy, forces) and parity.png (energy, forces) are PNGs of
    the expected size; predictions.npz holds both sets, and its validation errors are those
    train.csv reports for the best epoch (so they are the exported model's predictions)."""
    _, run_dir = run
    assert_png(os.path.join(run_dir, "learning_curves.png"), 3 * 495, 385)  # 4.5 x 3.5 in
    assert_png(os.path.join(run_dir, "parity.png"), 2 * 462, 462)  # 4.2 x 4.2 in, 110 dpi
    predictions, references, units = plots.load_predictions(
        os.path.join(run_dir, "predictions.npz")
    )
    assert units == {q: KCAL_UNITS[q] for q in ("energy_per_atom", "energy/forces")}
    assert {name: sorted(values) for name, values in predictions.items()} == {
        "training_set": ["energy/forces", "energy_per_atom"],
        "validation_set": ["energy/forces", "energy_per_atom"],
    }
    assert len(predictions["validation_set"]["energy_per_atom"]) == 3
    assert predictions["validation_set"]["energy/forces"].shape == (3 * 9 * 3,)  # C2H6O
    best = min(read_csv(os.path.join(run_dir, "train.csv")), key=lambda r: r["validation_loss"])
    for quantity in ("energy_per_atom", "energy/forces"):
        error = predictions["validation_set"][quantity] - references["validation_set"][quantity]
        expected = float(best[f"validation_{quantity}_rmse"])
        assert np.sqrt(np.mean(error**2)) == pytest.approx(expected, rel=1e-5)


def test_learning_curves_have_a_panel_per_quantity_with_units(run):
    """Loss first, then one RMSE panel per quantity of train.csv, each with both sets, on a
    log scale, with the unit in the axis label."""
    _, run_dir = run
    columns = plots.read_csv(os.path.join(run_dir, "train.csv"))
    figure = plots.learning_curves_figure(columns, KCAL_UNITS)
    axes = figure.get_axes()
    assert [ax.get_title() for ax in axes] == ["loss", "energy per atom", "forces"]
    assert [ax.get_ylabel() for ax in axes] == [
        "loss",
        "RMSE (kcal/mol/atom)",
        "RMSE (kcal/mol/angstrom)",
    ]
    for ax in axes:
        assert ax.get_yscale() == "log"
        assert [line.get_label() for line in ax.get_lines()] == ["train", "validation"]


def test_parity_figure_has_a_panel_per_quantity_and_errors_per_set():
    """One panel per quantity (energy per atom, force and stress components), one colour of
    points per set, the y = x line, and each set's RMSE and MAE with units."""
    rng = np.random.default_rng(0)
    sizes = {"energy_per_atom": 5, "energy/forces": 60, "energy/stress": 45}
    references = {
        name: {q: rng.normal(size=n) for q, n in sizes.items()}
        for name in ("training_set", "validation_set", "test_set")
    }
    predictions = {
        name: {q: values + 0.1 for q, values in pairs.items()} for name, pairs in references.items()
    }
    figure = plots.parity_figure(predictions, references, KCAL_UNITS)
    axes = figure.get_axes()
    assert [ax.get_title() for ax in axes] == ["energy per atom", "forces", "stress"]
    for ax, unit in zip(axes, KCAL_UNITS.values()):
        assert ax.get_xlabel() == f"reference ({unit})"
        assert len(ax.collections) == 3  # one scatter per set
        notes = [text.get_text() for text in ax.texts]
        assert notes == [
            f"{name}: RMSE 0.1, MAE 0.1 {unit}"
            for name in ("training set", "validation set", "test set")
        ]
        (diagonal,) = ax.get_lines()
        np.testing.assert_array_equal(diagonal.get_xdata(), diagonal.get_ydata())


def test_plot_command_redraws_a_run(run, tmp_path):
    """``mtt plot`` redraws both pictures of a finished run; on an interrupted one (only
    train.csv and options.yaml) it draws the learning curves, with units from the options."""
    _, run_dir = run
    finished = tmp_path / "finished"
    shutil.copytree(run_dir, finished, ignore=shutil.ignore_patterns("*.png"))
    assert main(["plot", str(finished)]) == 0
    assert_png(finished / "learning_curves.png", 3 * 495, 385)
    assert_png(finished / "parity.png", 2 * 462, 462)
    assert plots.run_units(str(finished)) == ({"energy": "kcal/mol"}, "angstrom")

    interrupted = tmp_path / "interrupted"
    interrupted.mkdir()
    for name in ("train.csv", "options.yaml"):
        shutil.copy(os.path.join(run_dir, name), interrupted)
    assert main(["plot", str(interrupted)]) == 0
    assert sorted(os.listdir(interrupted)) == ["learning_curves.png", "options.yaml", "train.csv"]
    assert plots.run_units(str(interrupted)) == ({"energy": "kcal/mol"}, "angstrom")


def test_plot_command_errors_are_one_line(tmp_path, capsys):
    """A missing directory, or one without train.csv, is a one-line error (status 1)."""
    assert main(["plot", str(tmp_path / "missing")]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        f"mtt: error: run directory not found: {str(tmp_path / 'missing')!r}"
    ]
    assert main(["plot", str(tmp_path)]) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"mtt: error: {str(tmp_path)!r} has no train.csv")
    # a file given as the run; a train.csv of something else (internal errors before)
    (tmp_path / "options.yaml").write_text("seed: 1\n")
    assert main(["plot", str(tmp_path / "options.yaml")]) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"mtt: error: {str(tmp_path / 'options.yaml')!r} is a file; give a")
    (tmp_path / "train.csv").write_text("epoch,lr\n1,abc\n")
    assert main(["plot", str(tmp_path)]) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "train.csv' is not a train.csv written by mtt train" in line


def test_eval_draws_a_parity_plot_when_there_are_labels(run, tmp_path):
    """``mtt eval -o pred.xyz`` on labelled data writes pred.png next to it; on structures
    without labels there is nothing to compare and no picture."""
    root, _ = run
    data = tmp_path / "eval.yaml"
    data.write_text(
        yaml.safe_dump(
            {"systems": str(root / "small.xyz"), "targets": {"energy": {"unit": "kcal/mol"}}}
        )
    )
    model = str(root / "model.pt")
    assert main(["eval", model, str(data), "-o", str(tmp_path / "pred.xyz")]) == 0
    assert_png(tmp_path / "pred.png", 2 * 462, 462)
    assert main(["eval", model, str(root / "small.xyz"), "-o", str(tmp_path / "bare.xyz")]) == 0
    assert os.path.isfile(tmp_path / "bare.xyz") and not os.path.exists(tmp_path / "bare.png")


def test_tensorboard_gets_the_metrics_of_train_csv(run):
    """The event files hold one scalar per column of train.csv (the epoch is the step), with
    the same values."""
    accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator",
        reason="TensorBoard is optional: pip install tensorboard",
    )
    _, run_dir = run
    events = accumulator.EventAccumulator(os.path.join(run_dir, "tensorboard"))
    events.Reload()
    rows = read_csv(os.path.join(run_dir, "train.csv"))
    assert sorted(events.Tags()["scalars"]) == sorted(set(rows[0]) - {"epoch"})
    for tag in events.Tags()["scalars"]:
        scalars = events.Scalars(tag)
        assert [s.step for s in scalars] == [int(row["epoch"]) for row in rows]
        expected = [float(row[tag]) for row in rows]
        np.testing.assert_allclose([s.value for s in scalars], expected, rtol=1e-6)


def test_without_tensorboard_one_info_line_and_no_files(tmp_path):
    """Without the package, a run writes no event files and says so once."""
    metrics_log = MetricsLog()
    metrics_log.available = False
    logger = logging.getLogger("mtt")
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        for epoch in (1, 2):
            metrics_log.write(str(tmp_path), {"epoch": epoch, "train_loss": 1.0}, epoch == 2)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert [r.levelno for r in records] == [logging.INFO]
    assert os.listdir(tmp_path) == []


def test_predictions_are_replaced_in_one_step(tmp_path, monkeypatch):
    """A run stopped while writing predictions.npz (Ctrl-C, a full disk) keeps the previous
    file; it was written in place, and left half a zip archive."""
    path = str(tmp_path / "predictions.npz")
    values = {"training_set": {"energy": np.arange(3.0)}}
    plots.save_predictions(path, values, values, {"energy": "eV"})
    before = Path(path).read_bytes()

    def stopped_halfway(file, **arrays):
        if isinstance(file, str):  # (as mtt wrote it before)
            with open(file, "wb") as opened:
                stopped_halfway(opened)
        file.write(b"PK\x03\x04 half an archive")
        file.flush()
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez_compressed", stopped_halfway)
    with pytest.raises(KeyboardInterrupt):
        plots.save_predictions(path, values, values, {"energy": "eV"})
    assert Path(path).read_bytes() == before
    assert os.listdir(tmp_path) == ["predictions.npz"]


def test_plot_of_a_run_with_a_truncated_predictions_file(run, tmp_path, capsys):
    """A truncated predictions.npz was an internal error (BadZipFile): one line naming the
    file and how to do without it or draw the parity plot anew."""
    _, run_dir = run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("*.png"))
    npz = copy / "predictions.npz"
    npz.write_bytes(npz.read_bytes()[: npz.stat().st_size // 2])
    assert main(["plot", str(copy)]) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"mtt: error: {str(npz)!r} is truncated or damaged (BadZipFile: ")
    assert line.endswith(
        "delete it to draw the learning curves alone, and draw a parity plot anew with 'mtt "
        "eval <run's model.pt> <structures> -o predictions.xyz'"
    )
