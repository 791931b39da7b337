"""Evaluate an exported model on structures: print errors if labelled, write predictions."""

import argparse
import logging
import os

HELP = "evaluate an exported model (.pt) on a data set"
LOGGER = logging.getLogger("mtt")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="an exported model (.pt)")
    parser.add_argument(
        "data",
        help="a data set section in YAML (systems and optional targets, "
        "as in training_set), or a structure file",
    )
    parser.add_argument(
        "-o",
        "--output",
        default="predictions.xyz",
        help="file for the predictions (extxyz; default: predictions.xyz)",
    )
    parser.add_argument(
        "-b",
        "--batch-size",
        type=int,
        default=16,
        help="structures evaluated together (default: 16)",
    )
    parser.add_argument(
        "--output-name",
        default=None,
        help="energy output to evaluate, e.g. energy/pbe0 (default: energy)",
    )
    parser.add_argument(
        "-f", "--force", action="store_true", help="overwrite the predictions file if it exists"
    )


def run(args: argparse.Namespace) -> None:
    from ..evaluate import generic_outputs, load_model, write_predictions
    from ..io import refuse_overwrite

    refuse_overwrite(args.output, args.force)
    model = load_model(args.model)
    outputs = model.capabilities().outputs
    generic = [name for name in outputs if name.startswith("mtt::")]
    energy = _energy_output(model, args.output_name, generic)
    frames, labels, length_unit, energy_unit = _read(args.data, energy, model)
    predictions = [{} for _ in frames]
    if energy is not None:
        predictions = _energy_predictions(
            args, model, frames, labels, energy, length_unit, energy_unit
        )
    values = generic_outputs(model, frames, generic, length_unit) if generic else None
    write_predictions(args.output, frames, predictions, values)
    LOGGER.info("predictions for %d structures written to %s", len(frames), args.output)
    if generic:
        _generic_errors(args.data, model, frames, generic, values)


def _energy_output(model, requested, generic):
    from ..evaluate import pick_energy_output

    energies = [n for n in model.capabilities().outputs if n.split("/")[0] == "energy"]
    if not energies and requested is None and generic:
        return None  # a model of other properties only
    return pick_energy_output(model, requested)


def _energy_predictions(args, model, frames, labels, energy, length_unit, energy_unit):
    from ..evaluate import error_metrics, predict

    predictions = predict(
        model, frames, energy, length_unit, energy_unit, args.batch_size, repr(args.data)
    )
    units = {
        "energy_per_atom": f"{energy_unit}/atom",
        "forces": f"{energy_unit}/{length_unit}",
        "stress": f"{energy_unit}/{length_unit}^3",
    }
    for name, values in error_metrics(frames, labels, predictions, energy).items():
        LOGGER.info(
            "%s: RMSE %.5g %s, MAE %.5g %s (%d structures)",
            name,
            values["rmse"],
            units[name],
            values["mae"],
            units[name],
            values["count"],
        )
    _parity(args, frames, labels, predictions, energy, (energy_unit, length_unit))
    return predictions


def _generic_errors(path, model, frames, names, values) -> None:
    """RMSE/MAE of generic outputs against the labels an eval YAML declares for them."""
    import numpy as np

    if os.path.splitext(path)[1].lower() not in (".yaml", ".yml"):
        return
    from .. import hypers
    from ..api import read_options
    from ..data.dataset import load_dataset
    from ..options import DatasetOptions

    raw = read_options(path)
    declared = [n for n in (raw.get("targets") or {}) if n in names]
    if not declared:
        return
    options = hypers.parse(
        DatasetOptions, dict(raw, targets={n: raw["targets"][n] for n in declared})
    )
    dataset = load_dataset(options, os.path.dirname(os.path.abspath(path)), "eval")
    for name in declared:
        unit = model.capabilities().outputs[name].unit
        if dataset.targets[name].unit != unit:
            LOGGER.warning(
                "%s: labels are in %r but the model predicts %r; not compared",
                name,
                dataset.targets[name].unit,
                unit,
            )
            continue
        errors = [
            np.ravel(v[name]) - np.ravel(labels[name])
            for v, labels in zip(values, dataset.labels)
            if name in labels
        ]
        error = np.concatenate(errors)
        LOGGER.info(
            "%s: RMSE %.5g %s, MAE %.5g %s (%d structures)",
            name,
            float(np.sqrt(np.mean(error**2))),
            unit,
            float(np.mean(np.abs(error))),
            unit,
            len(errors),
        )


def _parity(args, frames, labels, predictions, energy: str, units) -> None:
    """A parity plot next to the predictions file (``predictions.png``) if there are labels."""
    import numpy as np

    from ..plots import parity_plot, quantity_units

    sources = {  # quantity: (label key, prediction key)
        f"{energy}_per_atom": (energy, "energy"),
        f"{energy}/forces": (f"{energy}/forces", "forces"),
        f"{energy}/stress": (f"{energy}/stress", "stress"),
    }
    predicted, reference = {}, {}
    for atoms, label, prediction in zip(frames, labels, predictions):
        for quantity, (key, kind) in sources.items():
            if key in label and kind in prediction:
                divide = len(atoms) if kind == "energy" else 1
                predicted.setdefault(quantity, []).append(np.ravel(prediction[kind]) / divide)
                reference.setdefault(quantity, []).append(np.ravel(label[key]) / divide)
    if not predicted:
        return
    name = os.path.basename(args.data)
    path = os.path.splitext(args.output)[0] + ".png"
    parity_plot(
        {name: {q: np.concatenate(v) for q, v in predicted.items()}},
        {name: {q: np.concatenate(v) for q, v in reference.items()}},
        path,
        quantity_units(list(predicted), {energy: units[0]}, units[1]),
    )
    LOGGER.info("parity plot written to %s", path)


def _read(path: str, energy: str, model):
    """Frames, labels (possibly none), and units of the data to evaluate on."""
    from .. import hypers
    from ..api import read_options
    from ..data.dataset import load_dataset
    from ..data.reading import check_structure, read_structures
    from ..options import DatasetOptions

    model_unit = model.capabilities().outputs[energy].unit if energy else ""
    if os.path.splitext(path)[1].lower() not in (".yaml", ".yml"):
        frames = read_structures(path)
        for index, atoms in enumerate(frames):
            check_structure(atoms, f"structure {index} of {path!r}")
        return frames, [{} for _ in frames], "angstrom", model_unit
    raw = read_options(path)
    options = hypers.parse(DatasetOptions, raw)
    if "targets" not in raw:  # predictions only
        return _frames_only(options, path, model_unit)
    energies = {n: t for n, t in options.targets.items() if not n.startswith("mtt::")}
    if energy is None or not energies:  # generic labels are read by _generic_errors
        return _frames_only(options, path, model_unit)
    options.targets = energies
    dataset = load_dataset(options, os.path.dirname(os.path.abspath(path)), "eval")
    name = energy if energy in dataset.targets else next(iter(dataset.targets))
    labels = [
        {
            energy + key[len(name) :]: value
            for key, value in frame.items()
            if key == name or key.startswith(name + "/")
        }
        for frame in dataset.labels
    ]
    return dataset.frames, labels, dataset.length_unit, dataset.targets[name].unit


def _frames_only(options, path: str, model_unit: str):
    from ..data.reading import read_structures

    systems = options.systems
    read_from = systems if isinstance(systems, str) else systems.read_from
    unit = "angstrom" if isinstance(systems, str) else systems.length_unit
    full = os.path.join(os.path.dirname(os.path.abspath(path)), read_from)
    frames = read_structures(full, None if isinstance(systems, str) else systems.reader)
    return frames, [{} for _ in frames], unit, model_unit
