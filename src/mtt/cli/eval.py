"""Evaluate an exported model on structures: print errors if labelled, write predictions.

Structures are read, predicted and written batch by batch (extxyz appended per batch), and
errors are running sums: memory does not grow with the data. Above 2000 labelled structures
the parity plot shows a random sample of 2000 of them; the printed errors cover all."""

import argparse
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Tuple

from ..console import counted
from ..errors import MttError

HELP = "evaluate an exported model (.pt) on a data set"
LOGGER = logging.getLogger("mtt")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="an exported model (.pt)")
    parser.add_argument(
        "data",
        help="a data set section in YAML (systems and optional targets, as in training_set; "
        "their labels are compared), a structure file, or a directory written by mtt data pack",
    )
    parser.add_argument(
        "--reader",
        default=None,
        metavar="FORMAT",
        help="ASE format of a structure file given directly, where its name does not tell "
        "(e.g. vasp-out, lammps-data); a data set YAML sets systems.reader instead",
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
        help="structures evaluated together; predictions are written and errors summed "
        "batch by batch, so memory does not grow with the data (default: 16)",
    )
    parser.add_argument(
        "--output-name",
        default=None,
        help="energy output to evaluate, e.g. energy/pbe0 (default: energy)",
    )
    parser.add_argument(
        "-e",
        "--extensions-dir",
        default=None,
        metavar="DIR",
        help="directory of the compiled TorchScript extensions a model needs (models of "
        "other tools, e.g. metatrain's 'extensions/'; mtt's models need none)",
    )
    parser.add_argument(
        "-f",
        "--force",
        action="store_true",
        help="overwrite the predictions file and its parity plot if they exist",
    )


def run(args: argparse.Namespace) -> None:
    from ..evaluate import Evaluator, evaluate_stream, load_model
    from ..io import refuse_input_as_output, refuse_overwrite
    from ..plots import MAX_PARITY_STRUCTURES

    if args.batch_size < 1:
        raise MttError(f"-b/--batch-size must be at least 1, got {args.batch_size}")
    if not args.output.lower().endswith((".xyz", ".extxyz")):
        raise MttError(
            f"-o {args.output!r}: predictions are written as extended XYZ; give a path ending "
            "in .xyz (ASE reads it, and converts it to other formats)"
        )
    refuse_overwrite(args.output, args.force, "--force", inputs=[args.data, args.model])
    model = load_model(args.model, args.extensions_dir)
    outputs = model.capabilities().outputs
    # metatrain's models also offer mtt::aux::<...> outputs (last-layer features, ...)
    generic = [n for n in outputs if n.startswith("mtt::") and not n.startswith("mtt::aux::")]
    requested = args.output_name or _declared_energy(args.data, outputs)
    energy = _energy_output(model, requested, generic)
    data = _open(args.data, energy, generic, model, args.reader)
    refuse_input_as_output(args.output, [data.source])
    if data.plotted:  # known only now, still before anything is evaluated
        _refuse_plot_overwrite(args.output, args.force)
    evaluator = Evaluator(model, data.length_unit, repr(data.source or args.data))
    result = evaluate_stream(
        evaluator,
        data.structures,
        args.output,
        energy,
        data.energy_unit,
        generic,
        data.compare,
        args.batch_size,
        MAX_PARITY_STRUCTURES,
        data.per_atom,
    )
    LOGGER.info(
        "predictions for %s written to %s%s",
        counted(result.structures, "structure"),
        args.output,
        f" (energies in {data.energy_unit}, lengths in {data.length_unit})" if energy else "",
    )
    units = {
        "energy_per_atom": f"{data.energy_unit}/atom",
        "forces": f"{data.energy_unit}/{data.length_unit}",
        "stress": f"{data.energy_unit}/{data.length_unit}^3",
    }
    units.update({name: outputs[name].unit for name in generic})
    for name, values in result.errors.items():
        unit = f" {units[name]}" if units[name] else ""  # generic targets may have none
        LOGGER.info(
            "%s: RMSE %.5g%s, MAE %.5g%s (%s)",
            name,
            values["rmse"],
            unit,
            values["mae"],
            unit,
            counted(int(values["count"]), "structure"),  # (a float, as the errors)
        )
    _check_force_spread(result.force_spread_ratio)
    if data.labelled and not result.errors:
        LOGGER.warning("no structure has labels of the declared targets: nothing to compare")
    if result.parity.slots:
        _parity(args, result.parity, energy, (data.energy_unit, data.length_unit))


def _plot_path(output: str) -> str:
    """Where the parity plot of the predictions file ``output`` goes."""
    return os.path.splitext(output)[0] + ".png"


def _refuse_plot_overwrite(output: str, force: bool) -> None:
    """The parity plot is a second output: an existing file there is the user's, as much
    as an existing predictions file is."""
    path = _plot_path(output)
    if os.path.abspath(path) == os.path.abspath(output):
        raise MttError(
            f"-o {output!r}: the parity plot would overwrite the predictions; give an .xyz "
            "path (the plot goes next to it as .png)"
        )
    if os.path.isdir(path):
        raise MttError(
            f"{path!r} (the parity plot of {output!r}) is a directory; choose another output path"
        )
    if os.path.exists(path) and not force:
        raise MttError(
            f"{path!r} already exists (the parity plot of {output!r} goes there); choose "
            "another output path or pass --force to overwrite it"
        )


def _format_hint(data: str) -> str:
    """How ``mtt eval`` sets the format of a file ASE cannot read: ``systems.reader`` in a
    data set YAML, ``--reader`` for a structure file given directly."""
    if _is_yaml(data):
        return f"set 'systems.reader' in {data!r} to an ASE format name if it is guessed wrong"
    return "pass --reader <ASE format> if it is guessed wrong"


def _is_yaml(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in (".yaml", ".yml")


def _declared_energy(path: str, outputs) -> Optional[str]:
    """The energy output a data set YAML's labels are for, when it declares one energy that
    the model predicts (``energy/pbe0``): without --output-name that output is compared, not
    the model's default energy."""
    from ..api import read_options

    if not _is_yaml(path):
        return None
    raw = read_options(path)
    targets = raw.get("targets") if isinstance(raw, dict) else None
    names = [n for n in (targets or {}) if isinstance(n, str) and not n.startswith("mtt::")]
    if len(names) == 1 and names[0] in outputs and names[0] != "energy":
        LOGGER.info("comparing the model's output %r, the energy eval.targets declares", names[0])
        return names[0]
    return None


def _energy_output(model, requested, generic):
    from ..evaluate import pick_energy_output

    energies = [n for n in model.capabilities().outputs if n.split("/")[0] == "energy"]
    if not energies and requested is None and generic:
        return None  # a model of other properties only
    return pick_energy_output(model, requested)


#: Spread of the force labels over the model's beyond which their units are suspect (a
#: trained model's forces spread like its labels; eV vs kcal/mol is a factor 23)
FORCE_SPREAD_LIMIT = 3.0


def _check_force_spread(ratio: Optional[float]) -> None:
    """Forces do not depend on reference energies: labels that spread many times more (or
    less) than a model's predictions are in another unit than declared, and the errors above
    are then meaningless (10318 eV/atom for kcal/mol labels declared as eV)."""
    if ratio is None or 1 / FORCE_SPREAD_LIMIT <= ratio <= FORCE_SPREAD_LIMIT:
        return
    LOGGER.warning(
        "forces: the labels spread %.3g times as much as the model's predictions: check the "
        "energy and length units declared for the data (eV vs kcal/mol is a factor 23), "
        "unless the model is far from trained",
        ratio,
    )


def _parity(args, sample, energy: str, units) -> None:
    """A parity plot next to the predictions file (``predictions.png``). Above
    ``MAX_PARITY_STRUCTURES`` structures it shows a random sample of them (the errors in its
    legend are the sample's; those printed are over every structure)."""
    from ..plots import parity_plot, quantity_units

    predicted, reference = sample.arrays()
    name = os.path.basename(os.path.normpath(args.data))
    path = _plot_path(args.output)
    parity_plot(
        {name: predicted},
        {name: reference},
        path,
        quantity_units(list(predicted), {energy: units[0]}, units[1]),
    )
    sampled = sample.seen > sample.size
    note = f" (a random sample of {sample.size} structures)" if sampled else ""
    LOGGER.info("parity plot written to %s%s", path, note)


@dataclass
class _Data:
    """The structures to evaluate, streamed as ``(atoms, labels)``, and their units."""

    structures: Iterable[Tuple[Any, Dict[str, Any]]]
    length_unit: str
    energy_unit: str
    compare: List[str] = field(default_factory=list)  # generic outputs with labels to compare
    per_atom: Dict[str, bool] = field(default_factory=dict)  # how their labels are given
    labelled: bool = False
    plotted: bool = False  # energy labels are compared: a parity plot will be drawn
    source: str = ""  # the structure file a data set YAML names


def _open(
    path: str, energy: Optional[str], generic: List[str], model, reader: Optional[str] = None
) -> _Data:
    """The data of ``mtt eval``: a structure file or packed directory (predictions only), or
    a data set section in YAML, whose declared targets are compared with the predictions."""
    from .. import hypers
    from ..api import read_options
    from ..data.packed import is_packed
    from ..options import DatasetOptions
    from ..units import check_length_unit

    model_unit = model.capabilities().outputs[energy].unit if energy else ""
    if reader is not None and (_is_yaml(path) or is_packed(path)):
        kind = "a data set YAML" if _is_yaml(path) else "a packed directory"
        fix = "set systems.reader in it" if _is_yaml(path) else "remove it"
        raise MttError(f"--reader is for a structure file, but {path!r} is {kind}; {fix}")
    if not _is_yaml(path):
        if not os.path.exists(path):  # named on the command line: relative to here
            raise MttError(
                f"file not found: {path!r}; give a structure file, a directory written by "
                "'mtt data pack' or a data set YAML (relative paths start at the current "
                "directory)"
            )
        structures = _noting_labels(_unlabelled(path, reader, _format_hint(path)), path)
        _note_length_unit(path, model)
        return _Data(structures, "angstrom", model_unit)
    raw = read_options(path)
    if isinstance(raw, dict) and ({"architecture", "training_set"} & set(raw)):
        raise MttError(
            f"{path!r} is an options file of 'mtt train'; give mtt eval a data set section "
            "(systems and targets, as under training_set there) or a structure file"
        )
    options = hypers.parse(DatasetOptions, raw)
    systems = options.systems
    read_from = systems if isinstance(systems, str) else systems.read_from
    reader = None if isinstance(systems, str) else systems.reader
    unit = "angstrom" if isinstance(systems, str) else systems.length_unit
    check_length_unit(unit, "eval.systems.length_unit")  # as load_dataset names it
    full = os.path.join(os.path.dirname(os.path.abspath(path)), read_from)
    if "targets" not in raw:  # predictions only
        return _Data(_unlabelled(full, reader, _format_hint(path)), unit, model_unit, source=full)
    targets = _compared_targets(options.targets, energy, generic, model)
    if not targets:
        return _Data(_unlabelled(full, reader, _format_hint(path)), unit, model_unit, source=full)
    energies = [name for name in targets if not name.startswith("mtt::")]
    if len(energies) > 1:
        raise MttError(
            f"eval.targets declares the energies {energies}, but mtt eval compares one energy "
            f"output at a time (here {energy!r}, chosen with --output-name): declare only "
            "its labels, and evaluate each energy in its own run"
        )
    name = energies[0] if energies else None
    if name is not None and targets[name].unit is None:
        # as metatrain's eval: labels without a declared unit are in the model's
        LOGGER.info(
            "eval.targets.%s.unit is not given: labels read in %s, the model's unit",
            name,
            model_unit,
        )
        targets[name].unit = model_unit
    energy_unit = targets[name].unit if name else model_unit
    options.targets = targets
    pairs = _labelled(options, path, full, reader)
    if name is not None and name != energy:
        LOGGER.info(
            "eval.targets.%s is compared with the model's output %r (--output-name picks another)",
            name,
            energy,
        )
        pairs = _renamed(pairs, name, energy)
    compare = [n for n in targets if n.startswith("mtt::")]
    return _Data(
        pairs,
        unit,
        energy_unit,
        compare,
        {n: targets[n].per_atom for n in compare},
        labelled=True,
        plotted=name is not None,
        source=full,
    )


def _compared_targets(targets, energy, generic, model):
    """The declared targets to compare: energies (if the model has an energy output) and
    generic outputs of the model whose labels are in the model's unit. A target the model
    cannot predict is refused: silently ignoring it would report no error for it at all."""
    chosen = {}
    for name, target in targets.items():
        _require_output(name, energy, generic, model)
        if not name.startswith("mtt::"):
            chosen[name] = target
        else:
            output = model.capabilities().outputs[name]
            if target.per_atom and output.sample_kind != "atom":
                raise MttError(
                    f"eval.targets.{name}.per_atom: the labels are per atom but the model "
                    f"predicts {name!r} per structure; set per_atom: false with labels per "
                    "structure"
                )
            unit = output.unit
            if target.unit is None:  # as for energies: the model's unit
                target.unit = unit
            if (target.unit or "") != unit:
                LOGGER.warning(
                    "%s: labels are in %r but the model predicts %r; not compared",
                    name,
                    target.unit or "",
                    unit,
                )
                continue
            chosen[name] = target
    return chosen


def _require_output(name: str, energy: Optional[str], generic: List[str], model) -> None:
    """Refuse the declared target ``name`` if the model has no output for it (any energy
    target is compared with the model's energy output, so that needs only one)."""
    has = energy is not None if not name.startswith("mtt::") else name in generic
    if not has:
        outputs = list(model.capabilities().outputs)
        raise MttError(
            f"eval.targets.{name}: the model has no output {name!r} (its outputs are "
            f"{outputs}); remove this target or evaluate a model trained on it"
        )


def _noting_labels(pairs, path: str):
    """``pairs``, saying when the first structure of a file given directly has an energy or
    forces: those labels are not compared (their units are not declared), which a user who
    sees no errors printed would not guess."""
    for index, (atoms, labels) in enumerate(pairs):
        if index == 0:
            results = getattr(atoms.calc, "results", None) or {}
            found = [key for key in ("energy", "forces", "stress") if key in results]
            if found:
                LOGGER.info(
                    "%s has labels (%s), not compared: a structure file given directly has "
                    "no declared units; give a data set YAML (systems: %s, targets: {energy: "
                    "{unit: ...}}) for errors",
                    path,
                    ", ".join(found),
                    path,
                )
        yield atoms, labels


def _note_length_unit(path: str, model) -> None:
    """A structure file says nothing of its length unit: it is read in Å, as ASE's files
    are. A model of another length unit was trained on files in that unit, which would be
    read 1.9x off (bohr) without a word."""
    unit = model.capabilities().length_unit
    if unit.lower() not in ("angstrom", "a", "å"):
        LOGGER.warning(
            "%s is read in angstrom (a structure file does not say its unit); the model works "
            "in %s: if the file is in %s, evaluate a data set YAML with 'systems: {read_from: "
            "%s, length_unit: %s}'",
            path,
            unit,
            unit,
            path,
            unit,
        )


def _unlabelled(path: str, reader: Optional[str], hint: str):
    from ..data.packed import is_packed, open_arrays, stream_structures

    if is_packed(path):
        arrays = open_arrays(path)
        return ((arrays.atoms(i), {}) for i in range(arrays.manifest["structures"]))
    return ((atoms, {}) for _, atoms in stream_structures(path, reader, hint))


def _labelled(options, yaml_path: str, full: str, reader: Optional[str]):
    """``(atoms, labels)`` read one at a time, except for labels read from other files
    (``read_from`` of a target), where the whole data set is read first."""
    from ..data.dataset import _specs, load_dataset
    from ..data.lazy import stream_labelled
    from ..data.packed import is_packed, stream_structures

    base = os.path.dirname(os.path.abspath(yaml_path))
    elsewhere = any(
        t.read_from is not None
        or any(getattr(getattr(t, k), "read_from", None) for k in ("forces", "stress", "virial"))
        for t in options.targets.values()
    )
    if is_packed(full) or elsewhere:
        dataset = load_dataset(options, base, "eval")
        return iter(zip(dataset.frames, dataset.labels))
    specs = _specs(options.targets, "eval")
    hint = _format_hint(yaml_path)
    _require_labels(full, reader, specs, hint)
    return stream_labelled(stream_structures(full, reader, hint), specs, full, "eval")


def _require_labels(path: str, reader: Optional[str], specs, hint: str) -> None:
    """Stop before predicting anything when no structure holds a declared label (usually a
    typo in a key): read structures until each one has been seen, which is the first
    structure in the usual case, so streaming stays cheap."""
    from ..data.lazy import resolve
    from ..data.packed import stream_structures
    from ..data.reading import available_keys, lookup

    missing = []  # (spec, quantity): stress and virial share a name, so a list
    for spec in specs:
        missing += [(spec, q) for q in resolve(spec, "eval")[1] if q.required]
    seen = []
    for _, atoms in stream_structures(path, reader, hint):
        if len(seen) < 20:
            seen.append(atoms)
        missing = [(spec, q) for spec, q in missing if lookup(atoms, q.key, q.per_atom) is None]
        if not missing:
            return
    for spec, quantity in missing:
        keys = available_keys(seen, quantity.per_atom)
        setting = "key" if quantity.name == spec.name else quantity.what.split()[0]
        raise MttError(
            f"no structure of {path!r} has {quantity.what}; keys found: {keys}; set "
            f"'targets.{spec.name}.{setting}' to the right key"
        )


def _renamed(pairs, name: str, energy: str):
    """Labels of the energy target ``name`` under the model's output name ``energy``."""
    for atoms, labels in pairs:
        yield (
            atoms,
            {
                (energy + key[len(name) :] if key == name or key.startswith(name + "/") else key): v
                for key, v in labels.items()
            },
        )
