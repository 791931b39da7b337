"""Labelled data sets: structures from any ``Dataset[ase.Atoms]`` or ASE-readable file.

Following MatterTune's data contract, the input is anything that yields ``ase.Atoms``; labels are
read from each frame under the keys the user declared (:mod:`mtt.data.reading`). Everything is
checked once, here, so that training never meets a bad frame: NaN/inf, missing keys, wrong shapes
and elements are reported with the file and the frame index.
"""

import logging
import os
from typing import Dict, List, Optional, Sequence, Tuple

import ase
import numpy as np

from ..errors import MttError
from ..options import DatasetOptions, SystemsOptions, TargetOptions
from ..units import check_length_unit
from .packed import is_packed
from .reading import (
    available_keys,
    check_structure,
    gradient_like_keys,
    lookup,
    misplaced,
    missing_target_error,
    read_structures,
)
from .targets import GradientSource, TargetInfo, TargetSpec

LOGGER = logging.getLogger("mtt")

Labels = Dict[str, np.ndarray]


class LabelledDataset:
    """Structures with their labels. Item ``i`` is ``(atoms, labels)``; a frame without a
    label simply lacks that key in its ``labels`` (masked in the loss, never dropped)."""

    def __init__(
        self,
        frames: Sequence[ase.Atoms],
        labels: List[Labels],
        targets: Dict[str, TargetInfo],
        length_unit: str,
        name: str,
        source: str = "",
        origin: Optional[Sequence[int]] = None,
        argument: str = "",
    ):
        self.frames = list(frames)
        self.labels = labels
        self.targets = targets
        self.length_unit = length_unit
        self.name = name
        self.source = source  # the structure file ('' for data given in Python)
        # the index in that file of each structure (a split reorders them)
        self.origin = list(range(len(self.frames))) if origin is None else list(origin)
        # for data given in Python: the argument that held it (a split renames the parts)
        self.argument = argument

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, index: int) -> Tuple[ase.Atoms, Labels]:
        return self.frames[index], self.labels[index]

    def subset(self, indices: Sequence[int], name: str) -> "LabelledDataset":
        indices = [int(i) for i in indices]
        return LabelledDataset(
            [self.frames[i] for i in indices],
            [self.labels[i] for i in indices],
            self.targets,
            self.length_unit,
            name,
            self.source,
            [self.origin[i] for i in indices],
            self.argument,
        )

    def describe(self, index: int) -> str:
        """Structure ``index`` for a message: where the user finds it (its index in the file,
        which a random split does not keep), and the set it is in."""
        return f"structure {self.origin[index]} of {self.given} (in the {self.name})"

    @property
    def given(self) -> str:
        """Where the user gave the structures: a file, or a sequence passed from Python."""
        return repr(self.source) if self.source else f"the Python {self.argument or self.name}"

    @property
    def atomic_types(self) -> List[int]:
        return sorted({int(z) for atoms in self.frames for z in atoms.numbers})

    def scale_target(self, name: str, factor: float) -> None:
        """Multiply the labels of target ``name`` and its gradients by ``factor`` (a unit
        conversion)."""
        for labels in self.labels:
            for key in [k for k in labels if target_of_label(k) == name]:
                labels[key] = labels[key] * factor


def load_dataset(options: DatasetOptions, base_dir: str, where: str) -> LabelledDataset:
    """Read the data set section ``where`` (e.g. ``training_set``) of the options."""
    systems = options.systems
    if isinstance(systems, str):
        systems = SystemsOptions(read_from=systems)
    check_length_unit(systems.length_unit, f"{where}.systems.length_unit")
    path = resolve_input(systems.read_from, base_dir)
    if is_packed(path):  # read structure by structure from disk (``mtt data pack``)
        from .lazy import open_packed

        return open_packed(path, _specs(options.targets, where), systems.length_unit, where)
    frames = read_structures(path, systems.reader)
    sources = _FrameSources(base_dir, {path: frames})
    specs = _specs(options.targets, where)
    return build_dataset(frames, specs, path, systems.length_unit, where, sources)


def dataset_from_atoms(
    atoms_dataset: Sequence[ase.Atoms],
    targets: Dict[str, TargetOptions],
    length_unit: str = "angstrom",
    name: str = "dataset",
) -> LabelledDataset:
    """Labels of any ``Dataset[ase.Atoms]`` (MatterTune's contract), read from each frame."""
    if isinstance(atoms_dataset, ase.Atoms):
        raise MttError(f"{name} is a single ase.Atoms; give a list (or Dataset) of them")
    if isinstance(atoms_dataset, (str, bytes, os.PathLike)):
        raise MttError(
            f"{name} is a path ({os.fsdecode(atoms_dataset)!r}), where structures are expected; "
            f"name the file in the options ({name}: <path>) instead, or read it with "
            "ase.io.read(path, ':')"
        )
    if not (hasattr(atoms_dataset, "__len__") and hasattr(atoms_dataset, "__getitem__")):
        raise MttError(
            f"{name} is a {type(atoms_dataset).__name__}, which has no length or indexing; give "
            "a list of ase.Atoms (e.g. list(...) of it) or a map-style Dataset"
        )
    frames = [atoms_dataset[i] for i in range(len(atoms_dataset))]
    if len(frames) == 0:
        raise MttError(f"{name} holds no structures")
    for index, atoms in enumerate(frames):
        if not isinstance(atoms, ase.Atoms):
            raise MttError(f"{name}[{index}] is a {type(atoms).__name__}, not an ase.Atoms")
    check_length_unit(length_unit, f"{name} length unit")
    dataset = build_dataset(frames, _specs(targets, name), name, length_unit, name, None)
    dataset.source = ""  # no file: structures are named by their index in the sequence
    dataset.argument = name
    return dataset


def target_of_label(key: str) -> str:
    """The target a label belongs to: ``energy/pbe0/forces`` -> ``energy/pbe0`` (not
    ``energy``: a variant is a target of its own, in a unit of its own)."""
    for gradient in ("/forces", "/stress"):
        if key.endswith(gradient) and not key.startswith("mtt::"):
            return key[: -len(gradient)]
    return key


def resolve_input(path: str, base_dir: str) -> str:
    """A path of the options: relative to the options file's folder (``base_dir``), so a
    run reads the same files from any working directory. metatrain reads them from the
    working directory: a file found only there is read from there, and one found in both
    places as two different files is read beside the options, with a warning."""
    path = os.path.expanduser(path)
    if os.path.isabs(path):
        return path
    beside, here = os.path.join(base_dir, path), os.path.abspath(path)
    if not os.path.exists(here) or os.path.abspath(beside) == here:
        return beside
    if not os.path.exists(beside):
        LOGGER.info("%r is not beside the options file: read from the working directory", path)
        return here
    if not os.path.samefile(beside, here):
        LOGGER.warning(
            "%r is read from the options file's folder (%s); the working directory holds "
            "another %r, which metatrain would read: give an absolute path to pick one",
            path,
            beside,
            path,
        )
    return beside


def _specs(targets: Dict[str, TargetOptions], where: str) -> List[TargetSpec]:
    if not targets:
        raise MttError(f"'{where}.targets' is empty; declare at least an 'energy' target")
    return [
        TargetSpec.from_options(name, t, f"{where}.targets.{name}") for name, t in targets.items()
    ]


class _FrameSources:
    """Frames of the files labels are read from, each file read once."""

    def __init__(self, base_dir: str, cache: Dict[str, List[ase.Atoms]]):
        self.base_dir = base_dir
        self.cache = cache

    def get(self, path: Optional[str], reader: Optional[str], default: str) -> Tuple[str, list]:
        if path is None:
            return default, self.cache[default]
        path = resolve_input(path, self.base_dir)
        if path not in self.cache:
            self.cache[path] = read_structures(path, reader)
        return path, self.cache[path]


def build_dataset(
    frames: List[ase.Atoms],
    specs: List[TargetSpec],
    source: str,
    length_unit: str,
    where: str,
    sources: Optional[_FrameSources],
) -> LabelledDataset:
    for index, atoms in enumerate(frames):
        check_structure(atoms, f"structure {index} of {source!r}")
    labels: List[Labels] = [{} for _ in frames]
    targets = {}
    for spec in specs:
        targets[spec.name] = _read_target(spec, frames, labels, source, where, sources)
    return LabelledDataset(frames, labels, targets, length_unit, where, source)


def _label_frames(source, sources, read_from, reader, frames, where_key):
    """The frames to read one label from: the systems' own or another file of equal length."""
    if read_from is None or sources is None:
        return source, frames
    path, other = sources.get(read_from, reader, source)
    if len(other) != len(frames):
        raise MttError(
            f"'{where_key}.read_from' ({path!r}) has {len(other)} structures but the systems "
            f"file has {len(frames)}; both must hold the same structures in the same order"
        )
    return path, other


def _read_target(spec, frames, labels, source, where, sources) -> TargetInfo:
    key_where = f"{where}.targets.{spec.name}"
    options = spec.options
    path, label_frames = _label_frames(
        source, sources, options.read_from, options.reader, frames, key_where
    )
    if spec.kind == "generic":
        return _read_generic(spec, label_frames, labels, path, key_where)
    found = _read_energies(spec.name, spec.key, label_frames, labels, path, key_where)
    if found == 0:
        keys = available_keys(label_frames, per_atom=False)
        raise MttError(
            f"no structure of {path!r} has the energy key {spec.key!r}"
            f"{misplaced(label_frames, spec.key, False)}; keys found: {keys}; set "
            f"'{key_where}.key' to the right one"
        )
    info = TargetInfo(spec.name, spec.unit, description=options.description)
    unused = []
    for kind, gradient in spec.gradients.items():
        count = _read_gradient(
            spec.name, kind, gradient, source, sources, frames, labels, f"{key_where}.{kind}"
        )
        if kind == "forces":
            info.forces = count > 0
        else:
            info.stress = info.stress or count > 0
        if count == 0 and not gradient.required:
            unused.append(kind)
    if "forces" in unused:
        _hint_other_keys("forces", spec.gradients, label_frames, path, key_where)
    if "stress" in unused and not info.stress:  # (a virial read instead is no omission)
        _hint_other_keys("stress", spec.gradients, label_frames, path, key_where)
    return info


def _read_generic(spec, frames, labels, path, where) -> TargetInfo:
    """Labels of ``mtt::<name>``: per structure ``(1, C, k)`` or per atom ``(n, C, k)`` with
    ``C`` = 1, 3 or 9 Cartesian components and ``k`` sub-targets (given as ``k`` groups of
    ``C`` numbers)."""
    options = spec.options
    info = spec.generic_info()
    found = 0
    for index, atoms in enumerate(frames):
        here = f"structure {index} of {path!r}"
        value = lookup(atoms, spec.key, options.per_atom, here, where)
        if value is None:
            continue
        what = f"{spec.name} ({spec.key!r}) of structure {index} of {path!r}"
        rows = len(atoms) if options.per_atom else 1
        expected = rows * info.components * info.num_subtargets
        if value.size != expected:
            raise MttError(
                f"{what} has {value.size} numbers, expected {expected} "
                f"({'per atom, ' if options.per_atom else ''}{info.num_subtargets} x "
                f"{info.components}); check '{where}.type' and 'num_subtargets'"
            )
        _check_finite(value, what)
        shaped = value.reshape(rows, info.num_subtargets, info.components)
        labels[index][spec.name] = np.ascontiguousarray(shaped.transpose(0, 2, 1))
        found += 1
    if info.components == 9:
        _warn_if_not_symmetric(spec.name, labels, path)
    if found == 0:
        keys = available_keys(frames, per_atom=options.per_atom)
        elsewhere = bool(misplaced(frames, spec.key, options.per_atom))
        raise missing_target_error(path, spec.key, options.per_atom, where, keys, elsewhere)
    return info


def _warn_if_not_symmetric(name: str, labels, path: str) -> None:
    """Rank-2 targets are symmetric tensors (the model predicts only those): an antisymmetric
    part of the labels cannot be learnt, and usually means a wrong order of the 9 numbers."""
    worst, where = 0.0, -1
    for index, entry in enumerate(labels):
        if name in entry:
            tensors = entry[name].reshape(entry[name].shape[0], 3, 3, -1)
            gap = float(np.abs(tensors - tensors.transpose(0, 2, 1, 3)).max())
            scale = float(np.abs(tensors).max())
            if gap > 1e-6 * max(scale, 1e-300) and gap > worst:
                worst, where = gap, index
    if where >= 0:
        LOGGER.warning(
            "%s in %r is not symmetric (|T_ij - T_ji| up to %.3g, structure %d): the model "
            "predicts symmetric tensors and learns only the symmetric part; check the order "
            "of the 9 numbers (row-major 3x3)",
            name,
            path,
            worst,
            where,
        )


def _read_energies(name, key, frames, labels, path, where) -> int:
    found = 0
    for index, atoms in enumerate(frames):
        value = lookup(atoms, key, False, f"structure {index} of {path!r}", where)
        if value is None:
            continue
        if value.size != 1:
            raise MttError(
                f"energy {key!r} of structure {index} of {path!r} has {value.size} numbers, "
                f"expected one; check '{where}.key'"
            )
        _check_finite(value, f"energy {key!r} of structure {index} of {path!r}")
        labels[index][name] = value.reshape(1)
        found += 1
    return found


def _read_gradient(
    name, kind, gradient: GradientSource, source, sources, frames, labels, where
) -> int:
    path, label_frames = _label_frames(
        source, sources, gradient.read_from, gradient.reader, frames, where
    )
    found = 0
    for index, atoms in enumerate(label_frames):
        here = f"structure {index} of {path!r}"
        value = lookup(atoms, gradient.key, kind == "forces", here, where)
        if value is None:
            continue
        what = f"{kind} {gradient.key!r} of structure {index} of {path!r}"
        _check_finite(value, what)
        value = _to_label(kind, value, frames[index], what)
        if value is not None:
            quantity = f"{name}/{'forces' if kind == 'forces' else 'stress'}"
            if quantity in labels[index]:  # stress and virial both read (both true)
                _check_same_stress(labels[index][quantity], value, what, where)
            labels[index][quantity] = value
            found += 1
    if found == 0 and gradient.required:
        keys = available_keys(label_frames, per_atom=(kind == "forces"))
        place = misplaced(label_frames, gradient.key, kind == "forces")
        raise MttError(
            f"no structure of {path!r} has {kind} under the key {gradient.key!r}{place}; keys "
            f"found: {keys}; set '{where}' to the right key, or to false to train without {kind}"
        )
    return found


def _check_same_stress(stress: np.ndarray, from_virial: np.ndarray, what: str, where: str):
    """A structure with both a stress and a virial: they must say the same (stress = -virial /
    volume), else one of them is wrong and which one the model learns must not be chance."""
    scale = max(float(np.abs(stress).max()), 1e-12)
    if float(np.abs(stress - from_virial).max()) > 1e-6 * scale + 1e-12:
        target = where.rsplit(".", 1)[0]
        raise MttError(
            f"{what} disagrees with the structure's stress (stress = -virial / volume); set "
            f"'{target}.stress: false' or '{target}.virial: false' to read only one of them"
        )


def _hint_other_keys(kind: str, gradients, frames, path: str, target: str) -> None:
    """Forces and stress are read by default only under ``forces`` and ``stress``: when they
    are absent, keys that look like them (``force``, ``REF_forces``, ``virial``, ...) and that
    no other setting reads are named, rather than leaving a file's forces unused without a
    word."""
    key = gradients[kind].key
    read = {gradient.key for gradient in gradients.values()}
    for name in gradient_like_keys(frames, key, kind == "forces"):
        if name in read:
            continue
        option = "virial" if "virial" in name.lower() else kind
        LOGGER.warning(
            "%s: no %s under %r, but %r looks like them: set '%s.%s: {key: %s}' to learn them "
            "(or '%s.%s: false' to silence this)",
            path,
            kind,
            key,
            name,
            target,
            option,
            name,
            target,
            kind,
        )


def _to_label(kind: str, value: np.ndarray, atoms: ase.Atoms, what: str) -> Optional[np.ndarray]:
    """Forces as ``[n, 3]``; stress and virial as a 3x3 stress (``None`` if not periodic)."""
    if kind == "forces":
        if value.shape != (len(atoms), 3):
            raise MttError(f"{what} has shape {value.shape}, expected ({len(atoms)}, 3)")
        return value
    matrix = _as_matrix(value, what)
    if not atoms.pbc.all():
        return None  # stress is only defined for structures periodic in all directions
    if kind == "virial":
        return -matrix / abs(atoms.get_volume())
    return matrix


def _as_matrix(value: np.ndarray, what: str) -> np.ndarray:
    if value.size == 9:
        return value.reshape(3, 3)
    if value.size == 6:  # Voigt order xx, yy, zz, yz, xz, xy (ASE)
        xx, yy, zz, yz, xz, xy = value.reshape(6)
        return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
    raise MttError(f"{what} has {value.size} numbers, expected 9 (3x3) or 6 (Voigt)")


def _check_finite(value: np.ndarray, what: str) -> None:
    if not np.all(np.isfinite(value)):
        raise MttError(f"{what} is NaN or infinite; fix or remove that structure")
