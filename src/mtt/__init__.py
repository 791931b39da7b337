"""mtt: train, fine-tune and deploy machine-learning models of atoms.

``mtt.train(options, training_set=...)`` and ``mtt.export(checkpoint, output)`` do what the
command line does (:func:`mtt.api.train`, :func:`mtt.api.export`). ``import mtt`` is cheap and
has no side effects: they are imported when first used (PEP 562), torch with them.
"""

from .version import __version__

__all__ = ["__version__", "train", "export"]


def __getattr__(name: str):
    if name in ("train", "export"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'mtt' has no attribute {name!r}")
