"""Pictures of a run: learning curves from ``train.csv`` and parity plots of predictions.

Figures are :class:`matplotlib.figure.Figure` objects drawn with the Agg backend (no pyplot: no
window, no global state). ``mtt train`` writes ``learning_curves.png``, ``parity.png`` and
``predictions.npz`` (the values behind the parity plot) into the run directory, and
``mtt plot RUN_DIR`` redraws them at any time, also while the run trains.

Quantities are named as in ``train.csv`` (``energy_per_atom``, ``energy/forces``, ...). Their
units are not in the CSV: :func:`run_units` reads them from the run's newest checkpoint (the
units the metrics were computed in, also when fine-tuning converted the data), else from the
``options.yaml`` written when the run started. ``predictions.npz`` stores each quantity's unit
next to its values.
"""

import csv
import glob
import logging
import os
import re
import zipfile
import zlib
from typing import Dict, List, Mapping, Optional, Tuple

import numpy as np

LOGGER = logging.getLogger("mtt")

#: at most this many structures per set go into a run's parity plot (evenly spread)
MAX_PARITY_STRUCTURES = 2000
SET_PREFIXES = ("train", "validation")  # the sets of train.csv's columns
COLORS = {"training_set": "C0", "validation_set": "C1", "test_set": "C2"}

Pairs = Dict[str, Dict[str, np.ndarray]]  # {set name: {quantity: flat values}}


def title(quantity: str) -> str:
    """``energy per atom``, ``forces``, ``energy/pbe0/stress``: a panel's title."""
    if quantity in ("energy/forces", "energy/stress"):
        quantity = quantity.split("/")[1]
    return quantity.replace("_per_atom", " per atom")


def quantity_units(
    quantities: List[str], energy_units: Mapping[str, str], length_unit: str
) -> Dict[str, str]:
    """The unit of each quantity, from its target's unit (``{"energy": "eV"}``); unknown
    targets are left out."""
    from .training.batches import metric_target
    from .training.trainer import metric_unit

    units = {}
    for quantity in quantities:
        target = metric_target(quantity)
        if target in energy_units:
            units[quantity] = metric_unit(quantity, energy_units[target], length_unit)
    return units


def run_units(run_dir: str) -> Tuple[Dict[str, str], str]:
    """``({target: unit}, length unit)`` of a run; ``({}, "")`` when unknown."""
    from .checkpoints import read_checkpoint
    from .errors import MttError

    checkpoints = sorted(
        glob.glob(os.path.join(run_dir, "checkpoints", "epoch_*.ckpt")),
        key=lambda path: int(re.sub(r"\D", "", os.path.basename(path)) or 0),
    )
    for path in [os.path.join(run_dir, "model.ckpt")] + checkpoints[::-1]:
        if os.path.isfile(path):
            try:
                info = read_checkpoint(path)["dataset_info"]
                targets = {name: t["unit"] for name, t in info["targets"].items()}
                return targets, info["length_unit"]
            except (MttError, KeyError, TypeError):
                continue
    return _options_units(os.path.join(run_dir, "options.yaml"))


def _options_units(path: str) -> Tuple[Dict[str, str], str]:
    """Units declared in a run's ``options.yaml`` (energies default to eV)."""
    import yaml

    try:
        with open(path) as file:
            training_set = yaml.safe_load(file)["training_set"]
        systems = training_set["systems"]
        length = systems.get("length_unit", "angstrom") if isinstance(systems, dict) else None
        targets = {
            name: (target or {}).get("unit") or ("eV" if name.startswith("energy") else "")
            for name, target in training_set["targets"].items()
        }
        return targets, length or "angstrom"
    except (OSError, yaml.YAMLError, KeyError, TypeError, AttributeError):
        return {}, ""


def read_csv(path: str) -> Dict[str, np.ndarray]:
    """The columns of ``train.csv`` as float arrays (NaN where a row has no value, e.g. a
    line being written while we read)."""
    from .errors import MttError

    with open(path, newline="") as file:
        rows = list(csv.DictReader(file))
    if not rows:
        raise MttError(f"{path!r} has no epochs yet; plot again after the first epoch")
    columns = {c: np.array([_number(row.get(c)) for row in rows]) for c in rows[0] if c}
    epochs = columns.get("epoch")
    if epochs is None or not any(c.endswith("_loss") for c in columns) or np.isnan(epochs).all():
        raise MttError(
            f"{path!r} is not a train.csv written by mtt train (it needs the columns epoch "
            "and <set>_loss, with numbers); give the run directory it came from"
        )
    return columns


def _number(text: Optional[str]) -> float:
    try:
        return float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return float("nan")


def curve_quantities(columns) -> List[str]:
    """The quantities with an RMSE column in ``train.csv``, in column order."""
    found = [
        column[len(prefix) + 1 : -len("_rmse")]
        for column in columns
        for prefix in SET_PREFIXES
        if column.startswith(prefix + "_") and column.endswith("_rmse")
    ]
    return list(dict.fromkeys(found))


def _figure(panels: int, width: float, height: float):
    """A Figure with the Agg canvas and ``panels`` axes, three to a row."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    columns = min(panels, 3)
    rows = -(-panels // columns)
    figure = Figure(figsize=(width * columns, height * rows), layout="constrained")
    FigureCanvasAgg(figure)
    grid = figure.add_gridspec(rows, columns)
    return figure, [figure.add_subplot(grid[k // columns, k % columns]) for k in range(panels)]


def learning_curves_figure(columns: Mapping[str, np.ndarray], units: Mapping[str, str]):
    """Loss, then the RMSE of each quantity, training and validation, over epochs."""
    from matplotlib import ticker

    quantities = curve_quantities(columns)
    figure, axes = _figure(1 + len(quantities), 4.5, 3.5)
    epochs = columns["epoch"]
    for ax, quantity in zip(axes, ["loss"] + quantities):
        label = "loss" if quantity == "loss" else "RMSE"
        for prefix in SET_PREFIXES:
            column = f"{prefix}_loss" if quantity == "loss" else f"{prefix}_{quantity}_rmse"
            if column in columns:
                marker = "o" if len(epochs) <= 30 else None
                ax.plot(epochs, columns[column], marker=marker, markersize=3, label=prefix)
        _log_scale(ax, np.concatenate([line.get_ydata() for line in ax.get_lines()]))
        ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
        ax.set_title(title(quantity))
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"{label} ({units[quantity]})" if quantity in units else label)
        ax.legend()
    return figure


def _log_scale(ax, values: np.ndarray) -> None:
    """A logarithmic y axis labelled with plain numbers (184, 0.007; not 1.84x10^2)."""
    from matplotlib import ticker

    class Plain(ticker.LogFormatterSciNotation):  # labels the same ticks, as plain numbers
        def __call__(self, x, pos=None):
            return f"{x:g}" if super().__call__(x, pos) else ""

    positive = values[np.isfinite(values) & (values > 0)]
    if positive.size:  # else nothing to show on a log axis (and matplotlib would warn)
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(Plain())
        ax.yaxis.set_minor_formatter(Plain())


def learning_curves(csv_path: str, png_path: str, units: Optional[Mapping[str, str]] = None):
    """Draw a run's ``train.csv`` into ``png_path``; ``units`` maps quantities to units."""
    learning_curves_figure(read_csv(csv_path), units or {}).savefig(png_path, dpi=110)


def parity_figure(predictions: Pairs, references: Pairs, units: Mapping[str, str]):
    """Predicted against reference values, one panel per quantity, one colour per set, with
    the line y = x and each set's RMSE and MAE."""
    quantities = _quantities(predictions)
    figure, axes = _figure(len(quantities), 4.2, 4.2)
    for ax, quantity in zip(axes, quantities):
        unit = units.get(quantity, "")
        sets = {
            name: (values[quantity], references[name][quantity])
            for name, values in predictions.items()
            if quantity in values and values[quantity].size
        }
        _parity_panel(ax, sets, unit)
        ax.set_title(title(quantity))
        ax.set_xlabel(f"reference ({unit})" if unit else "reference")
        ax.set_ylabel(f"predicted ({unit})" if unit else "predicted")
    return figure


def _parity_panel(ax, sets: Dict[str, Tuple[np.ndarray, np.ndarray]], unit: str) -> None:
    """Each set's points and errors in its colour (the errors are the legend too), and the
    line y = x on equal axes."""
    from matplotlib import ticker

    everything = np.concatenate([np.concatenate(pair) for pair in sets.values()])
    low, high = everything.min(), everything.max()
    pad = 0.05 * (high - low) or 1.0
    limits = (low - pad, high + pad)
    ax.plot(limits, limits, "k--", linewidth=0.8)
    for row, (name, (predicted, reference)) in enumerate(sets.items()):
        color = COLORS.get(name, f"C{3 + row}")
        ax.scatter(reference, predicted, s=4, alpha=0.5, color=color, rasterized=True)
        error = predicted - reference
        rmse, mae = np.sqrt(np.mean(error**2)), np.mean(np.abs(error))
        note = f"{name.replace('_', ' ')}: RMSE {rmse:.3g}, MAE {mae:.3g} {unit}"
        box = {"facecolor": "white", "alpha": 0.8, "edgecolor": "none", "pad": 1}
        y = 0.97 - 0.06 * row
        ax.text(0.03, y, note, color=color, va="top", fontsize=7, bbox=box, transform=ax.transAxes)
    ax.set_xlim(limits)
    ax.set_ylim(limits)
    ax.set_aspect("equal")
    ax.ticklabel_format(useOffset=False)  # -10786.5, not -0.5 and a -1.0786e4 over the title
    for axis in (ax.xaxis, ax.yaxis):  # long labels such as -10786.5 must not overlap
        axis.set_major_locator(ticker.MaxNLocator(4))


def _quantities(predictions: Pairs) -> List[str]:
    """The quantities with values in any set, in order of appearance."""
    return list(dict.fromkeys(q for v in predictions.values() for q in v if v[q].size))


def parity_plot(
    predictions: Pairs,
    references: Pairs,
    png_path: str,
    units: Optional[Mapping[str, str]] = None,
) -> None:
    """Draw a parity plot into ``png_path`` (``{set: {quantity: values}}`` for both)."""
    parity_figure(predictions, references, units or {}).savefig(png_path, dpi=110)


def save_predictions(path: str, predictions: Pairs, references: Pairs, units) -> None:
    """``predictions.npz``: arrays ``<set>|<quantity>|predicted`` and ``...|reference``, and
    strings ``unit|<quantity>``; replaced in one step (a stopped run leaves no half file)."""
    from .io import atomic_path

    arrays = {f"unit|{q}": np.array(unit) for q, unit in units.items()}
    for name, values in predictions.items():
        for quantity, predicted in values.items():
            arrays[f"{name}|{quantity}|predicted"] = predicted
            arrays[f"{name}|{quantity}|reference"] = references[name][quantity]
    # (a file object: given a path, numpy would add .npz to the temporary name)
    with atomic_path(path, suffix=".npz") as tmp, open(tmp, "wb") as file:
        np.savez_compressed(file, **arrays)


def load_predictions(path: str) -> Tuple[Pairs, Pairs, Dict[str, str]]:
    """What :func:`save_predictions` wrote: predictions, references and units."""
    from .errors import MttError

    try:
        return _read_predictions(path)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as error:
        raise MttError(
            f"{path!r} is truncated or damaged ({type(error).__name__}: "
            f"{str(error).splitlines()[0][:120] if str(error) else 'unreadable'}); delete it "
            "to draw the learning curves alone, and draw a parity plot anew with 'mtt eval "
            "<run's model.pt> <structures> -o predictions.xyz'"
        ) from None


def _read_predictions(path: str) -> Tuple[Pairs, Pairs, Dict[str, str]]:
    predictions: Pairs = {}
    references: Pairs = {}
    units = {}
    # (a file of ours: numpy leaves its own open when the archive is damaged)
    with open(path, "rb") as file, np.load(file) as data:
        for key in data.files:
            parts = key.split("|")
            if parts[0] == "unit":
                units[parts[1]] = str(data[key])
            else:
                name, quantity, kind = parts
                pairs = predictions if kind == "predicted" else references
                pairs.setdefault(name, {})[quantity] = data[key]
    return predictions, references, units


def write_run_plots(trainer, model, sets, device, run_dir: str) -> None:
    """``learning_curves.png``, ``parity.png`` and ``predictions.npz`` at the end of
    ``mtt train``. A failure here is a warning: the model is good, the plots can be redrawn."""
    try:
        energy_units = {name: t.unit for name, t in model.dataset_info.targets.items()}
        length_unit = model.dataset_info.length_unit
        predictions: Pairs = {}
        references: Pairs = {}
        for dataset in [s for s in sets if s is not None and len(s)]:
            step = -(-len(dataset) // MAX_PARITY_STRUCTURES)
            subset = dataset.subset(range(0, len(dataset), step), dataset.name)
            pairs = trainer.predictions(model, subset, device)
            predictions[dataset.name] = {q: p for q, (p, _) in pairs.items()}
            references[dataset.name] = {q: r for q, (_, r) in pairs.items()}
        units = quantity_units(_quantities(predictions), energy_units, length_unit)
        save_predictions(os.path.join(run_dir, "predictions.npz"), predictions, references, units)
        written = redraw(run_dir, (energy_units, length_unit))
        LOGGER.info("plots: %s (redraw them with 'mtt plot %s')", ", ".join(written), run_dir)
    except Exception as error:
        LOGGER.debug("drawing the plots failed", exc_info=True)
        LOGGER.warning("could not draw the plots (%s: %s)", type(error).__name__, error)


def redraw(run_dir: str, units: Optional[Tuple[Dict[str, str], str]] = None) -> List[str]:
    """Draw ``learning_curves.png`` from ``train.csv`` and, if ``predictions.npz`` exists,
    ``parity.png`` in ``run_dir``; return the paths written."""
    energy_units, length_unit = units or run_units(run_dir)
    columns = read_csv(os.path.join(run_dir, "train.csv"))
    units_of = quantity_units(curve_quantities(columns), energy_units, length_unit)
    curves = os.path.join(run_dir, "learning_curves.png")
    learning_curves_figure(columns, units_of).savefig(curves, dpi=110)
    written = [curves]
    npz = os.path.join(run_dir, "predictions.npz")
    if os.path.isfile(npz):
        predictions, references, stored_units = load_predictions(npz)
        parity = os.path.join(run_dir, "parity.png")
        parity_plot(predictions, references, parity, stored_units)
        written.append(parity)
    return written
