"""What ``mtt train`` and ``mtt export`` do, callable from Python too.

``mtt.train(options, training_set=...)`` accepts any ``Dataset[ase.Atoms]`` (MatterTune's data
contract) in place of the ``training_set`` file.
"""

import copy
import glob
import hashlib
import logging
import math
import os
import re
import shlex
import shutil
from dataclasses import dataclass, replace
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import ase
import numpy as np
import torch
import yaml
from metatomic.torch import ModelMetadata

from . import hypers as hypers_module
from . import plots, pretrained, runlock
from .checkpoints import naming_file, read_checkpoint
from .console import counted, prints_progress
from .data.dataset import LabelledDataset, dataset_from_atoms, load_dataset, resolve_input
from .data.sets import as_dataset_options, load_sets
from .data.targets import DatasetInfo
from .errors import MttError, OptionsError
from .finetune import apply_method, parse_method_config
from .hypers import OptionsLoader
from .io import atomic_path, refuse_overwrite, saved_in_memory
from .options import Options, raw_target_problems
from .runs import CREATED_ROOTS, checkpoint_epoch, find_auto_restart, new_run_dir
from .training import distributed
from .training.batches import batch_to, model_data, refuse_isolated_atoms, warn_far_positions
from .training.composition import baseline_rmse, fit_baseline, warn_float32_energies
from .training.hypers import TrainingHypers, target_name_problems
from .units import conversion

LOGGER = logging.getLogger("mtt")
DTYPES = {32: torch.float32, 64: torch.float64}


@dataclass
class Settings:
    """Options, validated, with the architecture's own hypers."""

    options: Options
    model_hypers: Any
    train_hypers: Any
    architecture: Any  # the architecture package
    expanded: Dict[str, Any]


def read_options(path: str) -> Dict[str, Any]:
    """``options.yaml`` as a dict (safe YAML only), with one-line errors."""
    if os.path.isdir(path):
        raise MttError(f"{path!r} is a directory; give the options file (e.g. options.yaml)")
    if not os.path.exists(path):
        raise MttError(f"options file not found: {path!r}")
    if not os.path.isfile(path):
        raise MttError(f"{path!r} is not a file (a device or pipe); give the options file")
    try:
        with open(path, "rb") as file:  # YAML reads the encoding from the bytes
            data = yaml.load(file, Loader=OptionsLoader)  # a safe loader
    except yaml.reader.ReaderError:  # undecodable or control characters: not a text file
        raise MttError(
            f"{path!r} is not a text (YAML) options file: it holds binary data (is it a "
            "checkpoint or a model?); give the options file, e.g. options.yaml"
        ) from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise MttError(
            f"{path!r} is not valid YAML{where}: {getattr(error, 'problem', None) or error}"
        ) from None
    if not isinstance(data, dict):
        raise MttError(f"{path!r} must hold a mapping of options (architecture, training_set, ...)")
    return data


def validate_options(raw: Dict[str, Any]) -> Settings:
    """Check all options, the architecture's included, and report every problem at once."""
    problems: List[str] = []
    options = None
    try:
        options = hypers_module.parse(Options, raw)
    except OptionsError as error:
        problems += error.problems
    architecture, parsed = _architecture_sections(raw, problems)
    training = parsed.get("training")
    if getattr(training, "uncertainty", None) == "llpr":
        if not _offers_last_layer(architecture.__model__):
            problems.append(_NO_LAST_LAYER.format(name=raw["architecture"]["name"]))
    if options is not None:
        problems += _declared_name_problems(raw, options, parsed)
    device = raw.get("device", "auto") if isinstance(raw, dict) else "auto"
    if architecture is not None and isinstance(device, str):  # with the others, before data
        try:
            pick_device(device, architecture.__model__.__supported_devices__)
        except MttError as error:
            problems.append(str(error))
    if problems:
        problems = _lists_of_files_explained(raw, problems)
        raise OptionsError(_with_sections_named(problems, architecture))
    _without_generic_gradients(options)
    expanded = hypers_module.to_dict(options)
    expanded["architecture"]["model"] = hypers_module.to_dict(parsed["model"])
    expanded["architecture"]["training"] = hypers_module.to_dict(parsed["training"])
    return Settings(options, parsed["model"], parsed["training"], architecture, expanded)


def _lists_of_files_explained(raw: Dict[str, Any], problems: List[str]) -> List[str]:
    """A data set given as a list (several files, or metatrain's several sections) is one
    file or directory here: say how to combine them, not only that a list is the wrong type."""
    explained = []
    for problem in problems:
        for name in ("training_set", "validation_set", "test_set"):
            listed = isinstance(raw, dict) and isinstance(raw.get(name), list)
            if listed and problem.startswith(f"option '{name}' must"):
                data = name.split("_")[0] + "_data"
                problem = (
                    f"option '{name}' is a list, but a set is one file, packed directory or "
                    f"section: combine files with 'mtt data pack a.xyz b.xyz -o {data}' "
                    f"(same labels and units) and give '{name}: {data}'"
                )
        explained.append(problem)
    return explained


def _with_sections_named(problems: List[str], architecture) -> List[str]:
    """An unknown top-level option that is a training or model option (``num_epochs`` at the
    top, as some tools have it) says where it belongs."""
    import dataclasses

    sections = {"training": TrainingHypers}
    if architecture is not None:
        sections = {
            "model": architecture.__model__.__hypers__,
            "training": architecture.__trainer__.__hypers__,
        }
    fields = {
        f.name: name for name, cls in sections.items() for f in dataclasses.fields(cls) if f.init
    }
    result = []
    for problem in problems:
        match = re.match(r"unknown option '([^'.]+)'", problem)
        if match and match.group(1) in fields:
            key = match.group(1)
            problem = (
                f"unknown option '{key}': it belongs under architecture.{fields[key]} "
                f"(architecture.{fields[key]}.{key})"
            )
        result.append(problem)
    return result


def _without_generic_gradients(options: Options) -> None:
    """Generic targets have no forces, stress or virial: once validation has refused any the
    user gave them, the parsed options (and the run's expanded options.yaml written from them)
    say so, rather than keep the energies' defaults (``forces: true``), which a rerun of that
    options.yaml would refuse."""
    for section in (options.training_set, options.validation_set, options.test_set):
        for name, target in getattr(section, "targets", {}).items():
            if name.startswith("mtt::"):
                target.forces, target.stress, target.virial = False, False, False


def _declared_name_problems(raw: Dict[str, Any], options: Options, parsed) -> List[str]:
    """Names of targets in the training hypers that the training set does not declare, null
    units and gradients given to generic targets: caught here, before any data is read."""
    problems = raw_target_problems(raw)
    training, model = parsed.get("training"), parsed.get("model")
    if isinstance(training, TrainingHypers) and model is not None:
        targets = as_dataset_options(options.training_set).targets
        direct_heads = getattr(model, "direct_forces", False) is True
        for key, message in target_name_problems(training, targets, direct_heads):
            problems.append(f"option 'architecture.training.{key}' {message}")
    return problems


_NO_LAST_LAYER = (
    "option 'architecture.training.uncertainty': {name} does not offer last-layer features, "
    "so 'llpr' is not available for it; set it to 'none'"
)


def _architecture_sections(raw: Any, problems: List[str]):
    """The architecture package and its parsed ``model``/``training`` hypers, validated even
    when other options have problems, so that a user sees everything in one go."""
    from . import architectures

    section = raw.get("architecture") if isinstance(raw, dict) else None
    name = section.get("name") if isinstance(section, dict) else None
    if not isinstance(name, str):
        return None, {}
    try:
        architecture = architectures.load(name)
    except MttError as error:
        problems.append(str(error))
        return None, {}
    parsed = {}
    classes = {"model": architecture.__model__, "training": architecture.__trainer__}
    for key, cls in classes.items():
        value = section.get(key)
        if value is not None and not isinstance(value, dict):
            continue  # the type error is already reported by the top-level parse
        finetune = value.get("finetune") if key == "training" and value else None
        if isinstance(finetune, dict) and "read_from" in finetune and finetune["read_from"] is None:
            # metatrain's defaults spell "no fine-tuning" as a section with read_from: null
            value = {k: v for k, v in value.items() if k != "finetune"}
        try:
            parsed[key] = hypers_module.parse(cls.__hypers__, value or {}, f"architecture.{key}")
        except OptionsError as error:
            problems += error.problems
    finetune = getattr(parsed.get("training"), "finetune", None)
    if finetune is not None:
        try:
            parse_method_config(finetune, "architecture.training.finetune")
        except OptionsError as error:
            problems += error.problems
    return architecture, parsed


# metatrain's device names that torch does not know
_METATRAIN_DEVICES = {
    "gpu": "here it is 'cuda' (or 'auto', the default, which takes a GPU when there is one)",
    "multi-gpu": "here several GPUs are several processes: keep 'auto' and launch with "
    "'torchrun --nproc_per_node=N -m mtt train' or srun",
}


def pick_device(requested: str, supported: Sequence[str]) -> torch.device:
    if requested == "auto":
        if torch.cuda.is_available() and "cuda" in supported:
            return torch.device("cuda")
        return torch.device("cpu")
    if requested in _METATRAIN_DEVICES:
        raise MttError(
            f"option 'device' is {requested!r} (metatrain's): " + _METATRAIN_DEVICES[requested]
        )
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise MttError(
            f"option 'device' must be auto, cpu, cuda or cuda:N, got {requested!r}"
        ) from None
    if device.type not in supported:
        raise MttError(
            f"option 'device' is {requested!r}, but this architecture runs on "
            f"{', '.join(supported)} (or auto)"
        )
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MttError("option 'device' is cuda but no GPU is available; use auto or cpu")
    return device


def _log_to(run_dir: str) -> logging.Handler:
    handler = logging.FileHandler(os.path.join(run_dir, "train.log"))
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    handler.setLevel(logging.DEBUG)
    LOGGER.addHandler(handler)
    LOGGER.setLevel(logging.DEBUG)
    return handler


@prints_progress
def train(
    options: Union[str, Dict[str, Any]],
    training_set: Optional[Sequence[ase.Atoms]] = None,
    output: str = "model.pt",
    output_dir: str = "outputs",
    restart: Optional[str] = None,
    overrides: Sequence[str] = (),
    force: bool = False,
    dry_run: bool = False,
) -> Optional[str]:
    """Train a model as ``mtt train`` does; return the path of the exported model.

    With ``dry_run``, read and check everything (options, data, units, elements, a pretrained
    model and its zero-shot errors on the new data), print a report, and train nothing.

    ``options`` is the path of an options file or the same content as a dict. With
    ``training_set`` (any sequence of ``ase.Atoms``), that data replaces the file named in the
    options; its labels are read from each frame under the keys declared in the options.
    """
    base_dir = os.path.dirname(os.path.abspath(options)) if isinstance(options, str) else "."
    raw = read_options(options) if isinstance(options, str) else dict(options)
    if training_set is not None:  # the structures are given: a section needs no systems
        raw.setdefault("training_set", "<python dataset>")
        if isinstance(raw["training_set"], dict):
            raw["training_set"] = {"systems": "<python dataset>", **raw["training_set"]}
    settings = validate_options(hypers_module.apply_overrides(raw, list(overrides)))
    if dry_run:  # what the run would refuse first, it refuses too
        _check_outputs(output, force, output_dir, _inputs(options, settings, base_dir, restart))
        checkpoint_path = _restart_checkpoint(output_dir, restart)
        if restart == "auto" and checkpoint_path is not None:
            runlock.check(_run_of(checkpoint_path))
        return _dry_run(settings, base_dir, training_set, checkpoint_path)
    output = _own_output(output, settings.train_hypers.distributed)
    # under torchrun or srun: one process per GPU, the main one writes (mtt.training.distributed)
    with distributed.session(settings.train_hypers.distributed, _uses_cuda(settings)) as world:
        inputs = _inputs(options, settings, base_dir, restart)
        checkpoint_path, run_dir = distributed.from_main(
            lambda: _start_run(output, force, output_dir, restart, inputs)
        )
        arguments = (settings, base_dir, run_dir, checkpoint_path, training_set, output, force)
        if not world.main:
            return _train_in(*arguments, main=False)
        handler = _log_to(run_dir)
        continued = checkpoint_path is not None and run_dir == _run_of(checkpoint_path)
        try:
            return _train_in(*arguments)
        except KeyboardInterrupt:  # Ctrl-C, or SIGTERM from a scheduler (see mtt.cli)
            _report_interruption(run_dir, output_dir, overrides)
            raise
        except Exception as error:
            # the traceback goes to the run's log only; the command line prints one line
            LOGGER.debug("training failed", exc_info=True)
            LOGGER.removeHandler(handler)
            handler.close()
            if not (isinstance(error, MttError) and not continued and _remove_if_unused(run_dir)):
                error.log_file = handler.baseFilename  # type: ignore[attr-defined]
            raise
        finally:
            LOGGER.removeHandler(handler)
            handler.close()
            runlock.release(os.path.join(run_dir, runlock.LOCK))


def _own_output(output: str, mode: str) -> str:
    """``distributed: off`` under torchrun or srun: each process trains a model of its own,
    in its own run directory, and exports it to ``-o`` with its rank (``model-rank1.pt``),
    where all wrote the same file, the last one silently replacing the others."""
    launch = distributed.launch_environment(os.environ) if mode == "off" else None
    rank = int(launch["RANK"]) if launch is not None else 0
    if rank == 0:
        return output
    stem, extension = os.path.splitext(output)
    return f"{stem}-rank{rank}{extension}"


def _report_interruption(run_dir: str, output_dir: str, overrides: Sequence[str] = ()) -> None:
    """Where an interrupted run can continue from (the last complete epoch is saved on the
    way out, see ``Trainer``)."""
    exported = os.path.join(run_dir, "model.pt")
    if os.path.exists(exported):  # stopped while copying it to -o: the run is finished
        LOGGER.warning("interrupted after the export: the model is %s; copy it", exported)
        return
    checkpoints = glob.glob(os.path.join(run_dir, "checkpoints", "epoch_*.ckpt"))
    if not checkpoints:
        LOGGER.warning(
            "interrupted before the first checkpoint of %s: nothing to continue from (a lower "
            "architecture.training.checkpoint_interval writes checkpoints more often)",
            run_dir,
        )
        return
    last = max(checkpoints, key=checkpoint_epoch)
    option = "" if output_dir == "outputs" else f" --output-dir {shlex.quote(output_dir)}"
    # the run's own -r overrides: without them the restart would be another run
    option += "".join(f" -r {shlex.quote(override)}" for override in overrides)
    LOGGER.warning(
        "interrupted; the last checkpoint is %s: continue with 'mtt train <options> --restart "
        "auto%s' (or --restart %s)",
        last,
        option,
        last,
    )


def _run_of(checkpoint_path: str) -> str:
    return os.path.dirname(os.path.dirname(checkpoint_path))


def _say_other_length(checkpoint: Dict[str, Any], settings: Settings, epoch: int) -> None:
    """A restart whose num_epochs differs from its run's (often a -r left out): said, since
    the schedule and the end of the run follow the options."""
    before = checkpoint.get("train_hypers", {}).get("num_epochs")
    now = settings.train_hypers.num_epochs
    if before is not None and before != now and epoch < now:
        LOGGER.info(
            "num_epochs is %d where the checkpoint's run had %d: the run goes on to epoch %d",
            now,
            before,
            now,
        )


def _exported(checkpoint_path: str) -> bool:
    """Whether the run of a training checkpoint finished: it exported its model, the last
    thing a run writes in its directory (``<run>/model.ckpt`` or
    ``<run>/checkpoints/epoch_<n>.ckpt``)."""
    run = os.path.dirname(os.path.abspath(checkpoint_path))
    if os.path.basename(run) == "checkpoints":
        run = os.path.dirname(run)
    return os.path.exists(os.path.join(run, "model.pt"))


def _remove_if_unused(run_dir: str) -> bool:
    """Remove the new run directory of a run refused before it trained (a mistake in the
    data or the options, reported on the command line): it holds only its options and log,
    and such directories would pile up while the user fixes the mistake. Whether removed."""
    if not set(os.listdir(run_dir)) <= {"options.yaml", "train.log", runlock.LOCK}:
        return False
    shutil.rmtree(run_dir, ignore_errors=True)
    root = os.path.dirname(os.path.abspath(run_dir))
    if root in CREATED_ROOTS and not os.listdir(root):  # (outputs/, made for this run)
        os.rmdir(root)
    return True


def _uses_cuda(settings: Settings) -> bool:
    supported = settings.architecture.__model__.__supported_devices__
    return pick_device(settings.options.device, supported).type == "cuda"


def _inputs(options, settings: Settings, base_dir: str, restart: Optional[str]) -> List[str]:
    """The files a run reads (the options, the data, a checkpoint, a pretrained model),
    which ``-o`` never replaces, even with ``--force``."""
    found = [options] if isinstance(options, str) else []
    found += [restart] if restart not in (None, "auto") else []
    raw = settings.expanded
    named = [raw.get(name) for name in ("training_set", "validation_set", "test_set")]
    finetune = raw.get("architecture", {}).get("training", {}).get("finetune") or {}
    for value in _data_paths(named) + _data_paths(finetune.get("read_from")):
        path = os.path.join(base_dir, os.path.expanduser(value))
        found += [p for p in (path, os.path.abspath(value)) if os.path.exists(p)]
    return found


def _data_paths(value) -> List[str]:
    """The paths a data set section names: itself as a string, ``systems`` as a string, and
    every ``read_from`` within."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [path for item in value for path in _data_paths(item)]
    if not isinstance(value, dict):
        return []
    paths = [v for k, v in value.items() if k in ("read_from", "systems") and isinstance(v, str)]
    return paths + [p for v in value.values() if isinstance(v, dict) for p in _data_paths(v)]


def _check_outputs(output: str, force: bool, output_dir: str, inputs: Sequence[str]) -> None:
    refuse_overwrite(output, force, inputs=inputs)
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise MttError(
            f"--output-dir {output_dir!r} is a file; give a directory for the run directories"
        )


def _start_run(
    output: str, force: bool, output_dir: str, restart: Optional[str], inputs: Sequence[str]
):
    """The checkpoint to restart from (or None) and the run directory, made now."""
    _check_outputs(output, force, output_dir, inputs)
    checkpoint_path = _restart_checkpoint(output_dir, restart)
    run_dir = _run_dir(checkpoint_path, output_dir, restart)
    runlock.acquire(run_dir)
    if checkpoint_path is not None and run_dir == _run_of(checkpoint_path):
        # checkpoints a killed process was writing (never complete: see mtt.io.atomic_path)
        for stale in glob.glob(os.path.join(run_dir, "checkpoints", ".epoch_*.tmp")):
            os.remove(stale)
    return checkpoint_path, run_dir


def _restart_checkpoint(output_dir: str, restart: Optional[str]) -> Optional[str]:
    """The checkpoint ``--restart`` names (None: a new run, or 'auto' found none)."""
    if restart not in (None, "auto") and not os.path.isfile(restart):
        what = "is a directory" if os.path.isdir(restart) else "no such checkpoint file"
        raise MttError(
            f"--restart {restart!r}: {what}; give a .ckpt written by mtt train "
            "(outputs/<run>/checkpoints/epoch_<n>.ckpt), or 'auto' (with --output-dir for "
            "runs elsewhere than outputs/)"
        )
    return find_auto_restart(output_dir) if restart == "auto" else restart


def _run_dir(checkpoint_path: Optional[str], output_dir: str, restart: Optional[str]) -> str:
    if restart == "auto" and checkpoint_path is None:
        LOGGER.info("no checkpoint found under %s: starting a new run", output_dir)
    if checkpoint_path is not None and restart == "auto":
        run = _run_of(checkpoint_path)
        if not _exported(checkpoint_path):
            # an interrupted run continues in its directory; one interrupted after its last
            # epoch (in the final report or the export) only finishes
            return run
        # a finished run trained further: its exported model and final checkpoint stay
        LOGGER.info("%s finished: continuing it in a new run directory", run)
    return new_run_dir(output_dir)


def _python_training_set(settings: Settings, frames) -> LabelledDataset:
    dataset = as_dataset_options(settings.options.training_set)
    unit = "angstrom" if isinstance(dataset.systems, str) else dataset.systems.length_unit
    return dataset_from_atoms(frames, dataset.targets, unit, "training_set")


@dataclass
class Prepared:
    """Everything a run needs, read and checked."""

    sets: Tuple[Any, Any, Any]
    model: Any
    trainer: Any
    device: torch.device
    dtype: torch.dtype


def _prepare(settings: Settings, base_dir: str, frames, checkpoint_path) -> Prepared:
    options = settings.options
    python_set = _python_training_set(settings, frames) if frames is not None else None
    train_set, val_set, test_set = load_sets(options, base_dir, python_set)
    if settings.train_hypers.finetune is not None:
        units = _read_pretrained(settings, base_dir).dataset_info
        _fixed_weights_to_model_units(settings.train_hypers, train_set.targets, units)
        for dataset in (train_set, val_set, test_set):
            if dataset is not None:
                _to_model_units(dataset, units)
    info = DatasetInfo(train_set.length_unit, train_set.atomic_types, train_set.targets)
    _log_sets(train_set, val_set, test_set)
    model_class = settings.architecture.__model__
    dtype = DTYPES[options.base_precision]
    if dtype not in model_class.__supported_dtypes__:
        raise MttError(
            f"option 'base_precision': {options.base_precision} bits is not supported "
            f"by {options.architecture.name}"
        )
    warn_float32_energies(train_set, dtype)
    device = pick_device(options.device, model_class.__supported_devices__)
    device = distributed.local_device(device, distributed.current())
    model, trainer = _model_and_trainer(settings, info, checkpoint_path, base_dir)
    if len(model.generic_heads) != len(model.generic_names):
        raise MttError(
            f"{options.architecture.name} does not offer generic targets such as "
            f"{model.generic_names[0]!r}; use soap_bpnn or painn for them, or remove them"
        )
    if trainer.hypers.uncertainty == "llpr" and not model.target_names:
        raise MttError(
            "option 'architecture.training.uncertainty': 'llpr' gives uncertainties of "
            "energies, and these targets hold none; set it to 'none', or add an energy target"
        )
    trainer.options = _record_model(settings.expanded, model)
    return Prepared((train_set, val_set, test_set), model, trainer, device, dtype)


def _record_model(expanded: Dict[str, Any], model) -> Dict[str, Any]:
    """The options as the run will record them (options.yaml, checkpoints), with the model
    hypers of the model that trains: a restart's or a pretrained model's own, not the
    defaults the options would give a new one."""
    recorded = copy.deepcopy(expanded)
    own = hypers_module.to_dict(model.hypers)
    # hypers a model fills in from the weights it starts from (sevenn's sevennet_config)
    # keep the options' value: given, they would mean another model (SevenNet from scratch)
    for key in getattr(type(model.hypers), "__filled_from_weights__", ()):
        own[key] = recorded["architecture"]["model"].get(key, own[key])
    recorded["architecture"]["model"] = own
    return recorded


def _train_in(
    settings: Settings,
    base_dir,
    run_dir,
    checkpoint_path,
    frames,
    output,
    force: bool,
    main: bool = True,
) -> str:
    """Train in ``run_dir``; only the ``main`` process writes anything there."""
    LOGGER.info("run directory: %s", run_dir)
    run = _prepare(settings, base_dir, frames, checkpoint_path)
    model, trainer = run.model, run.trainer
    if main:  # once the restart is accepted: a refused one leaves the run's options as they are
        # with the model's own hypers (a restart's, a pretrained model's)
        with atomic_path(os.path.join(run_dir, "options.yaml"), suffix=".yaml") as tmp:
            with open(tmp, "w") as file:
                yaml.safe_dump(trainer.options, file, sort_keys=False)
    train_set, val_set, _ = run.sets
    forgetting = _forgetting_report(settings, base_dir, run)
    trainer.train(
        model, run.dtype, [run.device], [train_set], [val_set] if val_set else [], run_dir
    )
    if not main:  # the main process keeps, reports and exports the best model
        return output
    if trainer.best is not None:
        model.load_state_dict(trainer.best["state_dict"])
    if trainer.hypers.uncertainty == "llpr":
        _calibrate_uncertainty(model, run.sets)
    # the best weights, with the last epoch's optimizer: said if restarted from
    trainer.state["best_weights"] = True
    trainer.save_checkpoint(model, os.path.join(run_dir, "model.ckpt"))
    del trainer.state["best_weights"]
    _final_report(trainer, model, list(run.sets), run.device)
    if forgetting is not None:
        forgetting.finish(model, train_set, run_dir)
    plots.write_run_plots(trainer, model, list(run.sets), run.device, run_dir)
    path = os.path.join(run_dir, "model.pt")
    save_model(model.export(), path)
    try:
        copy_file(path, output, replace=force)
    except FileExistsError:
        raise MttError(
            f"{output!r} appeared while this run trained (another run writing the same -o?) "
            f"and is left as it is; this run's model is {path}"
        ) from None
    LOGGER.info("exported the best model (epoch %s) to %s", trainer.best["epoch"], output)
    return output


def _offers_last_layer(model_class) -> bool:
    from .energy_model import EnergyModel

    method = getattr(model_class, "last_layer_features", None)
    return method is not None and method is not EnergyModel.last_layer_features


def _calibrate_uncertainty(model, sets) -> None:
    """LLPR energy uncertainties of the final weights, calibrated on the validation set; the
    log compares predicted and actual errors on every set."""
    from .uncertainty import calibration_report, fit_uncertainty

    train_set, val_set, _ = sets
    fit = fit_uncertainty(model, train_set, val_set)
    LOGGER.info("energy uncertainties (LLPR) from %d last-layer features", fit["n_features"])
    for dataset in [s for s in sets if s is not None and len(s) > 0]:
        for name, row in calibration_report(model, dataset).items():
            unit = model.energy_units[model.target_names.index(name)]
            LOGGER.info(
                "%s: %s RMS uncertainty %.4g %s, RMS error %.4g %s, %.0f%% within 2 sigma",
                dataset.name,
                name,
                row["rms_uncertainty"],
                unit,
                row["rms_error"],
                unit,
                100 * row["within_2_sigma"],
            )
    _report_atom_uncertainties(
        model, val_set if val_set is not None and len(val_set) else train_set
    )


def _report_atom_uncertainties(model, dataset) -> None:
    """The per-atom uncertainties an engine will see on data like ``dataset``, next to the
    ASE calculator's warning threshold (0.1 eV by default). They are larger than a structure's
    (local energies are never observed, and their errors cancel in the sum), so the default
    can warn on the training data itself; the log says which threshold would not."""
    from .uncertainty import atom_uncertainties

    sigmas = atom_uncertainties(model, dataset)
    for t, name in enumerate(model.target_names):
        to_ev = conversion(model.energy_units[t], "eV")
        largest, typical = to_ev * sigmas[:, t].max(), to_ev * np.percentile(sigmas[:, t], 99)
        LOGGER.info(
            "%s: %s per-atom uncertainties up to %.3g eV (99%% below %.3g eV); metatomic's ASE "
            "calculator warns above its uncertainty_threshold (0.1 eV by default)%s",
            dataset.name,
            name,
            largest,
            typical,
            f": pass uncertainty_threshold={_round_up(largest)} to warn only beyond these"
            if largest > 0.1
            else "",
        )


def _round_up(value: float) -> float:
    """``value`` rounded up to two significant digits (a threshold to pass on)."""
    scale = 10 ** (math.floor(math.log10(value)) - 1)
    return round(math.ceil(value / scale) * scale, 12)


def _dry_run(settings: Settings, base_dir: str, frames, checkpoint_path: Optional[str]) -> None:
    """Check everything and report, without training or writing anything; with a checkpoint
    to restart from, what the restart would refuse (another model, elements or units)."""
    LOGGER.info("dry run: options are valid (%s)", settings.options.architecture.name)
    run = _prepare(settings, base_dir, frames, checkpoint_path)
    model, trainer = run.model, run.trainer
    model.to(device=run.device, dtype=run.dtype)
    train_set = run.sets[0]
    for dataset in run.sets:  # what training would refuse in the model's data
        if dataset is not None and not getattr(dataset, "lazy", False):
            data = [model_data(model, dataset, index) for index in range(len(dataset.frames))]
            if dataset is train_set:
                refuse_isolated_atoms(data, model)
                warn_far_positions(data, model)
    if trainer.epoch > 0:  # a restart continues with the checkpoint's references
        LOGGER.info("dry run finished: nothing was trained or written")
        return
    trainer._fit_baseline(model, train_set, _labelled(model, train_set))
    if trainer.pretrained_targets:
        LOGGER.info("zero-shot errors of the pretrained model on the new training set:")
        _final_report(trainer, model, [train_set], run.device)
        carried = trainer._carried_targets(model, _labelled(model, train_set))
        for line in _force_scale_check(model, train_set, run.device, carried):
            LOGGER.warning(line)
        _forgetting_report(settings, base_dir, run)  # the old task's errors, if given
    LOGGER.info("dry run finished: nothing was trained or written")


def _force_scale_check(model, dataset, device, targets: List[str]) -> List[str]:
    """Forces do not depend on reference energies, so the ratio of the labels' spread to the
    pretrained model's predictions exposes a wrong energy or length unit (23x for eV vs
    kcal/mol) even when the reference method changed. Only for ``targets``, those a
    pretrained head predicts (a new head starts at zero)."""
    from .training.batches import PreparedSet

    warnings = []
    for name in targets:
        quantity = f"{name}/forces"
        if not any(quantity in labels for labels in dataset.labels):
            continue
        prepared = PreparedSet(dataset, model, [quantity])
        predicted, labelled = [], []
        for batch, labels in prepared.batches(list(range(len(prepared))), 16):
            batch = batch_to(batch, device)
            forces = model.predict(batch, [name, quantity], training=False)[quantity]
            mask = labels.mask[quantity]
            predicted.append(forces.detach().cpu().double()[mask])
            labelled.append(labels.values[quantity][mask])
        ratio = float(torch.cat(labelled).std() / torch.cat(predicted).std().clamp(min=1e-12))
        LOGGER.info(
            "%s: %s: spread of the labels / spread of the pretrained predictions = %.3g",
            dataset.name,
            quantity,
            ratio,
        )
        if not 1 / 3 < ratio < 3:
            warnings.append(
                f"{dataset.name}: {quantity}: the labels spread {ratio:.3g} times as much as "
                "the pretrained model's predictions; check the energy and length units of "
                f"the {dataset.name} (eV vs kcal/mol is a factor 23)"
            )
    return warnings


def _labelled(model, dataset) -> List[str]:
    quantities = [q for t in model.dataset_info.targets.values() for q in t.quantities]
    return [q for q in quantities if any(q in labels for labels in dataset.labels)]


def _model_and_trainer(
    settings: Settings, info: DatasetInfo, checkpoint_path: Optional[str], base_dir: str = "."
):
    model_class = settings.architecture.__model__
    trainer_class = settings.architecture.__trainer__
    name = settings.options.architecture.name
    finetune = settings.train_hypers.finetune
    torch.manual_seed(settings.options.seed)
    if checkpoint_path is None:
        trainer = trainer_class(settings.train_hypers)
        trainer.seed = settings.options.seed
        if finetune is None:
            model = model_class(settings.model_hypers, info)
            implied = trainer.hypers.finetune  # an architecture that always fine-tunes
            if implied is not None and getattr(model, "pretrained_targets", None):
                # built from pretrained weights (sevenn): remembered as a pretrained model
                # is, so that the dry run, the reference energies and the loss's scales are
                # those of 'finetune: {method: full}', which this is
                _remember_pretrained(trainer, model, implied)
            return model, trainer
        model = _pretrained(settings, info, base_dir, trainer)
        return model, trainer
    checkpoint = read_checkpoint(checkpoint_path)
    if checkpoint.get("architecture") != name:
        raise MttError(
            f"{checkpoint_path!r} is a checkpoint of {checkpoint.get('architecture')!r}, but "
            f"the options ask for {name!r}; set architecture.name to match"
        )
    _, model = model_from_checkpoint(checkpoint, checkpoint_path, "restart")
    _check_same_finetune(settings, checkpoint, checkpoint_path)
    if finetune is None:
        _check_same_model(settings, model.hypers, checkpoint_path)
        _check_same_targets(info, model.dataset_info, checkpoint_path)
    with naming_file(checkpoint_path):
        trainer = trainer_class.load_checkpoint(checkpoint, settings.train_hypers, "restart")
    # a run interrupted after its last epoch (in its report or export) finishes; past the
    # options' num_epochs (a run of more epochs, restarted without its -r) nothing is done
    last = settings.train_hypers.num_epochs
    trainer.refuse_other_comparison()  # (before options.yaml is written)
    ended = trainer.epoch == last or trainer.stopped_early()
    if ended and _exported(checkpoint_path):
        raise MttError(
            f"{checkpoint_path!r} is of a finished run (epoch {trainer.epoch}"
            f"{', stopped early' if trainer.stopped_early() else ''}): nothing to train; raise "
            "num_epochs (or early_stopping_patience) to train further, or export the "
            "checkpoint with 'mtt export'"
        )
    _say_other_length(checkpoint, settings, trainer.epoch)
    if trainer.epoch > last:
        raise MttError(
            f"{checkpoint_path!r} is at epoch {trainer.epoch} and "
            f"'architecture.training.num_epochs' is {settings.train_hypers.num_epochs}: "
            "nothing to train; raise num_epochs to train further (-r "
            "architecture.training.num_epochs=N), or export the checkpoint with 'mtt export'"
        )
    if finetune is not None:  # the same parameters train as before the interruption
        pretrained_model = _read_pretrained(settings, base_dir)
        stored = trainer.state.get("pretrained_fingerprint")
        if stored is not None and stored != _weights_fingerprint(pretrained_model):
            raise MttError(
                f"option 'architecture.training.finetune.read_from' ({finetune.read_from!r}) "
                f"holds another model than the one the run of {checkpoint_path!r} fine-tuned: "
                "its teacher, L2-SP weights and old-task report would change mid-run; name "
                "that model again, or start a new fine-tuning run"
            )
        _remember_pretrained(trainer, pretrained_model, finetune)
        apply_method(model, finetune, trainer.teacher.generic_names)
    model = model.restart(info, finetune.inherit_heads if finetune else None)
    LOGGER.info("restarting from %s after epoch %d", checkpoint_path, trainer.epoch)
    return model, trainer


def _check_same_model(
    settings: Settings, restarted: Any, checkpoint_path: str, pretrained: bool = False
) -> None:
    """Refuse options that change a model which continues as it is (a restart's, a
    pretrained one): the change would be ignored. Only the keys the options give count; the
    run's options.yaml records the model's own hypers (:func:`_record_model`)."""
    wanted = hypers_module.to_dict(settings.model_hypers)
    restarted = hypers_module.to_dict(restarted)
    for key in settings.options.architecture.model:
        if key in restarted and key in wanted and restarted[key] != wanted[key]:
            if pretrained:
                raise MttError(
                    f"option 'architecture.model.{key}': the pretrained model "
                    f"({checkpoint_path!r}) has {restarted[key]!r}, the options ask for "
                    f"{wanted[key]!r}; fine-tuning keeps the pretrained model's hypers: "
                    "remove the option (or the 'architecture.model' section)"
                )
            raise MttError(
                f"option 'architecture.model.{key}': the model of {checkpoint_path!r} has "
                f"{restarted[key]!r}, the options ask for {wanted[key]!r}; a restart continues "
                "the same model: set it back, or start a new run (finetune.read_from starts "
                "one from these weights)"
            )


def _check_same_finetune(settings: Settings, checkpoint: Dict[str, Any], path: str) -> None:
    """A restart continues the checkpoint's run as it was: fine-tuning or not, with the same
    method (which decides the trainable parameters and adapters). Without the checkpoint's
    finetune section a LoRA run would restart as plain training of its adapted model."""
    finetune = settings.train_hypers.finetune
    section = "'architecture.training.finetune'"
    was = ((checkpoint.get("options") or {}).get("architecture") or {}).get("training") or {}
    was = was.get("finetune")
    if was is None and finetune is not None:
        raise MttError(
            f"{path!r} is a checkpoint of a run that did not fine-tune, and the options have "
            f"{section}: remove it to continue that run, or start a new fine-tuning run "
            "without --restart"
        )
    if was is not None and finetune is None:
        raise MttError(
            f"{path!r} is a checkpoint of a fine-tuning run ({was.get('method')} from "
            f"{was.get('read_from')!r}); give the options the same {section} section to "
            "continue it"
        )
    if was is not None:
        now = hypers_module.to_dict(finetune)
        if was.get("method") == finetune.method and "config" in was:  # defaults written out
            was = dict(was, config=_full_config(finetune.method, was["config"]))
            now["config"] = _full_config(finetune.method, now["config"])
        for key in ("method", "config", "inherit_heads", "reference_energies"):
            if key in was and now.get(key) != was[key]:
                raise MttError(
                    f"option {section[:-1]}.{key}': the run of {path!r} fine-tuned with "
                    f"{was[key]!r}, the options give {now.get(key)!r}; a restart continues "
                    "with the same one: set it back, or start a new fine-tuning run"
                )


def _full_config(method: str, config: Any) -> Any:
    """A method's config with its defaults filled in (``{}`` is ``{rank: 4, alpha: 8.0}``
    for lora), as given when it does not parse."""
    from .finetune import METHOD_CONFIGS

    try:
        return hypers_module.to_dict(hypers_module.parse(METHOD_CONFIGS[method], config))
    except (OptionsError, KeyError):
        return config


def _weights_fingerprint(model: torch.nn.Module) -> str:
    """A short hash of a model's weights: which pretrained model a fine-tuning run started
    from, whatever path named it."""
    digest = hashlib.sha256()
    for name, value in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def _check_same_targets(info: DatasetInfo, restarted: DatasetInfo, checkpoint_path: str):
    """Refuse a restart whose data declare targets the checkpoint's model lacks: its loss
    and normalisation were fitted without them (adding targets is fine-tuning's job)."""
    new = [name for name in info.targets if name not in restarted.targets]
    if new:
        raise MttError(
            f"the options declare targets {new} that the model of {checkpoint_path!r} does "
            f"not have (it has {list(restarted.targets)}); a restart continues the same "
            "model: remove them, or start a new run from these weights with "
            "'architecture.training.finetune' (read_from), which can add targets"
        )
    for name, target in info.targets.items():
        trained = restarted.targets[name]
        for gradient in ("forces", "stress"):
            if getattr(target, gradient) and not getattr(trained, gradient):
                raise MttError(
                    f"the training data label the {gradient} of {name!r}, which the run of "
                    f"{checkpoint_path!r} did not train on (its loss was fitted without "
                    f"them); a restart continues the same training: set "
                    f"'training_set.targets.{name}.{gradient}: false'"
                    f"{' (and no virial)' if gradient == 'stress' else ''}, or train them in "
                    "a new run from these weights with 'architecture.training.finetune' "
                    "(read_from)"
                )


def _read_pretrained(settings: Settings, base_dir: str):
    finetune = settings.train_hypers.finetune
    path = resolve_input(finetune.read_from, base_dir)
    name = settings.options.architecture.name
    if finetune.read_from in pretrained.names() and not os.path.exists(path):
        model = pretrained.load(finetune.read_from)  # e.g. sevennet-0, shipped weights
        if model.__architecture__ != name:
            raise MttError(
                f"{finetune.read_from!r} is a {model.__architecture__!r} model, but the options "
                f"ask for {name!r}; set architecture.name: {model.__architecture__}"
            )
        return model
    if not os.path.exists(path):  # at a restart, the file --restart names exists: say which
        raise MttError(
            f"option 'architecture.training.finetune.read_from': {path!r} does not exist; give "
            "the pretrained model's .ckpt written by 'mtt train' (a restart of a fine-tuning "
            "run reads it again: keep it where read_from says)"
        )
    checkpoint = read_checkpoint(path)
    if checkpoint.get("architecture") != name:
        raise MttError(
            f"'architecture.training.finetune.read_from' ({path!r}) holds a "
            f"{checkpoint.get('architecture')!r} model, but the options ask for {name!r}; set "
            "architecture.name to the pretrained model's architecture"
        )
    _, model = model_from_checkpoint(checkpoint, path, "finetune")
    return model


def _fixed_weights_to_model_units(hypers, targets, model_info: DatasetInfo) -> None:
    """``fixed_composition_weights`` are in the unit of the target's labels, which fine-tuning
    converts to the pretrained model's unit (:func:`_to_model_units`): so are they."""
    converted = {}
    for name, weights in hypers.fixed_composition_weights.items():
        known, target = model_info.targets.get(name), targets.get(name)
        if known is None or target is None or known.unit == target.unit:
            converted[name] = weights
            continue
        factor = conversion(target.unit, known.unit)
        converted[name] = {element: value * factor for element, value in weights.items()}
    hypers.fixed_composition_weights = converted


def _to_model_units(dataset: LabelledDataset, model_info: DatasetInfo) -> None:
    """Convert a data set's labels to a pretrained model's energy units, in place."""
    if dataset.length_unit != model_info.length_unit:
        # declaring the model's unit for data in another one (what the message used to
        # suggest) would train on structures scaled by the ratio of the units
        raise MttError(
            f"{dataset.name} is in {dataset.length_unit!r} but the pretrained model works in "
            f"{model_info.length_unit!r}, and fine-tuning does not convert lengths: convert "
            f"the positions, cells, forces and stress of the file to {model_info.length_unit!r}"
            f" and declare length_unit: {model_info.length_unit}"
        )
    for name, target in list(dataset.targets.items()):
        known = model_info.targets.get(name)
        if known is None or known.unit == target.unit:
            continue
        factor = conversion(target.unit, known.unit)
        dataset.scale_target(name, factor)  # packed data sets scale as they read
        LOGGER.info(
            "%s: %s converted from %s to the pretrained model's %s",
            dataset.name,
            name,
            target.unit,
            known.unit,
        )
        dataset.targets = {**dataset.targets, name: replace(target, unit=known.unit)}


def _weights(model) -> Dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def _remember_pretrained(trainer, pretrained, finetune) -> None:
    """What the trainer keeps of the pretrained model: its targets, its weights (L2-SP) and a
    frozen copy (the teacher of distillation and of the forgetting report)."""
    from .forgetting import Distillation, frozen_copy

    trainer.pretrained_targets = list(pretrained.target_names)
    trainer.reference_weights = _weights(pretrained)
    trainer.teacher = frozen_copy(pretrained)
    if finetune.distillation is not None:
        trainer.distillation = Distillation(
            trainer.teacher, finetune.distillation, trainer.hypers, trainer.seed
        )


def _forgetting_report(settings: Settings, base_dir: str, run: Prepared):
    """When fine-tuning: the teacher on the run's device, the scales of distillation, and
    the pretrained model's errors on ``finetune.old_task_set``, reported before training."""
    from .forgetting import ForgettingReport

    trainer = run.trainer
    if trainer.teacher is None:
        return None
    trainer.teacher.to(device=run.device, dtype=run.dtype)
    if trainer.distillation is not None:
        trainer.distillation.fit_scales(run.sets[0], run.device)
    old_task = trainer.hypers.finetune.old_task_set  # (sevenn's implied one included)
    old_set = None
    if old_task is not None:
        old_set = load_dataset(as_dataset_options(old_task), base_dir, "old_task_set")
        _check_old_task(old_set, trainer.teacher)
        _to_model_units(old_set, trainer.teacher.dataset_info)
        known = [name for name in old_set.targets if name in trainer.teacher.target_names]
        for line in _force_scale_check(trainer.teacher, old_set, run.device, known):
            LOGGER.warning(line)  # the old task's errors would be reported in wrong units
    report = ForgettingReport(trainer.teacher, old_set, run.device)
    report.start()
    return report


def _check_old_task(dataset: LabelledDataset, teacher) -> None:
    where = "'architecture.training.finetune.old_task_set'"
    unknown = [name for name in dataset.targets if name not in teacher.target_names]
    if unknown:
        raise MttError(
            f"{where} has targets {unknown} that the pretrained model does not predict (it "
            f"predicts the energies {teacher.target_names}); declare the pretrained targets"
        )
    extra = sorted(set(dataset.atomic_types) - set(teacher.atomic_types))
    if extra:
        raise MttError(
            f"{where} has elements {extra} that the pretrained model was not trained on; "
            "remove those structures"
        )


def _pretrained(settings: Settings, info: DatasetInfo, base_dir: str, trainer):
    """The pretrained model, adapted to the new data and with the chosen weights trainable."""
    finetune = settings.train_hypers.finetune
    model = _read_pretrained(settings, base_dir)
    _check_same_model(settings, model.hypers, finetune.read_from, pretrained=True)
    _remember_pretrained(trainer, model, finetune)
    trainer.state["pretrained_fingerprint"] = _weights_fingerprint(model)
    LOGGER.info("fine-tuning %s from %s", settings.options.architecture.name, finetune.read_from)
    model = model.restart(info, finetune.inherit_heads)
    _learn_new_gradients(model, info)
    apply_method(model, finetune, trainer.teacher.generic_names)
    return model


def _learn_new_gradients(model, info: DatasetInfo) -> None:
    """Forces or stress that the new data label for an energy the pretrained model was
    trained without (stress on a model pretrained on molecules or on data without stress):
    they are gradients of that energy, so they train too. Without this, the labels were read
    and counted in the log, and silently left out of the loss and the metrics."""
    targets = dict(model.dataset_info.targets)
    for name, known in targets.items():
        new = info.targets.get(name)
        if new is not None and known.kind == "energy" and new.kind == "energy":
            forces, stress = known.forces or new.forces, known.stress or new.stress
            targets[name] = replace(known, forces=forces, stress=stress)
    model.dataset_info = DatasetInfo(model.dataset_info.length_unit, model.atomic_types, targets)


def _log_sets(*sets) -> None:
    """Each set's size and label counts, and a warning for a target labelled in some of its
    structures only; the labels are read once (a packed set reads them from disk)."""
    counts = {}
    for dataset in sets:
        if dataset is not None:
            present = [set(labels) for labels in dataset.labels]
            counts[dataset.name] = {
                q: sum(q in keys for keys in present)
                for t in dataset.targets.values()
                for q in t.quantities
            }
            labels = ", ".join(f"{q}: {n}" for q, n in counts[dataset.name].items())
            LOGGER.info("%s: %s (%s)", dataset.name, counted(len(dataset), "structure"), labels)
            _warn_partly_labelled(dataset, present)
    if sets[0] is not None:
        _refuse_unlabelled_targets(list(sets[0].targets), counts)


def _refuse_unlabelled_targets(names: List[str], counts: Dict[str, Dict[str, int]]) -> None:
    """A target without a label in the training set: the file has some, but the split put them
    all in the validation or test set. Training went on with a loss of 0 for it and exported a
    model whose output for it was never trained."""
    training = counts.get("training_set", {})
    for name in (name for name in names if training.get(name) == 0):
        elsewhere = ", ".join(
            f"the {other} has {found[name]}"
            for other, found in counts.items()
            if other != "training_set" and found.get(name)
        )
        raise MttError(
            f"training_set: no structure has the label {name!r}"
            f"{f' ({elsewhere})' if elsewhere else ''}, so the model would not learn it: put "
            "labelled structures in the training set (label more of them, or change 'seed' or "
            f"the fractions of the split), or remove {name!r} from 'training_set.targets'"
        )


def _warn_partly_labelled(dataset, present: List[set]) -> None:
    """A target labelled in some structures only: allowed (the others are masked), but
    usually labels under another key in part of the data (``REF_energy`` after ``energy``),
    which would otherwise train on half the data without a word."""
    from .data.reading import available_keys

    for name, target in dataset.targets.items():
        missing = [i for i, keys in enumerate(present) if name not in keys]
        if not missing or len(missing) == len(dataset):
            continue
        first = [dataset.frames[missing[0]]]
        keys = available_keys(first, target.per_atom)
        other = ""
        if target.kind == "generic":  # a label of the other kind (per atom, per structure)?
            kind = "per structure" if target.per_atom else "per atom"
            other_keys = available_keys(first, not target.per_atom)
            other = f"; {kind}: {other_keys}" if other_keys else ""
        LOGGER.warning(
            "%s: %d of %d structures have no %r label (the first: %s%s%s); %s",
            dataset.name,
            len(missing),
            len(dataset),
            name,
            dataset.describe(missing[0]),
            f", whose keys are {keys}" if keys else "",
            other,
            _use_of_other_labels(dataset.name),
        )


def _use_of_other_labels(set_name: str) -> str:
    """What happens to structures without a label: only the training set trains."""
    if set_name == "training_set":
        return "they train on their other labels only, if any"
    return f"the {set_name} errors are measured on their other labels only, if any"


def _final_report(trainer, model, sets, device) -> None:
    from .training.trainer import quantity_unit

    units = {name: target.unit for name, target in model.dataset_info.targets.items()}
    per_structure = set(trainer.hypers.per_structure_targets)
    references = _composition_only(trainer, model, sets[0])
    for dataset in [s for s in sets if s is not None]:
        metrics = trainer.evaluate(model, dataset, device)
        for key, value in metrics.items():
            if key.endswith("_rmse") or key.endswith("_mae"):
                quantity = key[len(dataset.name) + 1 :].rsplit("_", 1)[0]
                unit = quantity_unit(quantity, model)
                LOGGER.info(
                    "%s: %s %s = %.5g%s",
                    dataset.name,
                    quantity,
                    key.rsplit("_", 1)[1].upper(),
                    value,
                    f" {unit}" if unit else "",  # (a unitless target: no trailing space)
                )
        for index, name in enumerate(model.target_names):
            whole = name in per_structure  # compared per structure, like its errors above
            rmse = baseline_rmse(dataset, name, model.atomic_types, references[index], whole)
            if rmse is not None:
                LOGGER.info(
                    "%s: %s RMSE of the composition baseline alone = %.5g %s%s",
                    dataset.name,
                    name,
                    rmse,
                    units[name],
                    "" if whole else "/atom",
                )


def _composition_only(trainer, model, train_set) -> List[Any]:
    """Per target, the reference energies of the best model of the composition alone: the
    model's own, except for the targets of a pretrained network, whose references are fitted
    to what the network leaves of the labels; those are fitted again to the raw labels of the
    training set."""
    carried = set(trainer._carried_targets(model, _labelled(model, train_set)))
    references = []
    for index, name in enumerate(model.target_names):
        weights = model.baseline[index].detach().cpu().double().numpy()
        if name in carried:
            fixed = trainer.hypers.fixed_composition_weights.get(name, {})
            where = f"architecture.training.fixed_composition_weights.{name}"
            weights, _ = fit_baseline(
                train_set, name, model.atomic_types, fixed, where, warn_rare=False
            )
        references.append(weights)
    return references


def save_model(exported, path: str) -> None:
    """Save an ``AtomisticModel`` atomically (a crash never leaves half a file at ``path``);
    a full disk is a one-line error naming ``path`` (see :func:`mtt.io.saved_in_memory`)."""
    data = saved_in_memory(lambda name: _save_torchscript(exported, name))
    with atomic_path(path, suffix=".pt") as tmp:
        if data is None:  # no in-memory files on this system: torch writes the file
            _save_torchscript(exported, tmp)
        else:
            with open(tmp, "wb") as file:
                file.write(data)


def _save_torchscript(exported, path: str) -> None:
    try:
        exported.save(path)
    except RuntimeError as error:
        cause = error.__cause__ or error
        lines = [line for line in str(cause).splitlines() if line.strip()] or [repr(cause)]
        raise MttError(f"could not export the model to TorchScript: {lines[0]}") from error


def copy_file(source: str, destination: str, replace: bool = True) -> None:
    suffix = os.path.splitext(destination)[1] or ".tmp"
    with atomic_path(destination, suffix=suffix, replace=replace) as tmp:
        shutil.copyfile(source, tmp)


def model_from_checkpoint(checkpoint: Dict[str, Any], path: str, context: str):
    """The architecture package and model of a checkpoint read from ``path``."""
    from . import architectures

    name = checkpoint.get("architecture")
    if name not in architectures.names():
        raise MttError(
            f"{path!r} holds a model of architecture {name!r}, which this mtt does not have "
            f"(it has {', '.join(architectures.names())}); use the mtt that wrote it or upgrade"
        )
    architecture = architectures.load(name)
    try:
        with naming_file(path):
            model = architecture.__model__.load_checkpoint(checkpoint, context)
    except MttError:
        raise
    except (KeyError, ValueError, TypeError, RuntimeError, AttributeError) as error:
        raise MttError(
            f"{path!r} is damaged or incomplete ({type(error).__name__}: "
            f"{str(error).splitlines()[0][:120] if str(error) else ''}); use another checkpoint"
        ) from None
    return architecture, model


@prints_progress
def export(
    checkpoint_path: str,
    output: str = "model.pt",
    force: bool = False,
    metadata: Optional[ModelMetadata] = None,
    dtype: Optional[str] = None,
    second_derivatives: bool = False,
) -> str:
    """Export the best model of a checkpoint to ``output`` (``mtt export``), optionally in
    another precision (``float32`` or ``float64``), e.g. trained in float64, run in float32.
    ``second_derivatives`` keeps the full autograd graph (Hessians by autograd) in models
    whose forces otherwise come from lean gradients (:mod:`mtt.lean_gradients`)."""
    refuse_overwrite(output, force, inputs=[checkpoint_path])
    checkpoint = read_checkpoint(checkpoint_path)
    architecture, model = model_from_checkpoint(checkpoint, checkpoint_path, "export")
    if dtype is not None:
        wanted = {"float32": torch.float32, "float64": torch.float64}[dtype]
        if wanted not in architecture.__model__.__supported_dtypes__:
            raise MttError(f"{checkpoint.get('architecture')} does not support {dtype}")
        model = model.to(wanted)
    _say_missing_uncertainty(checkpoint, model, checkpoint_path)
    save_model(model.export(metadata, second_derivatives=second_derivatives), output)
    LOGGER.info("exported %s to %s", checkpoint_path, output)
    return output


def _say_missing_uncertainty(checkpoint: Dict[str, Any], model, path: str) -> None:
    """A run with ``uncertainty: llpr`` calibrates at its end: its epoch checkpoints export
    models without energy uncertainties, which the user may be counting on."""
    asked = (checkpoint.get("train_hypers") or {}).get("uncertainty") == "llpr"
    uncertainty = getattr(model, "uncertainty", None)
    if asked and uncertainty is not None and not uncertainty.calibrated():
        LOGGER.warning(
            "%s is from before its run calibrated the energy uncertainties (at the end): the "
            "exported model has none; export the run's model.ckpt for them",
            path,
        )
