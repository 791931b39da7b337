"""Run directories: one per invocation, and finding the newest complete checkpoint."""

import datetime
import glob
import logging
import os
import re
from typing import Optional, Tuple

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
    """The newest complete training checkpoint of the newest run under ``root``: the highest
    epoch that loads (None when that run has none). Files are written atomically, but a file
    copied or damaged by hand is skipped rather than trusted.

    Run directories are ordered by the time in their names (``YYYY-MM-DD_HH-MM-SS``, and
    ``-N`` for the N-th run of that second, compared as a number: ``-10`` after ``-9``).
    Directories named otherwise (a run renamed to keep it, ``archived_pet_run``) come only
    after all of those, the one with the most recently written checkpoint first: ``--restart
    auto`` continues the run that mtt started last, not a folder the user put aside.
    """
    runs = [os.path.dirname(p) for p in glob.glob(os.path.join(root, "*", "train.log"))]
    runs += [os.path.dirname(c) for c in glob.glob(os.path.join(root, "*", "checkpoints"))]
    if not runs:
        return None
    # only the newest run: one stopped before its first checkpoint starts afresh (an older
    # run continued in its place would train on with these options, in a new directory)
    newest = max(set(runs), key=_run_order)
    candidates = sorted(
        glob.glob(os.path.join(newest, "checkpoints", "epoch_*.ckpt")),
        key=checkpoint_epoch,
        reverse=True,
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
    LOGGER.info("the newest run, %s, has no checkpoint to continue from", newest)
    return None


#: the name new_run_dir gives a run directory: its start time, and -N for the N-th that second
RUN_NAME = re.compile(r"(\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2})(?:-(\d+))?")


def _run_order(run: str) -> Tuple[bool, str, int, float]:
    """Sorts run directories from the last to the first that ``--restart auto`` continues:
    those of other names (by their newest checkpoint's modification time), then those named
    by mtt, by the time in their names."""
    match = RUN_NAME.fullmatch(os.path.basename(run))
    if match is not None:
        return (True, match.group(1), int(match.group(2) or 1), 0.0)
    checkpoints = glob.glob(os.path.join(run, "checkpoints", "epoch_*.ckpt"))
    return (False, "", 0, max((os.path.getmtime(c) for c in checkpoints), default=0.0))
