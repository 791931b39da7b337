"""Checkpoints: versioned, written atomically, loaded without unpickling arbitrary objects.

A checkpoint is a dict of plain Python values and tensors saved with ``torch.save`` and read
with ``torch.load(weights_only=True)``, which refuses any other object (a crafted file cannot
run code). Model and trainer parts carry their own versions; older ones are upgraded one version
at a time by the steps in the architecture's ``checkpoints.py``; newer ones are refused with a
message to upgrade mtt.
"""

import importlib
import os
import pickle
from typing import Any, Callable, Dict

import torch

from .errors import MttError
from .io import atomic_path

FORMAT = "mtt-checkpoint"


def save_checkpoint(checkpoint: Dict[str, Any], path: str) -> None:
    checkpoint = dict(checkpoint, format=FORMAT)
    with atomic_path(path) as tmp:
        torch.save(checkpoint, tmp)


def read_checkpoint(path: str) -> Dict[str, Any]:
    """Load a checkpoint safely; any problem is a one-line error naming the file."""
    if not os.path.isfile(path):
        raise MttError(f"checkpoint not found: {path!r}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        first = str(error).splitlines()[0][:200]
        raise MttError(
            f"refusing to load {path!r}: it holds objects a checkpoint must not contain "
            f"({first}); only load checkpoints written by mtt from a source you trust"
        ) from None
    except Exception as error:
        raise MttError(
            f"{path!r} is not a readable mtt checkpoint ({type(error).__name__}: "
            f"{str(error).splitlines()[0][:200] if str(error) else ''})"
        ) from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        raise MttError(
            f"{path!r} is not an mtt checkpoint (a .ckpt written by 'mtt train'); an exported "
            "model.pt cannot be used as a checkpoint"
        )
    return checkpoint


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
