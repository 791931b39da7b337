"""Checkpoints: versioned, written atomically, loaded without unpickling arbitrary objects.

A checkpoint is a dict of plain Python values and tensors saved with ``torch.save`` and read
with ``torch.load(weights_only=True)``, which refuses any other object (a crafted file cannot
run code). Model and trainer parts carry their own versions; older ones are upgraded one version
at a time by the steps in the architecture's ``checkpoints.py``; newer ones are refused with a
message to upgrade mtt.
"""

import importlib
import io
import os
import pickle
import re
import warnings
import zipfile
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, Optional

import torch

from .errors import MttError, OptionsError
from .io import atomic_path, is_truncated_archive, refuse_damaged

FORMAT = "mtt-checkpoint"


def save_checkpoint(checkpoint: Dict[str, Any], path: str) -> None:
    checkpoint = dict(checkpoint, format=FORMAT)
    # serialised in memory, written by Python: torch's own file writer reports a full disk
    # as "unexpected pos", where Python's is an OSError that atomic_path names the file for
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    with atomic_path(path) as tmp, open(tmp, "wb") as file:
        file.write(buffer.getbuffer())


def read_checkpoint(path: str) -> Dict[str, Any]:
    """Load a checkpoint safely; any problem is a one-line error naming the file."""
    if os.path.isdir(path):
        inside = os.path.join(path, "model.ckpt")
        example = repr(inside) if os.path.isfile(inside) else "outputs/<run>/model.ckpt"
        raise MttError(
            f"{path!r} is a directory; give the .ckpt file written by 'mtt train' in it "
            f"(e.g. {example})"
        )
    if not os.path.isfile(path):
        raise MttError(
            f"checkpoint not found: {path!r}; give the .ckpt file written by "
            "'mtt train' (outputs/<run>/model.ckpt)"
        )
    if _is_exported_model(path):
        raise MttError(
            f"{path!r} is an exported model, not a checkpoint; give the .ckpt file "
            "written by 'mtt train' (outputs/<run>/model.ckpt)"
        )
    if os.path.getsize(path) == 0:
        raise MttError(
            f"{path!r} is empty (an unfinished copy?); give a .ckpt file written by 'mtt train'"
        )
    if not _written_by_torch(path):
        raise MttError(
            f"{path!r} is not a checkpoint (not a file written by torch: a text or other "
            "file?); give a .ckpt file written by 'mtt train'"
        )
    refuse_damaged(
        path,
        "copy it again, or use another checkpoint such as an earlier "
        "outputs/<run>/checkpoints/epoch_<n>.ckpt",
    )
    try:
        with warnings.catch_warnings():  # e.g. on pickle protocols: the error below says it all
            warnings.simplefilter("ignore")
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        architecture = _metatrain_architecture(path)
        if architecture is not None:
            raise MttError(
                f"{path!r} is a checkpoint of metatrain ({architecture}), which mtt does not "
                "read; evaluate metatrain's exported model with 'mtt eval', or train with mtt "
                "from the options.yaml you gave metatrain (its expanded options_restart.yaml "
                "holds metatrain-only sections)"
            ) from None
        reason = _unpickling_reason(error)
        what = "it asks to load Python objects" if "GLOBAL" in reason else "it is not a checkpoint"
        raise MttError(
            f"refusing to load {path!r}: {what} ({reason}); mtt reads only tensors and plain "
            "values, so nothing in it was run; only load checkpoints written by 'mtt train'"
        ) from None
    except Exception as error:
        if is_truncated_archive(path):
            raise MttError(
                f"{path!r} is truncated or damaged (a checkpoint archive without its end, e.g. "
                "an unfinished copy); copy it again, or use another checkpoint such as an "
                "earlier outputs/<run>/checkpoints/epoch_<n>.ckpt"
            ) from None
        first = str(error).splitlines()[0][:200] if str(error).strip() else "empty or truncated"
        raise MttError(
            f"{path!r} is not a readable mtt checkpoint ({type(error).__name__}: {first}); give "
            "a .ckpt file written by 'mtt train'"
        ) from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        raise MttError(
            f"{path!r} is not an mtt checkpoint; give a .ckpt file written by 'mtt train' "
            "(outputs/<run>/model.ckpt)"
        )
    return checkpoint


def _is_exported_model(path: str) -> bool:
    """Whether ``path`` is a TorchScript archive (an exported ``.pt``), which torch refuses to
    load safely with a message that suggests the unsafe way."""
    try:
        if not zipfile.is_zipfile(path):
            return False
        with zipfile.ZipFile(path) as archive:
            return any(name.split("/")[-1] == "constants.pkl" for name in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def _written_by_torch(path: str) -> bool:
    """Whether ``path`` starts as torch's files do: a zip archive (also a truncated one) or,
    in torch's legacy format and plain pickles, a pickle's protocol opcode."""
    with open(path, "rb") as file:
        start = file.read(4)
    return start[:4] == b"PK\x03\x04" or start[:1] == b"\x80"


def _unpickling_reason(error: Exception) -> str:
    """torch's reason for refusing a file, without its advice to load it unsafely instead."""
    boilerplate = ("Weights only load failed", "Please file an issue", "Check the documentation")
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    useful = [
        line.split(". Please use", 1)[0]  # the advice to allow the object
        for line in lines
        if not line.startswith(boilerplate) and not re.match(r"\(\d\)", line)
    ]
    return (useful[0] if useful else type(error).__name__)[:200]


def _metatrain_architecture(path: str) -> Optional[str]:
    """The architecture named in a metatrain checkpoint (read from the pickle's bytes, without
    unpickling it), or None for any other file."""
    try:
        with zipfile.ZipFile(path) as archive:
            name = next(n for n in archive.namelist() if n.endswith("/data.pkl"))
            head = archive.open(name).read(4096)
    except (zipfile.BadZipFile, StopIteration, OSError):
        return None
    # the key, a memo opcode, then the value as BINUNICODE: "X", 4-byte length, UTF-8
    match = re.search(rb"architecture_name.{0,6}?X(.{4})", head, re.DOTALL)
    if b"model_ckpt_version" not in head or match is None:
        return None
    length = int.from_bytes(match.group(1), "little")
    return head[match.end() : match.end() + min(length, 64)].decode("utf-8", "replace")


@contextmanager
def naming_file(path: str) -> Iterator[None]:
    """Errors in the contents of the checkpoint read from ``path`` (a version newer than this
    mtt reads, a missing part), raised where only its dict is known, name the file."""
    try:
        yield
    except OptionsError as error:
        raise OptionsError([_named(problem, path) for problem in error.problems]) from error
    except MttError as error:
        raise MttError(_named(str(error), path)) from error


def _named(message: str, path: str) -> str:
    return message if repr(path) in message else f"{path!r}: {message}"


def upgrade_model_checkpoint(model_class, checkpoint: Dict[str, Any]) -> Dict[str, Any]:
    return _upgrade(model_class, checkpoint, "model_checkpoint_version", "model")


def upgrade_trainer_checkpoint(trainer_class, checkpoint: Dict[str, Any]) -> Dict[str, Any]:
    return _upgrade(trainer_class, checkpoint, "trainer_checkpoint_version", "trainer")


def _upgrade(cls, checkpoint: Dict[str, Any], key: str, part: str) -> Dict[str, Any]:
    current = cls.__checkpoint_version__
    version = checkpoint.get(key)
    if not isinstance(version, int):
        raise MttError(f"checkpoint has no valid {key}; it was not written by mtt")
    if version > current:
        raise MttError(
            f"this checkpoint's {part} part has version {version}, newer than the {current} "
            "this mtt reads; upgrade mtt (pip install --upgrade mtt) to load it"
        )
    steps = _upgrade_steps(cls, part)
    while version < current:
        step = steps.get(version)
        if step is None:
            raise MttError(f"no upgrade from {part} checkpoint version {version}; it is too old")
        checkpoint = step(dict(checkpoint))
        version += 1
        checkpoint[key] = version
    return checkpoint


def _upgrade_steps(cls, part: str) -> Dict[int, Callable[[dict], dict]]:
    """``{v: step}`` upgrading version v to v + 1, from the architecture's checkpoints.py."""
    package = cls.__module__.rsplit(".", 1)[0]
    try:
        module = importlib.import_module(f"{package}.checkpoints")
    except ModuleNotFoundError:
        return {}
    return getattr(module, f"{part.upper()}_UPGRADES", {})
