"""Training, validation and test sets from the options: files, sections or fractions."""

import logging
import os
from typing import Optional, Tuple, Union

import numpy as np

from ..errors import MttError
from ..options import DatasetOptions, Options, SystemsOptions
from .dataset import LabelledDataset, load_dataset

LOGGER = logging.getLogger("mtt")
Sets = Tuple[LabelledDataset, Optional[LabelledDataset], Optional[LabelledDataset]]


def as_dataset_options(value: Union[str, DatasetOptions]) -> DatasetOptions:
    """A bare path means: energies under ``energy`` in eV, forces if present, lengths in Å."""
    return DatasetOptions(systems=value) if isinstance(value, str) else value


def load_sets(options: Options, base_dir: str, training: Optional[LabelledDataset] = None) -> Sets:
    """Read (or take) the training set, then carve out or read validation and test sets."""
    if training is None:
        training = load_dataset(as_dataset_options(options.training_set), base_dir, "training_set")
    rng = np.random.default_rng(options.seed)
    order = rng.permutation(len(training))
    sets = {}
    for name in ("test_set", "validation_set"):
        value = getattr(options, name)
        if isinstance(value, float):
            count = _fraction_count(value, len(training))
            sets[name] = training.subset(order[:count], name) if count else None
            order = order[count:]
        else:
            sets[name] = _load_other(value, options, base_dir, name)
            _warn_if_training_file(sets[name], training)
    if len(order) == 0:
        raise MttError(
            f"the training set ({len(training)} structures) is empty once validation_set and "
            "test_set fractions are taken out; lower those fractions or add structures"
        )
    training = training.subset(sorted(order), "training_set")
    for other in (sets["validation_set"], sets["test_set"]):
        if other is not None:
            check_compatible(training, other)
    return training, sets["validation_set"], sets["test_set"]


def _load_other(value, options: Options, base_dir: str, name: str) -> LabelledDataset:
    """A validation or test set given as a file or a section; a file takes the training
    set's targets, so the options a message names are the training set's."""
    try:
        return load_dataset(_like_training(value, options), base_dir, name)
    except MttError as error:
        message = str(error).replace(f"'{name}.targets.", "'training_set.targets.")
        if not isinstance(value, str) or message == str(error):
            raise
        what = "a packed directory" if os.path.isdir(os.path.join(base_dir, value)) else "a file"
        raise MttError(
            f"{message} ({name} is {what}, read with training_set's targets; if its keys "
            f"differ, give {name} its own section with 'systems' and 'targets')"
        ) from None


def _like_training(value: Union[str, DatasetOptions], options: Options) -> DatasetOptions:
    """A bare path for validation or test data means: the same targets (keys, units) and
    length unit as the training set, so a user declares them once."""
    if not isinstance(value, str):
        return value
    training = as_dataset_options(options.training_set)
    systems = training.systems
    if isinstance(systems, str):
        return DatasetOptions(systems=value, targets=training.targets)
    return DatasetOptions(
        systems=SystemsOptions(value, length_unit=systems.length_unit), targets=training.targets
    )


def _warn_if_training_file(dataset: LabelledDataset, training: LabelledDataset) -> None:
    """A validation or test set read from the training set's own file measures errors on
    training data: allowed (a quick check of fitting), but never silently."""
    paths = (dataset.source, training.source)
    if all(paths) and all(os.path.exists(p) for p in paths) and os.path.samefile(*paths):
        LOGGER.warning(
            "%s reads the training set's file %r: its errors are errors on training data; give "
            "a fraction (e.g. %s: 0.1) or a file of other structures",
            dataset.name,
            dataset.source,
            dataset.name,
        )


def _fraction_count(fraction: float, total: int) -> int:
    """At least one structure for a non-zero fraction, so a small set still gets validated."""
    if fraction == 0.0:
        return 0
    return max(1, int(round(fraction * total)))


def check_compatible(training: LabelledDataset, other: LabelledDataset) -> None:
    """Other sets must use the training set's units and elements."""
    if other.length_unit != training.length_unit:
        raise MttError(
            f"{other.name} uses length unit {other.length_unit!r} but training_set uses "
            f"{training.length_unit!r}; use one length unit for all sets"
        )
    for name, target in other.targets.items():
        known = training.targets.get(name)
        if known is None:
            raise MttError(f"{other.name} has target {name!r} that training_set does not have")
        if known.unit != target.unit:
            raise MttError(
                f"target {name!r} is in {target.unit!r} in {other.name} but in "
                f"{known.unit!r} in training_set; use one unit for a target"
            )
    _check_elements(training, other)


def _check_elements(training: LabelledDataset, dataset: LabelledDataset) -> None:
    known = training.atomic_types
    allowed = set(known)
    for index, atoms in enumerate(dataset.frames):
        extra = sorted(set(atoms.numbers.tolist()) - allowed)
        if extra:
            fix = (
                f"the random split put every structure with them in the {dataset.name}: add "
                f"more such structures to {_where_to_add(dataset)}, or remove these"
                if _split_from(training, dataset)
                else f"add such structures to training_set, or remove these from the "
                f"{dataset.name} (a fine-tuned model knows only its pretrained elements)"
            )
            raise MttError(
                f"{dataset.describe(index)} has elements {extra} that the training set does "
                f"not contain (it has {known}); {fix}"
            )


def _split_from(training: LabelledDataset, dataset: LabelledDataset) -> bool:
    """Whether ``dataset`` is a part of the training structures (a fraction taken out): of the
    same file, or of the structures given from Python (which have no file)."""
    if dataset.source:
        return dataset.source == training.source
    return not training.source and dataset.argument == training.argument


def _where_to_add(dataset: LabelledDataset) -> str:
    return "the file" if dataset.source else dataset.given
