"""mtt: train, fine-tune and deploy machine-learning models of atoms.

``mtt.train(options, training_set=...)`` and ``mtt.export(checkpoint, output)`` do what the
command line does. Nothing is imported eagerly: ``import mtt`` is cheap and has no side effects.
"""

from .version import __version__


def train(*args, **kwargs):
    """See :func:`mtt.api.train`."""
    from .api import train as _train

    return _train(*args, **kwargs)


def export(*args, **kwargs):
    """See :func:`mtt.api.export`."""
    from .api import export as _export

    return _export(*args, **kwargs)


__all__ = ["__version__", "train", "export"]
