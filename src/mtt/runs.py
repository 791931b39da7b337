"""Run directories: one per invocation, and finding the newest complete checkpoint."""

import datetime
import glob
import logging
import os
import re
from typing import Optional

from .checkpoints import read_checkpoint
from .errors import MttError

LOGGER = logging.getLogger("mtt")


#: output directories that :func:`new_run_dir` created (a refused run removes its run
#: directory, and such a directory too when nothing else is in it)
CREATED_ROOTS = set()


def new_run_dir(root: str) -> str:
    """Make ``root/<date>_<time>``, with a suffix (``-2``, ``-3``, ...) for runs that start in
    the same second. Each run claims its directory by making it, which fails on a name that
    another run took first; checking for the name and then making it let two runs starting
    together take the same one."""
    if os.path.exists(root):
        CREATED_ROOTS.discard(os.path.abspath(root))
    else:
        CREATED_ROOTS.add(os.path.abspath(root))
    stamp = datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    path = os.path.join(root, stamp)
    try:
        os.makedirs(root, exist_ok=True)
        suffix = 1
        while not _claimed(path):
            suffix += 1
            path = os.path.join(root, f"{stamp}-{suffix}")
    except OSError as error:  # a file in the way, no permission, a read-only file system...
        raise MttError(
            f"cannot make the run directory {path!r} ({error.strerror or error}); give "
            "--output-dir a directory you can write, or a new one"
        ) from None
    return path


def _claimed(path: str) -> bool:
    """Whether this process made the directory ``path`` (False: it exists already)."""
    try:
        os.mkdir(path)
    except FileExistsError:
        return False
    return True


def checkpoint_epoch(path: str) -> int:
    """The epoch of a training checkpoint ``epoch_<N>.ckpt`` (-1 for any other file name)."""
    match = re.fullmatch(r"epoch_(\d+)\.ckpt", os.path.basename(path))
    return int(match.group(1)) if match else -1


def find_auto_restart(root: str) -> Optional[str]:
    """The newest complete training checkpoint under ``root``: the latest run directory (by its
    timestamped name) that has one, and in it the highest epoch that loads. Files are written
    atomically, but a file copied or damaged by hand is skipped rather than trusted."""
    runs = sorted(glob.glob(os.path.join(root, "*", "checkpoints")), reverse=True)
    for checkpoints in runs:
        candidates = sorted(
            glob.glob(os.path.join(checkpoints, "epoch_*.ckpt")), key=checkpoint_epoch, reverse=True
        )
        for path in candidates:
            if checkpoint_epoch(path) < 0:
                continue
            try:
                read_checkpoint(path)
            except MttError as error:
                LOGGER.warning("skipping %s: %s", path, error)
                continue
            return path
    return None
