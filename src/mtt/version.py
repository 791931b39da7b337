"""The installed version of mtt (stored in checkpoints and exported models)."""

import importlib.metadata

try:
    __version__ = importlib.metadata.version("mtt")
except importlib.metadata.PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0+unknown"
