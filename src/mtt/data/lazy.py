"""Data sets read one structure at a time: packed directories and streamed files.

A :class:`PackedDataset` behaves as a :class:`~mtt.data.dataset.LabelledDataset` whose
``frames`` and ``labels`` are built from the memory-mapped arrays of a packed directory
(:mod:`mtt.data.packed`) when indexed, and never kept. The targets are resolved from the options
exactly as for a structure file: same keys, same conversions (Voigt or 3x3 stress, virial to
stress, generic shapes), same masks and the same one-line errors.
"""

from dataclasses import dataclass
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import ase
import numpy as np

from ..errors import MttError
from .dataset import (
    LabelledDataset,
    Labels,
    _as_matrix,
    _check_finite,
    _check_same_stress,
    target_of_label,
)
from .packed import PackedArrays, open_arrays
from .reading import lookup, missing_target_error
from .targets import TargetInfo, TargetSpec

_CHUNK = 1 << 20  # rows per step of the checks that scan a whole array

#: (value, atoms in the structure, its pbc, its cell, what) -> label, or None where undefined
Convert = Callable[[np.ndarray, int, np.ndarray, np.ndarray, str], Optional[np.ndarray]]


@dataclass
class Quantity:
    """One label a target reads: ``name`` (e.g. ``energy/forces``) from ``key``."""

    name: str
    key: str
    per_atom: bool
    convert: Convert
    what: str  # e.g. "forces 'forces'", for error messages
    required: bool = False  # the options name it: an error if no structure has it

    def read(self, value: Optional[np.ndarray], n: int, pbc, cell, where: str):
        """The label of one structure from its stored ``value`` (``None`` if it has none)."""
        if value is None:
            return None
        what = f"{self.what} of {where}"
        _check_finite(value, what)
        return self.convert(value, n, np.asarray(pbc), np.asarray(cell), what)


def _energy(value, n, pbc, cell, what):
    if value.size != 1:
        raise MttError(f"{what} has {value.size} numbers, expected one")
    return value.reshape(1)


def _forces(value, n, pbc, cell, what):
    if value.shape != (n, 3):
        raise MttError(f"{what} has shape {value.shape}, expected ({n}, 3)")
    return value


def _stress(value, n, pbc, cell, what):
    matrix = _as_matrix(value, what)
    return matrix if pbc.all() else None  # only defined for fully periodic structures


def _virial(value, n, pbc, cell, what):
    matrix = _as_matrix(value, what)
    return -matrix / abs(np.linalg.det(cell)) if pbc.all() else None


def _generic(info: TargetInfo) -> Convert:
    def convert(value, n, pbc, cell, what):
        rows = n if info.per_atom else 1
        expected = rows * info.components * info.num_subtargets
        if value.size != expected:
            raise MttError(
                f"{what} has {value.size} numbers, expected {expected} "
                f"({'per atom, ' if info.per_atom else ''}{info.num_subtargets} x "
                f"{info.components}); check the target's 'type' and 'num_subtargets'"
            )
        shaped = value.reshape(rows, info.num_subtargets, info.components)
        return np.ascontiguousarray(shaped.transpose(0, 2, 1))

    return convert


def resolve(spec: TargetSpec, where: str) -> Tuple[TargetInfo, List[Quantity]]:
    """The target of ``spec`` and the quantities it reads (the target's own value first,
    which is always required)."""
    options = spec.options
    key_where = f"{where}.targets.{spec.name}"
    sources = [(options.read_from, key_where)] + [
        (g.read_from, f"{key_where}.{kind}") for kind, g in spec.gradients.items()
    ]
    for read_from, place in sources:
        if read_from is not None:
            raise MttError(
                f"'{place}.read_from': a packed or streamed data set reads its labels from "
                "its own structures; pack the structures together with those labels"
            )
    if spec.kind == "generic":
        info = spec.generic_info()
        what = f"{spec.name} ({spec.key!r})"
        generic = Quantity(spec.name, spec.key, options.per_atom, _generic(info), what, True)
        return info, [generic]
    info = TargetInfo(spec.name, spec.unit, description=options.description)
    quantities = [Quantity(spec.name, spec.key, False, _energy, f"energy {spec.key!r}", True)]
    converts = {"forces": _forces, "stress": _stress, "virial": _virial}
    for kind, gradient in spec.gradients.items():
        name = f"{spec.name}/{'forces' if kind == 'forces' else 'stress'}"
        what = f"{kind} {gradient.key!r}"
        quantities.append(
            Quantity(name, gradient.key, kind == "forces", converts[kind], what, gradient.required)
        )
    return info, quantities


class PackedDataset(LabelledDataset):
    """A packed directory as a labelled data set; ``indices`` select and order structures."""

    lazy = True  # PreparedSet builds each batch's data when it is needed

    def __init__(
        self,
        arrays: PackedArrays,
        quantities: List[Quantity],
        targets: Dict[str, TargetInfo],
        length_unit: str,
        name: str,
        indices: Optional[np.ndarray] = None,
    ):
        count = int(arrays.manifest["structures"])
        self.arrays = arrays
        self.quantities = quantities
        self.indices = np.arange(count) if indices is None else np.asarray(indices, np.int64)
        self.factors: Dict[str, float] = {}
        self.frames = LazySequence(len(self.indices), self._atoms)
        self.labels = LazySequence(len(self.indices), self._labels)
        self.targets = targets
        self.length_unit = length_unit
        self.name = name
        self.source = arrays.path

    def _atoms(self, k: int) -> ase.Atoms:
        return self.arrays.atoms(int(self.indices[k]))

    def describe(self, index: int) -> str:
        place = f"{self.arrays.path!r} (in the {self.name})"
        return f"structure {int(self.indices[index])} of {place}"

    def _labels(self, k: int) -> Labels:
        i = int(self.indices[k])
        arrays = self.arrays
        n = int(arrays.offsets[i + 1] - arrays.offsets[i])
        labels = {}
        for quantity in self.quantities:
            value = arrays.value((quantity.key, quantity.per_atom), i)
            if value is None:
                continue
            what = f"{quantity.what} of structure {i}"
            label = quantity.convert(value, n, arrays.pbc[i], arrays.cells[i], what)
            if label is not None:
                factor = self.factors.get(target_of_label(quantity.name))
                labels[quantity.name] = label * factor if factor is not None else label
        return labels

    def __getitem__(self, index: int) -> Tuple[ase.Atoms, Labels]:
        return self._atoms(index), self._labels(index)

    def __iter__(self) -> Iterator[Tuple[ase.Atoms, Labels]]:
        return (self[k] for k in range(len(self)))

    @property
    def n_atoms(self) -> np.ndarray:
        """Atoms of each structure, ``[len(self)]``."""
        offsets = self.arrays.offsets
        return np.asarray(offsets[self.indices + 1] - offsets[self.indices])

    def subset(self, indices: Sequence[int], name: str) -> "PackedDataset":
        subset = PackedDataset(
            self.arrays,
            self.quantities,
            self.targets,
            self.length_unit,
            name,
            self.indices[np.asarray(indices, dtype=np.int64)],
        )
        subset.factors = dict(self.factors)
        return subset

    def scale_target(self, name: str, factor: float) -> None:
        """Multiply the labels of target ``name`` and its gradients by ``factor`` (a unit
        conversion), as they are read."""
        self.factors[name] = self.factors.get(name, 1.0) * factor

    @property
    def atomic_types(self) -> List[int]:
        offsets, numbers = self.arrays.offsets, self.arrays.numbers
        if len(self.indices) == int(self.arrays.manifest["structures"]):
            return [int(z) for z in self.arrays.manifest["atomic_types"]]
        found = set()
        for block in chunks(np.sort(self.indices)):
            parts = [numbers[offsets[i] : offsets[i + 1]] for i in block]
            found.update(np.unique(np.concatenate(parts)).tolist())
        return sorted(int(z) for z in found)


def open_packed(
    path: str, specs: List[TargetSpec], length_unit: str, where: str
) -> LabelledDataset:
    """The packed directory ``path`` as the data set ``where`` (e.g. ``training_set``), its
    targets checked as :func:`mtt.data.dataset.load_dataset` checks those of a file."""
    arrays = open_arrays(path)
    quantities, targets = [], {}
    for spec in specs:
        info, wanted = resolve(spec, where)
        key_where = f"{where}.targets.{spec.name}"
        found = []
        for quantity in wanted:
            count = _check_quantity(arrays, quantity, path, key_where)
            # a default key that packing dropped (shapes that differ) is not "absent": the
            # file read directly would have refused the malformed structure
            dropped = quantity.key in arrays.manifest.get("dropped_keys", {})
            if count == 0 and (quantity.required or dropped):
                raise _missing(arrays, quantity, spec, path, key_where)
            if count:
                found.append(quantity)
                info.forces = info.forces or quantity.name.endswith("/forces")
                info.stress = info.stress or quantity.name.endswith("/stress")
        _check_same_stresses(arrays, found, path, key_where)
        quantities += found
        targets[spec.name] = info
    return PackedDataset(arrays, quantities, targets, length_unit, where)


def _check_same_stresses(arrays: PackedArrays, quantities, path: str, where: str) -> None:
    """Structures with both a stress and a virial must say the same, as in a file
    (:func:`mtt.data.dataset._check_same_stress`): checked once, over the whole pack."""
    stress = [q for q in quantities if q.convert is _stress]
    virial = [q for q in quantities if q.convert is _virial]
    if not stress or not virial:
        return
    (entry_s, values_s, mask_s), (entry_v, values_v, mask_v) = (
        arrays.labels[(q[0].key, False)] for q in (stress, virial)
    )
    both = np.flatnonzero(np.asarray(mask_s) & np.asarray(mask_v) & arrays.pbc.all(axis=1))
    for block in chunks(both):
        for i in block:  # 3x3 matrices: the Python loop is cheap next to reading the pack
            i = int(i)
            what = f"{virial[0].what} of structure {i} of {path!r}"
            cell = arrays.cells[i]
            _check_same_stress(
                _stress(np.array(values_s[i]), 0, arrays.pbc[i], cell, what),
                _virial(np.array(values_v[i]), 0, arrays.pbc[i], cell, what),
                what,
                f"{where}.virial",
            )


def _check_quantity(arrays: PackedArrays, quantity: Quantity, path: str, where: str) -> int:
    """How many structures have ``quantity``, after checking its shape and values once."""
    name = (quantity.key, quantity.per_atom)
    if name not in arrays.labels:
        return 0
    entry, values, mask = arrays.labels[name]
    if entry["count"] == 0:
        return 0
    first = int(np.argmax(mask))
    n = int(arrays.offsets[first + 1] - arrays.offsets[first])
    where = f"structure {first} of {path!r}"
    quantity.read(arrays.value(name, first), n, arrays.pbc[first], arrays.cells[first], where)
    bad = first_bad_row(values, mask, arrays.offsets if quantity.per_atom else None)
    if bad is not None:
        raise MttError(
            f"{quantity.what} of structure {bad} of {path!r} is NaN or infinite; fix or "
            "remove that structure and pack again"
        )
    if quantity.convert in (_stress, _virial):  # only periodic structures have a stress
        periodic = np.asarray(arrays.pbc).all(axis=1)
        return int(np.count_nonzero(np.asarray(mask) & periodic))
    return int(entry["count"])


def _missing(arrays, quantity, spec, path, where) -> MttError:
    why = arrays.manifest.get("dropped_keys", {}).get(quantity.key)
    if why is not None:
        return MttError(
            f"{quantity.key!r} was not packed in {path!r} ({why}): give it one shape in every "
            "structure and pack the files again"
        )
    keys = arrays.keys(quantity.per_atom)
    if quantity.name == spec.name and spec.kind == "energy":
        return MttError(
            f"no structure of {path!r} has the energy key {spec.key!r}; keys found: {keys}; "
            f"set '{where}.key' to the right one"
        )
    if quantity.name == spec.name:
        elsewhere = quantity.key in arrays.keys(not quantity.per_atom)
        return missing_target_error(path, spec.key, quantity.per_atom, where, keys, elsewhere)
    kind = quantity.what.split()[0]
    return MttError(
        f"no structure of {path!r} has {kind} under the key {quantity.key!r}; keys found: "
        f"{keys}; set '{where}.{kind}' to the right key, or to false to leave {kind} out"
    )


def stream_labelled(
    frames: Iterator[Tuple[int, ase.Atoms]], specs: List[TargetSpec], source: str, where: str
) -> Iterator[Tuple[ase.Atoms, Labels]]:
    """``(atoms, labels)`` of streamed frames, labels read as for a file (missing ones are
    simply absent): evaluation of files too large to read at once."""
    quantities = [
        (q, f"{where}.targets.{spec.name}") for spec in specs for q in resolve(spec, where)[1]
    ]
    for index, atoms in frames:
        labels = {}
        for quantity, target in quantities:
            here = f"structure {index} of {source!r}"
            value = lookup(atoms, quantity.key, quantity.per_atom, here)
            label = quantity.read(value, len(atoms), atoms.pbc, atoms.cell[:], here)
            if label is None:
                continue
            if quantity.name in labels:  # stress and virial both read: they must agree
                what = f"{quantity.what} of {here}"
                _check_same_stress(labels[quantity.name], label, what, f"{target}.virial")
            labels[quantity.name] = label
        yield atoms, labels


def first_bad_row(values: np.ndarray, mask: np.ndarray, offsets: Optional[np.ndarray]):
    """The first structure whose label holds NaN or infinity (``None`` if all are finite)."""
    for start in range(0, len(values), _CHUNK):
        chunk = np.asarray(values[start : start + _CHUNK])
        bad = ~np.isfinite(chunk.reshape(len(chunk), -1)).all(axis=1)
        if bad.any():
            row = start + int(np.argmax(bad))
            structure = row if offsets is None else int(np.searchsorted(offsets, row, "right")) - 1
            if mask[structure]:
                return structure
    return None


class LazySequence(Sequence):
    """``function(i)`` for ``i`` in ``range(length)``, computed when asked for."""

    def __init__(self, length: int, function: Callable[[int], object]):
        self.length, self.function = length, function

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self.function(i) for i in range(*index.indices(self.length))]
        if not -self.length <= index < self.length:
            raise IndexError(index)
        return self.function(index % self.length)

    def __iter__(self) -> Iterator:
        return (self.function(i) for i in range(self.length))


def chunks(indices: np.ndarray, size: int = 4096) -> Iterable[np.ndarray]:
    for start in range(0, len(indices), size):
        yield indices[start : start + size]
