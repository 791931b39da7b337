"""Files written so that no crash leaves a half-written one behind."""

import os
import tempfile
from contextlib import contextmanager
from typing import Iterator

from .errors import MttError


@contextmanager
def atomic_path(path: str, suffix: str = ".tmp") -> Iterator[str]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one step.

    The temporary file lives in the same directory so that ``os.replace`` is atomic; it is
    flushed to disk first, so a power loss leaves either the old or the new file, never a mix.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    handle, tmp = tempfile.mkstemp(
        prefix=f".{os.path.basename(path)}.", suffix=suffix, dir=directory
    )
    os.close(handle)
    try:
        yield tmp
        with open(tmp, "rb") as file:
            os.fsync(file.fileno())
        # mkstemp makes the file private (0600); give it the permissions of any file the
        # user creates, so that models and checkpoints can be shared with a group
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def refuse_overwrite(path: str, force: bool, flag: str = "--force") -> None:
    """Never overwrite what a user made without being asked; a directory is never replaced
    (refused before any work, not after training, when the file would be moved there)."""
    if os.path.isdir(path):
        raise MttError(f"{path!r} is a directory; give the path of a file to write")
    if os.path.exists(path) and not force:
        raise MttError(
            f"{path!r} already exists; choose another output path or pass {flag} to overwrite it"
        )
