"""Architectures: one folder each, found by name (``architecture: {name: <folder>}``).

Each folder's ``__init__.py`` exports ``__model__`` (a :class:`mtt.abc.ModelInterface`) and
``__trainer__`` (a :class:`mtt.abc.TrainerInterface`). Nothing lists them elsewhere: discovery,
documentation and the test matrix all derive from the folders.
"""

import importlib
import pkgutil
from types import ModuleType
from typing import List

from mtt.errors import MttError, did_you_mean


def names() -> List[str]:
    """Names of every architecture shipped in this package."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if m.ispkg)


def load(name: str) -> ModuleType:
    """The architecture package called ``name``, with a helpful error if there is none."""
    known = names()
    if name not in known:
        hint = did_you_mean(name, known)
        raise MttError(
            f"unknown architecture {name!r} in 'architecture.name'; {hint}"
            f"available: {', '.join(known)}"
        )
    module = importlib.import_module(f"{__name__}.{name}")
    module.__model__.__architecture__ = name
    return module
