"""mtt: train, fine-tune and deploy machine-learning models of atoms.

``mtt.train(options, training_set=...)`` and ``mtt.export(checkpoint, output)`` do what the
command line does. Nothing is imported eagerly: ``import mtt`` is cheap and has no side effects.
"""

from typing import Any, Dict, Optional, Sequence, Union

from .version import __version__


def train(
    options: Union[str, Dict[str, Any]],
    training_set: Optional[Sequence] = None,
    output: str = "model.pt",
    output_dir: str = "outputs",
    restart: Optional[str] = None,
    overrides: Sequence[str] = (),
    force: bool = False,
    dry_run: bool = False,
) -> Optional[str]:
    """Train a model as ``mtt train`` does and return the exported model's path (``None``
    with ``dry_run``, which checks everything and reports without training).

    ``options``: an options file or the same content as a dict; ``training_set``: any
    sequence of ``ase.Atoms`` with labels, replacing the file the options name; ``restart``:
    a checkpoint or ``"auto"``; ``overrides``: ``"key.path=value"`` strings, as ``-r``.
    Progress is printed unless logging is configured. Details: :func:`mtt.api.train`.
    """
    from .api import train as _train

    return _train(options, training_set, output, output_dir, restart, overrides, force, dry_run)


def export(
    checkpoint_path: str,
    output: str = "model.pt",
    force: bool = False,
    metadata=None,
    dtype: Optional[str] = None,
    second_derivatives: bool = False,
) -> str:
    """Export the best model of a checkpoint as ``mtt export`` does; return ``output``.
    ``dtype``: ``"float32"`` or ``"float64"`` to change precision; ``metadata``: a metatomic
    ``ModelMetadata``. Details: :func:`mtt.api.export`."""
    from .api import export as _export

    return _export(checkpoint_path, output, force, metadata, dtype, second_derivatives)


__all__ = ["__version__", "train", "export"]
