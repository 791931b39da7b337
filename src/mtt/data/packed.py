"""Packed data sets: structures and labels as flat arrays on disk, read when needed.

``mtt data pack FILE... -o DIR`` streams the structures of any files ASE reads
(``ase.io.iread``, one structure in memory at a time) into a directory of ``.npy`` files and a
versioned JSON manifest. Every numeric label is kept under its key, so the targets are chosen
at training time exactly as for the original files:

.. code-block:: text

    DIR/manifest.json        format and version, counts, arrays, labels, source files
    DIR/numbers.npy          [atoms] int32
    DIR/positions.npy        [atoms, 3] float64
    DIR/cells.npy            [structures, 3, 3] float64 (rows are cell vectors)
    DIR/pbc.npy              [structures, 3] bool
    DIR/offsets.npy          [structures + 1] int64: structure i is atoms offsets[i]:offsets[i+1]
    DIR/labels/<k>.npy       one label: [structures, ...] or, per atom, [atoms, ...] float64
    DIR/labels/<k>.mask.npy  [structures] bool: which structures have it (others are zeros)

A ``read_from`` naming such a directory opens it as a :class:`PackedDataset`: the arrays are
memory-mapped (``np.load(mmap_mode="r")``) and a structure is read when a batch needs it, so
training memory does not grow with the data set. Neighbour lists are not stored: they depend on
the model's cutoff, and vesin computes them per batch in a small fraction of a training step.
"""

import json
import os
import re
import shutil
import struct
import tempfile
import time
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import ase
import ase.io
import ase.outputs
import numpy as np

from ..errors import MttError
from ..version import __version__
from .reading import (
    _as_numbers,
    check_structure,
    directory_error,
    is_per_atom_result,
    iter_structures,
    read_as,
)

FORMAT = "mtt-packed"
VERSION = 1
MANIFEST = "manifest.json"
_HEADER = 128  # bytes of each .npy header, written once the number of rows is known


def is_packed(path: str) -> bool:
    """Whether ``path`` is a directory written by ``mtt data pack``."""
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, MANIFEST))


# ------------------------------------------------------------------------------------ writing


class _Column:
    """An array written a few rows at a time to a ``.npy`` file whose header is written last."""

    def __init__(self, path: str, dtype, row_shape: Tuple[int, ...]):
        self.path, self.dtype, self.row_shape = path, np.dtype(dtype), tuple(row_shape)
        self.file = open(path, "wb")
        self.file.write(b"\0" * _HEADER)
        self.rows = 0

    def append(self, values) -> None:
        values = np.ascontiguousarray(values, dtype=self.dtype)
        self.file.write(values.reshape(-1).tobytes())
        self.rows += values.size // max(1, int(np.prod(self.row_shape, dtype=np.int64)))

    def pad(self, rows: int) -> None:
        if rows:
            self.append(np.zeros((rows,) + self.row_shape, dtype=self.dtype))

    def close(self) -> dict:
        shape = (self.rows,) + self.row_shape
        descr = np.lib.format.dtype_to_descr(self.dtype)
        text = f"{{'descr': {descr!r}, 'fortran_order': False, 'shape': {shape!r}, }}"
        text = text.ljust(_HEADER - 11) + "\n"
        self.file.seek(0)
        self.file.write(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text.encode())
        self.file.close()
        return {"dtype": self.dtype.str, "shape": list(shape)}


class _Label:
    """One label key, per structure or per atom, with its mask."""

    def __init__(self, root: str, index: int, key: str, per_atom: bool, shape, before: int, atoms):
        self.key, self.per_atom, self.shape = key, per_atom, tuple(shape)
        self.file, self.mask_file = f"labels/{index}.npy", f"labels/{index}.mask.npy"
        self.values = _Column(os.path.join(root, self.file), np.float64, self.shape)
        self.mask = _Column(os.path.join(root, self.mask_file), bool, ())
        self.values.pad(atoms if per_atom else before)  # structures packed before it appeared
        self.mask.pad(before)
        self.count = 0

    def add(self, value: Optional[np.ndarray], n_atoms: int) -> None:
        if value is None:
            self.values.pad(n_atoms if self.per_atom else 1)
            self.mask.append([False])
        else:
            self.values.append(value)
            self.mask.append([True])
            self.count += 1

    def close(self) -> dict:
        self.values.close()
        self.mask.close()
        return {
            "key": self.key,
            "per_atom": self.per_atom,
            "shape": list(self.shape),
            "count": self.count,
            "file": self.file,
            "mask": self.mask_file,
        }

    def discard(self, root: str) -> None:
        for column in (self.values, self.mask):
            column.file.close()
            os.remove(column.path)


def _frame_labels(atoms: ase.Atoms) -> Dict[Tuple[str, bool], np.ndarray]:
    """Every numeric label of a frame as ``{(key, per_atom): values}``, found where
    :func:`mtt.data.reading.lookup` looks: ``info`` (per structure) or ``arrays`` (per atom)
    first, then the calculator's results."""
    results = getattr(atoms.calc, "results", None) or {}
    per_structure = dict(atoms.info)
    per_atom = {k: v for k, v in atoms.arrays.items() if k not in ("numbers", "positions")}
    for key, value in results.items():
        if is_per_atom_result(key, value, len(atoms)):
            per_atom.setdefault(key, value)
        else:
            per_structure.setdefault(key, value)
    found = {}
    for atom, values in ((False, per_structure), (True, per_atom)):
        for key, value in values.items():
            numbers = _as_numbers(value)
            if numbers is not None:
                found[(key, atom)] = numbers
    return found


class _Packer:
    """The columns of a packed directory, filled one structure at a time."""

    def __init__(self, root: str):
        self.root = root
        os.makedirs(os.path.join(root, "labels"))
        self.columns = {
            "numbers": _Column(os.path.join(root, "numbers.npy"), np.int32, ()),
            "positions": _Column(os.path.join(root, "positions.npy"), np.float64, (3,)),
            "cells": _Column(os.path.join(root, "cells.npy"), np.float64, (3, 3)),
            "pbc": _Column(os.path.join(root, "pbc.npy"), bool, (3,)),
            "offsets": _Column(os.path.join(root, "offsets.npy"), np.int64, ()),
        }
        self.columns["offsets"].append([0])
        self.labels: Dict[Tuple[str, bool], _Label] = {}
        self.dropped: Dict[Tuple[str, bool], str] = {}
        self.structures, self.atoms, self.types = 0, 0, set()

    def add(self, atoms: ase.Atoms, where: str) -> None:
        check_structure(atoms, where)
        n = len(atoms)
        self.columns["numbers"].append(atoms.numbers)
        self.columns["positions"].append(atoms.positions)
        self.columns["cells"].append(np.asarray(atoms.cell[:]))
        self.columns["pbc"].append(np.asarray(atoms.pbc, dtype=bool))
        self.columns["offsets"].append([self.atoms + n])
        values = _frame_labels(atoms)
        for name, value in values.items():
            if name not in self.labels and name not in self.dropped:
                shape = value.shape[1:] if name[1] else value.shape
                index = len(self.labels) + len(self.dropped)
                self.labels[name] = _Label(
                    self.root, index, name[0], name[1], shape, self.structures, self.atoms
                )
        for name, label in list(self.labels.items()):
            value = values.get(name)
            expected = ((n,) if label.per_atom else ()) + label.shape
            if value is not None and value.shape != expected:
                # a key whose shape changes between structures is metadata, not a label
                self.dropped[name] = f"{where} has shape {value.shape}, others {expected}"
                self.labels.pop(name).discard(self.root)
                continue
            label.add(value, n)
        self.structures += 1
        self.atoms += n
        self.types.update(int(z) for z in np.unique(atoms.numbers))

    def abort(self) -> None:
        """Close every file (after a failure; nothing if all were closed)."""
        columns = list(self.columns.values())
        columns += [c for label in self.labels.values() for c in (label.values, label.mask)]
        for column in columns:
            column.file.close()

    def close(self, sources: List[dict]) -> dict:
        arrays = {}
        for name, column in self.columns.items():
            arrays[name] = {"file": f"{name}.npy", **column.close()}
        return {
            "format": FORMAT,
            "version": VERSION,
            "written_by": f"mtt {__version__}",
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "structures": self.structures,
            "atoms": self.atoms,
            "atomic_types": sorted(self.types),
            "arrays": arrays,
            "labels": [label.close() for label in self.labels.values()],
            "dropped_keys": {name[0]: why for name, why in self.dropped.items()},
            "sources": sources,
            "units": "as in the source files; declare them in the options, as for those files",
        }


def pack(
    paths: Sequence[str],
    output: str,
    overwrite: bool = False,
    reader: Optional[str] = None,
    progress: Optional[Callable[[int], None]] = None,
) -> dict:
    """Pack the structures of ``paths`` (in order) into the directory ``output``; return its
    manifest. One structure is in memory at a time. The directory appears complete or not at
    all; an existing one is replaced only with ``overwrite``, and only if it is a packed one.
    ``progress`` is called with the number of structures packed so far."""
    for path in paths:
        if is_packed(path):
            raise MttError(
                f"{path!r} is already a packed data set: train or evaluate from it directly "
                "('read_from' or 'systems' can name the directory)"
            )
        if os.path.isdir(path):
            raise MttError(f"{path!r} is a directory; give the structure files to pack")
        if not os.path.isfile(path):
            raise MttError(f"file not found: {path!r}")

    def fill(packer: "_Packer") -> List[dict]:
        sources = []
        for path in paths:
            before = packer.structures
            for index, atoms in iter_structures(path, reader, FORMAT_HINT):
                packer.add(atoms, f"structure {index} of {path!r}")
                if progress is not None:
                    progress(packer.structures)
            if packer.structures == before:
                raise MttError(f"{path!r} holds no structures")
            stat = os.stat(path)
            sources.append(
                {
                    "path": os.path.abspath(path),
                    "size": stat.st_size,
                    "mtime": stat.st_mtime,
                    "structures": packer.structures - before,
                }
            )
        return sources

    return _write(output, overwrite, fill)


def pack_atoms(
    structures: Iterable[ase.Atoms], output: str, overwrite: bool = False, source: str = "python"
) -> dict:
    """Pack any iterable of ``ase.Atoms`` (a generator keeps one in memory) as :func:`pack`
    packs files; ``source`` names it in the manifest and in error messages."""

    def fill(packer: "_Packer") -> List[dict]:
        for index, atoms in enumerate(structures):
            if not isinstance(atoms, ase.Atoms):
                raise MttError(f"{source}[{index}] is a {type(atoms).__name__}, not an ase.Atoms")
            packer.add(atoms, f"structure {index} of {source}")
        if packer.structures == 0:
            raise MttError(f"{source} holds no structures")
        return [{"path": source, "structures": packer.structures}]

    return _write(output, overwrite, fill)


def _write(output: str, overwrite: bool, fill: Callable[["_Packer"], List[dict]]) -> dict:
    """A new packed directory at ``output``, filled by ``fill`` in a temporary directory
    beside it and moved into place once complete."""
    _check_output(str(output), overwrite)
    output = os.path.abspath(output)
    parent = os.path.dirname(output)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(output)}.", suffix=".tmp", dir=parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # as os.makedirs would make it, not mkdtemp's 0700
    packer = None
    try:
        packer = _Packer(tmp)
        manifest = packer.close(fill(packer))
        with open(os.path.join(tmp, MANIFEST), "w") as file:
            json.dump(manifest, file, indent=1)
        _replace(tmp, output)
    finally:
        if packer is not None:
            packer.abort()
        if os.path.exists(tmp):
            shutil.rmtree(tmp)
    return manifest


def _check_output(output: str, overwrite: bool) -> None:
    if not os.path.exists(output):
        return
    if not overwrite:
        raise MttError(
            f"{output!r} already exists; choose another directory or pass --overwrite to replace it"
        )
    if not is_packed(output):
        raise MttError(
            f"{output!r} exists and is not a packed data set; --overwrite only replaces "
            "directories written by 'mtt data pack', so remove it yourself or choose another"
        )
    foreign = _foreign_files(output)
    if foreign:
        shown = ", ".join(repr(name) for name in foreign[:3])
        more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        raise MttError(
            f"{output!r} holds files 'mtt data pack' did not write ({shown}{more}), which "
            "--overwrite would delete with the directory; move them out, or choose another "
            "directory"
        )


_ARRAY_FILES = {MANIFEST} | {
    f"{name}.npy" for name in ("numbers", "positions", "cells", "pbc", "offsets")
}
_LABEL_FILE = re.compile(r"\d+(\.mask)?\.npy")


def _foreign_files(root: str) -> List[str]:
    """Files under the packed directory ``root`` that are not part of a pack's layout (a
    user's notes, or the very file being packed again), relative to ``root``."""
    foreign = []
    for directory, _, files in os.walk(root):
        relative = os.path.relpath(directory, root)
        for name in files:
            if relative == ".":
                ours = name in _ARRAY_FILES
            else:
                ours = relative == "labels" and _LABEL_FILE.fullmatch(name) is not None
            if not ours:
                foreign.append(os.path.normpath(os.path.join(relative, name)))
    return sorted(foreign)


def _replace(tmp: str, output: str) -> None:
    """Move the finished directory into place; an old packed directory goes only after."""
    if not os.path.exists(output):
        os.rename(tmp, output)
        return
    old = tmp + ".old"
    os.rename(output, old)
    os.rename(tmp, output)
    shutil.rmtree(old)


# how a message about a file ASE cannot read ends: ``mtt data pack``'s way to name the format
FORMAT_HINT = "set the format (--reader) if it is guessed wrong"


def stream_structures(
    path: str, reader: Optional[str] = None, format_hint: str = FORMAT_HINT
) -> Iterator[Tuple[int, ase.Atoms]]:
    """``(index, atoms)`` of each structure of a file, read one at a time and checked as
    :func:`mtt.data.reading.read_structures` checks them; ``format_hint`` ends the message
    about a file ASE cannot read (how the calling command sets the format)."""
    if not os.path.exists(path):
        raise MttError(
            f"file not found: {path!r}; check the path (relative paths start at the "
            "directory of the options file)"
        )
    if os.path.isdir(path):
        raise directory_error(path)
    count = 0
    for index, atoms in iter_structures(path, reader, format_hint):
        check_structure(atoms, f"structure {index} of {path!r}")
        count += 1
        yield index, atoms
    if count == 0:
        raise MttError(f"{path!r} holds no structures{read_as(path, reader)}")


# ------------------------------------------------------------------------------------ reading


@dataclass
class PackedArrays:
    """The memory-mapped arrays of a packed directory and its manifest."""

    path: str
    manifest: dict
    numbers: np.ndarray
    positions: np.ndarray
    cells: np.ndarray
    pbc: np.ndarray
    offsets: np.ndarray
    labels: Dict[Tuple[str, bool], Tuple[dict, np.ndarray, np.ndarray]]

    def keys(self, per_atom: bool) -> List[str]:
        return sorted(key for key, atom in self.labels if atom == per_atom)

    def atoms(self, i: int) -> ase.Atoms:
        start, stop = int(self.offsets[i]), int(self.offsets[i + 1])
        return ase.Atoms(
            numbers=np.array(self.numbers[start:stop]),
            positions=np.array(self.positions[start:stop]),
            cell=np.array(self.cells[i]),
            pbc=np.array(self.pbc[i]),
        )

    def value(self, name: Tuple[str, bool], i: int) -> Optional[np.ndarray]:
        """Label ``name`` of structure ``i`` (``None`` if that structure lacks it)."""
        _, values, mask = self.labels[name]
        if not mask[i]:
            return None
        if name[1]:
            return np.array(values[int(self.offsets[i]) : int(self.offsets[i + 1])])
        return np.array(values[i])


def open_arrays(path: str) -> PackedArrays:
    """Read the manifest of a packed directory and map its arrays, checking that they agree."""
    manifest = _manifest(path)
    arrays = {}
    for name, entry in manifest["arrays"].items():
        arrays[name] = _map(path, entry["file"], entry)
    labels = {}
    for entry in manifest["labels"]:
        rows = manifest["atoms"] if entry["per_atom"] else manifest["structures"]
        spec = {"dtype": "<f8", "shape": [rows] + list(entry["shape"])}
        mask = {"dtype": "|b1", "shape": [manifest["structures"]]}
        labels[(entry["key"], bool(entry["per_atom"]))] = (
            entry,
            _map(path, entry["file"], spec),
            _map(path, entry["mask"], mask),
        )
    _check_structures(path, manifest, arrays["offsets"], arrays["numbers"])
    return PackedArrays(path, manifest, labels=labels, **arrays)


def _check_structures(path: str, manifest: dict, offsets: np.ndarray, numbers: np.ndarray):
    """The arrays agree with each other and with the manifest (each structure's atoms in
    order, elements among the manifest's): an array edited or copied over from another pack
    would otherwise surface as an index error deep in training."""
    offsets = np.asarray(offsets)
    if offsets[0] != 0 or offsets[-1] != manifest["atoms"] or (np.diff(offsets) < 1).any():
        raise _damaged(path, "offsets.npy does not split the atoms into structures in order")
    known = np.asarray(manifest.get("atomic_types", []), dtype=np.int64)
    for start in range(0, len(numbers), 1 << 22):
        chunk = np.asarray(numbers[start : start + (1 << 22)])
        unknown = ~np.isin(chunk, known)
        if unknown.any():
            atom = start + int(np.argmax(unknown))
            raise _damaged(
                path,
                f"numbers.npy gives atom {atom} the atomic number {int(numbers[atom])}, "
                f"which the manifest's elements {known.tolist()} do not have",
            )


def _damaged(path: str, what: str) -> MttError:
    return MttError(
        f"{path!r} is a damaged packed data set ({what}); pack the files again with "
        f"'mtt data pack FILE... -o {path} --overwrite'"
    )


def _manifest(path: str) -> dict:
    file = os.path.join(path, MANIFEST)
    try:
        with open(file) as handle:
            manifest = json.load(handle)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise _damaged(path, f"{MANIFEST} cannot be read: {error}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise _damaged(path, f"{MANIFEST} is not the manifest of 'mtt data pack'")
    version = manifest.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise MttError(
            f"{path!r} was packed in format version {version!r}, but this mtt reads version "
            f"{VERSION} and older; upgrade mtt, or pack the files again with this one"
        )
    names = ("numbers", "positions", "cells", "pbc", "offsets")
    try:
        counts = (int(manifest["structures"]), int(manifest["atoms"]))
        arrays = manifest["arrays"]
        if not all(isinstance(arrays[name]["file"], str) for name in names):
            raise TypeError("arrays")
        for entry in manifest["labels"]:
            entry["key"], entry["per_atom"], entry["file"], entry["mask"], entry["shape"]
    except (KeyError, TypeError, ValueError) as error:
        raise _damaged(path, f"{MANIFEST} lacks {error}") from None
    expected = {
        "numbers": [counts[1]],
        "positions": [counts[1], 3],
        "cells": [counts[0], 3, 3],
        "pbc": [counts[0], 3],
        "offsets": [counts[0] + 1],
    }
    for name, shape in expected.items():
        if list(arrays[name].get("shape", [])) != shape:
            raise _damaged(path, f"{MANIFEST} gives {name} the shape {arrays[name].get('shape')}")
    return manifest


def _map(path: str, name: str, entry: dict) -> np.ndarray:
    file = os.path.join(path, name)
    try:
        # a plain array over the mapped file: indexing it is much faster than a np.memmap's
        array = np.asarray(np.load(file, mmap_mode="r"))
    except (OSError, ValueError) as error:
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise _damaged(path, f"{name}: {first}") from None
    if list(array.shape) != list(entry["shape"]) or array.dtype != np.dtype(entry["dtype"]):
        raise _damaged(
            path,
            f"{name} holds {array.dtype}{list(array.shape)}, the manifest says "
            f"{np.dtype(entry['dtype'])}{list(entry['shape'])}",
        )
    return array
