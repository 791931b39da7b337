"""One process at a time in a run directory.

``--restart auto`` continues the newest interrupted run in its own directory. A second job
started while the first still trains (a duplicate submission, a requeue that came early)
would continue the same run beside it, both writing the same log, checkpoints and model.
A run therefore holds ``<run>/.lock`` (``pid host``) while it trains; a lock whose process is
gone (killed, out of time) is taken over. A process on another host cannot be asked whether
it lives: its lock is taken over with a warning.
"""

import logging
import os
import socket
import time
from typing import Optional, Tuple

from .errors import MttError

LOGGER = logging.getLogger("mtt")

LOCK = ".lock"


def acquire(run_dir: str) -> str:
    """Take the lock of ``run_dir`` (refused while a live process on this host holds it);
    the path to give :func:`release`."""
    path = os.path.join(run_dir, LOCK)
    mine = f"{os.getpid()} {socket.gethostname()}"
    while True:
        try:
            handle = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            if _being_written(path):
                time.sleep(0.05)  # another process made it this instant: read it then
                continue
            _refuse_live_holder(path, run_dir)
            _remove(path)  # a dead holder's: try again to create it (another may be first)
            continue
        with os.fdopen(handle, "w") as file:
            file.write(mine)
        return path


def check(run_dir: str) -> None:
    """Refuse as :func:`acquire` would, taking nothing (a dry run)."""
    path = os.path.join(run_dir, LOCK)
    if os.path.exists(path):
        _refuse_live_holder(path, run_dir)


def _being_written(path: str) -> bool:
    """An empty lock younger than a second: its maker has not written its line yet."""
    try:
        return os.path.getsize(path) == 0 and time.time() - os.path.getmtime(path) < 1.0
    except OSError:
        return False


def release(path: str) -> None:
    if _holder(path) == (os.getpid(), socket.gethostname()):
        _remove(path)


def _refuse_live_holder(path: str, run_dir: str) -> None:
    holder = _holder(path)
    if holder is None:
        return  # unreadable or half-written: the writer died before finishing a line
    pid, host = holder
    if host != socket.gethostname():
        LOGGER.warning(
            "%s was locked by process %d on %s, which cannot be checked from here; taking it "
            "over (if that run still trains, stop one of the two)",
            run_dir,
            pid,
            host,
        )
        return
    if _alive(pid):
        raise MttError(
            f"{run_dir} is being trained by process {pid} on this machine; wait for it to "
            "finish or stop it before continuing the run (if no mtt runs as that process, "
            f"the lock is stale: remove {path})"
        )


def _holder(path: str) -> Optional[Tuple[int, str]]:
    try:
        with open(path) as file:
            pid, host = file.read().split(maxsplit=1)
        return int(pid), host.strip()
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # our own lock, left by an earlier run in this process (an API call)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    return _runs_python(pid)


def _runs_python(pid: int) -> bool:
    """Whether process ``pid`` is a Python (mtt) process: after a reboot or a long time, the
    number of a killed run's process may belong to any other program. True where the
    system does not say (no /proc)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as file:
            command = file.read()
    except OSError:
        return True
    return b"python" in command or b"mtt" in command


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
