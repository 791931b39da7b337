"""Reading structures and their labels from any file ASE reads.

Labels are looked up under the key the user names, first in ``atoms.info`` / ``atoms.arrays``
and then in the results of an attached calculator (extxyz files store ``energy=`` and ``forces``
as calculator results). A frame that lacks a label is masked for that label; a key that no frame
has is an error that lists the keys the file does have.
"""

import os
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import ase
import ase.db
import ase.io
import numpy as np
from ase.io.formats import UnknownFileTypeError

from ..errors import MttError, did_you_mean


def read_structures(path: str, reader: Optional[str] = None) -> List[ase.Atoms]:
    """All frames of ``path``, with a clear error for a missing or unreadable file."""
    if not os.path.exists(path):
        name = os.path.basename(path)
        if _is_number(name):
            raise MttError(
                f"file not found: {path!r}; a fraction of the training set is a number: "
                f"write {name} without quotes"
            )
        if any(c in name for c in "*?["):
            raise MttError(
                f"file not found: {path!r}; file patterns are not expanded: combine the "
                "files with 'mtt data pack <files> -o data' and name the directory 'data'"
            )
        raise MttError(
            f"file not found: {path!r}; check the path (relative paths start at the "
            "directory of options.yaml)"
        )
    if os.path.isdir(path):
        raise directory_error(path)
    if reader == "ase":  # metatrain's name for "read with ASE, format from the file name"
        reader = None
    hint = "set 'reader' to an ASE format name if the format is guessed wrong"
    frames = [atoms for _, atoms in iter_structures(path, reader, hint)]
    if len(frames) == 0:
        raise MttError(f"{path!r} holds no structures{read_as(path, reader)}")
    return list(frames)


def iter_structures(
    path: str, reader: Optional[str], format_hint: str
) -> Iterator[Tuple[int, ase.Atoms]]:
    """``(index, atoms)`` of each frame of ``path``, one at a time, with one-line errors that
    name the structure ASE could not read (a bad line in frame 3 is not a wrong format);
    ``format_hint`` says how the calling command sets the format."""
    if reader == "ase":  # metatrain's name for "read with ASE, format from the file name"
        reader = None
    check_reader(reader)
    if os.path.getsize(path) == 0:
        raise MttError(f"{path!r} is empty: it holds no structures")
    frames = iread_frames(path, reader)
    index = 0
    while True:
        try:
            atoms = next(frames)
        except StopIteration:
            return
        except UnknownFileTypeError as error:  # its message is the bare extension
            raise MttError(
                f"{path!r} is not a structure file ASE can read (no format for {str(error)!r}: "
                f"a model or an options file?); give a structure file, or {format_hint}"
            ) from None
        except Exception as error:  # ASE raises many types for malformed files
            first = str(error).splitlines()[0] if str(error) else type(error).__name__
            if isinstance(error, KeyError):  # ASE's own word for an unknown element symbol
                first = f"unknown name {first} (not an element symbol?)"
            raise MttError(
                f"could not read structure {index} of {path!r}: {first}; fix that structure "
                f"in the file, or {format_hint}"
            ) from None
        yield index, atoms
        index += 1


def iread_frames(path: str, reader: Optional[str]) -> Iterator[ase.Atoms]:
    """The frames of ``path`` one at a time, as ``ase.io.iread`` gives them, except for an
    ASE database: ``ase.io`` drops its rows' key-value pairs and data, where labels are often
    kept (``db.write(atoms, dft_energy=..., data={"dft_forces": ...})``), so they are put in
    ``info`` (and per-atom data, ``[n_atoms, ...]`` arrays, in ``arrays``)."""
    if (reader or _guessed_format(path)) != "db":
        yield from ase.io.iread(path, index=":", format=reader)
        return
    for row in ase.db.connect(path).select():
        atoms = row.toatoms()
        atoms.info.update(row.key_value_pairs)
        for key, value in (row.data or {}).items():
            array = np.asarray(value)
            per_atom = array.ndim >= 2 and array.shape[0] == len(atoms)
            if per_atom and key not in atoms.arrays:
                atoms.arrays[key] = array
            else:
                atoms.info[key] = value
        yield atoms


def _guessed_format(path: str) -> Optional[str]:
    from ase.io.formats import filetype

    try:
        return filetype(path)
    except Exception:  # unknown or unreadable: ase.io reports it
        return None


def directory_error(path: str) -> MttError:
    """What to say about a directory given where structures are read (a packed one, with its
    manifest, is read before this is reached)."""
    if any(os.path.exists(os.path.join(path, name)) for name in ("numbers.npy", "labels")):
        return MttError(
            f"{path!r} looks like a packed data set without its manifest.json (damaged, or "
            "not finished); remove it and pack the files again with 'mtt data pack'"
        )
    return MttError(
        f"{path!r} is a directory but not one written by 'mtt data pack'; give a structure "
        "file (e.g. an .xyz file) or a packed directory"
    )


def check_reader(reader: Optional[str]) -> None:
    """A reader must be a format ASE knows (metatrain's library names are not)."""
    from ase.io.formats import ioformats

    if reader is None or reader in ioformats:
        return
    hint = did_you_mean(reader, ioformats)
    raise MttError(
        f"reader {reader!r} is not a format ASE reads; {hint}leave it out to guess the format "
        "from the file name, or give an ASE format name (extxyz, vasp-xml, lammps-data, ...)"
    )


def read_as(path: str, reader: Optional[str]) -> str:
    """What format an empty read used, for the message: a file read as another format than
    it holds (an extxyz named .data, read as LAMMPS data) often gives no structure at all."""
    if reader is not None:
        return f" when read as {reader!r}"
    try:
        from ase.io.formats import filetype

        guessed = filetype(path, guess=False)
    except Exception:
        return ""
    return (
        f" when read as {guessed!r} (guessed from the file); set 'reader' if it is another format"
    )


def check_structure(atoms: ase.Atoms, where: str) -> None:
    """Refuse structures the models cannot use: NaN/inf, unknown elements, bad cells."""
    if len(atoms) == 0:
        raise MttError(f"{where} has no atoms")
    if not np.all(np.isfinite(atoms.positions)):
        raise MttError(f"{where} has NaN or infinite positions; fix or remove that frame")
    if np.any(atoms.numbers <= 0) or np.any(atoms.numbers > 118):
        unknown = sorted({int(z) for z in atoms.numbers if not 0 < z <= 118})
        raise MttError(
            f"{where} has atoms with an unknown element (atomic number "
            f"{unknown}); fix the species column"
        )
    cell = np.asarray(atoms.cell[:])
    if not np.all(np.isfinite(cell)):
        raise MttError(f"{where} has a NaN or infinite cell")
    pbc = np.asarray(atoms.pbc, dtype=bool)
    for axis in np.nonzero(pbc)[0]:
        if np.linalg.norm(cell[axis]) < 1e-12:
            raise MttError(
                f"{where} is periodic along cell vector {axis} but that vector is "
                "zero; set the cell or make that direction non-periodic"
            )
    heights = periodic_heights(cell, pbc)
    if len(heights) and heights.min() < MIN_CELL_HEIGHT:
        axis = int(np.nonzero(pbc)[0][np.argmin(heights)])
        raise MttError(
            f"{where} has a flat periodic cell: cell vector {axis} is {heights.min():.3g} from "
            f"the span of the other periodic vectors (at least {MIN_CELL_HEIGHT} is needed); "
            "fix the cell or make a direction non-periodic"
        )


# A periodic cell thinner than this (in the data's length unit) puts atoms on top of their own
# images, and the neighbour search of a nearly flat cell runs for ever (or crashes, for
# parallel vectors)
MIN_CELL_HEIGHT = 0.1


def periodic_heights(cell: np.ndarray, pbc: np.ndarray) -> np.ndarray:
    """Distance of each periodic cell vector from the span of the other periodic ones (the
    spacing of the lattice planes along it)."""
    vectors = np.asarray(cell, dtype=np.float64)[np.asarray(pbc, dtype=bool)]

    def volume(rows: np.ndarray) -> float:
        return float(np.sqrt(max(np.linalg.det(rows @ rows.T), 0.0))) if len(rows) else 1.0

    total = volume(vectors)
    bases = [volume(np.delete(vectors, k, axis=0)) for k in range(len(vectors))]
    return np.array([total / base if base > 0 else 0.0 for base in bases])


def _calculator_results(atoms: ase.Atoms) -> Dict[str, object]:
    calc = atoms.calc
    results = getattr(calc, "results", None)
    return dict(results) if results else {}


def is_per_atom_result(key: str, value, n_atoms: int) -> bool:
    """Whether a calculator result holds one row per atom (ASE's own outputs say so; others
    by their shape)."""
    known = ase.outputs.all_outputs.get(key)
    if known is not None:
        return bool(getattr(known, "shapespec", ())[:1] == ("natoms",))
    shape = np.shape(value)
    return len(shape) >= 2 and shape[0] == n_atoms


def lookup(
    atoms: ase.Atoms,
    key: str,
    per_atom: bool,
    where: Optional[str] = None,
    option: Optional[str] = None,
) -> Optional[np.ndarray]:
    """The label ``key`` of one frame (``None`` if the frame lacks it). A value that is not
    numeric is ``None`` too, or, with ``where`` (the frame, for the message; ``option``: the
    options key that names ``key``), an error: a frame whose energy holds text (``phase=gas``)
    has a broken label, not none."""
    if per_atom and key in atoms.arrays:
        value = atoms.arrays[key]
        _refuse_two_values(atoms, key, value, "atoms.arrays", where)
    elif not per_atom and key in atoms.info:
        value = atoms.info[key]
        _refuse_two_values(atoms, key, value, "atoms.info", where)
    else:
        value = _calculator_results(atoms).get(key)
        if value is None:
            return None
    numbers = _as_numbers(value)
    if numbers is None and where is not None:
        shown = repr(value) if isinstance(value, str) else type(value).__name__
        fix = f"set '{option}.key' to a numeric key" if option else "use a numeric key"
        raise MttError(
            f"{key!r} of {where} holds {shown[:40]}, not numbers; labels must be numbers: fix "
            f"that structure, or {fix}"
        )
    return numbers


def _refuse_two_values(atoms: ase.Atoms, key: str, value, place: str, where: Optional[str]):
    """A label both in ``info``/``arrays`` and in the calculator's results, with another value
    (a stale ``atoms.info["energy"]`` next to a calculator that computed anew): which one is
    right cannot be guessed, and the first was taken without a word."""
    other = _calculator_results(atoms).get(key)
    if where is None or other is None:
        return
    mine, theirs = _as_numbers(value), _as_numbers(other)
    if mine is None or theirs is None or mine.shape != theirs.shape:
        return
    if not np.allclose(mine, theirs, rtol=1e-8, atol=1e-10):
        raise MttError(
            f"{key!r} of {where} is in {place} and in its calculator's results, with different "
            "values; remove the stale one (del atoms.info[...], or atoms.calc = None)"
        )


def missing_target_error(
    path: str, key: str, per_atom: bool, where: str, keys: List[str], elsewhere: bool
) -> MttError:
    """No structure of ``path`` has a generic target's ``key`` where ``per_atom`` says;
    ``elsewhere``: it is in the other place, so the fix is ``per_atom``, not the key."""
    place = "atoms.arrays" if per_atom else "atoms.info"
    if elsewhere:
        other = "atoms.info, per structure" if per_atom else "atoms.arrays, per atom"
        return MttError(
            f"no structure of {path!r} has {key!r} in {place}, but it is in {other}: set "
            f"'{where}.per_atom: {str(not per_atom).lower()}'"
        )
    return MttError(
        f"no structure of {path!r} has {key!r} in {place}; keys found: {keys}; set "
        f"'{where}.key' (and 'per_atom' if the labels are per atom)"
    )


def misplaced(frames: Sequence[ase.Atoms], key: str, per_atom: bool) -> str:
    """``'; ...'`` when ``key`` is in the other place of the first frames (per structure in
    ``atoms.info`` where per-atom values were expected, or the reverse), else ''."""
    for atoms in frames[:20]:
        if per_atom and key in atoms.info:
            return (
                f"; {key!r} is in atoms.info, one value per structure, but these labels are "
                "per atom (atoms.arrays, a row per atom)"
            )
        if not per_atom and key in atoms.arrays:
            return (
                f"; {key!r} is in atoms.arrays, a value per atom, but these labels are per "
                "structure (atoms.info)"
            )
    return ""


def available_keys(frames: Sequence[ase.Atoms], per_atom: bool) -> List[str]:
    """Numeric keys present in the first frames, to help a user fix a wrong key."""
    keys = set()
    for atoms in frames[:20]:
        if per_atom:
            keys.update(
                k
                for k, v in atoms.arrays.items()
                if k not in ("numbers", "positions") and _is_numeric(v)
            )
        else:
            keys.update(k for k, v in atoms.info.items() if _is_numeric(v))
        keys.update(k for k, v in _calculator_results(atoms).items() if _is_numeric(v))
    return sorted(keys)


def gradient_like_keys(frames: Sequence[ase.Atoms], key: str, per_atom: bool) -> List[str]:
    """Keys other than ``key`` in the first frames whose name and size look like forces
    (per atom, ``force`` in the name or a short name such as ``F``, 3 numbers per atom) or,
    not ``per_atom``, like a stress or virial (``stress`` or ``virial`` in the name, 6 or 9
    numbers)."""
    names = ("force",) if per_atom else ("stress", "virial")
    short = ("f", "frc", "fxyz", "forc") if per_atom else ()
    found = set()
    for atoms in frames[:20]:
        values = dict(_calculator_results(atoms))
        values.update(atoms.arrays if per_atom else atoms.info)
        sizes = (3 * len(atoms),) if per_atom else (6, 9)
        for name, value in values.items():
            lower = str(name).lower()
            if name == key or not (any(n in lower for n in names) or lower in short):
                continue
            numbers = _as_numbers(value)
            if numbers is not None and numbers.size in sizes:
                found.add(str(name))
    return sorted(found)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _as_numbers(value) -> Optional[np.ndarray]:
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):  # text, ragged lists, mappings: not a label
        return None


def _is_numeric(value) -> bool:
    return _as_numbers(value) is not None
