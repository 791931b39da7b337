"""Files written so that no crash leaves a half-written one behind."""

import errno
import os
import tempfile
import zipfile
import zlib
from contextlib import contextmanager
from typing import Callable, Iterator, Optional, Sequence

from .errors import MttError


@contextmanager
def atomic_path(path: str, suffix: str = ".tmp", replace: bool = True) -> Iterator[str]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one step.

    The temporary file lives in the same directory so that ``os.replace`` is atomic; it is
    flushed to disk first, so a power loss leaves either the old or the new file, never a mix.
    With ``replace=False`` a file that appeared at ``path`` meanwhile (another run writing
    the same output, long after the check before training) is kept: ``FileExistsError``.
    A full, over-quota or read-only file system is an :class:`MttError` naming ``path``, and
    the temporary file is removed.
    """
    # (as the directory of the temporary file is: './missing/../x.pt' is './x.pt' here,
    # where the system would look for 'missing')
    path = os.path.normpath(path)
    directory = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        os.makedirs(directory, exist_ok=True)
        handle, tmp = tempfile.mkstemp(
            prefix=f".{os.path.basename(path)}.", suffix=suffix, dir=directory
        )
        os.close(handle)
        yield tmp
        _publish(tmp, path, replace)
    except OSError as error:
        unwritable = unwritable_error(error, path)
        if unwritable is None:
            raise
        raise unwritable from error
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)


def _publish(tmp: str, path: str, replace: bool) -> None:
    """Move the finished ``tmp`` to ``path``, flushed to disk first."""
    with open(tmp, "rb") as file:
        os.fsync(file.fileno())
    # mkstemp makes the file private (0600); give it the permissions of any file the
    # user creates, so that models and checkpoints can be shared with a group
    os.chmod(tmp, 0o666 & ~_umask())
    if replace:
        os.replace(tmp, path)
    else:
        _move_if_absent(tmp, path)


def unwritable_error(error: OSError, path: str) -> Optional[MttError]:
    """The one-line error for a file system that cannot take ``path`` (full, over its quota,
    read-only); None for any other ``error``, which is not the user's to fix this way."""
    if error.errno == errno.ENOSPC:
        return MttError(
            f"no space left on the device writing {path!r}; free some space there (or write "
            "somewhere else), then run the command again"
        )
    if error.errno == errno.EDQUOT:
        return MttError(
            f"disk quota exceeded writing {path!r}; free some space under your quota (or "
            "write somewhere else), then run the command again"
        )
    if error.errno == errno.EROFS:
        directory = os.path.dirname(os.path.abspath(path))
        return MttError(
            f"cannot write {path!r}: {directory!r} is on a read-only file system; write to "
            "another directory"
        )
    return None


def saved_in_memory(save: Callable[[str], None]) -> Optional[bytes]:
    """What ``save(path)`` writes, kept in memory; None where the system has no in-memory
    file with a path (Linux has: ``memfd_create``, named under ``/proc/self/fd``).

    For writers that take only a path (metatomic's ``AtomisticModel.save``, which calls
    ``str()`` on a buffer): torch writes such files in C++, and a disk filling up there
    aborts the whole process (exit 134, half a file left). Written by Python afterwards, the
    same full disk is an ``OSError``, which :func:`atomic_path` reports.
    """
    if not hasattr(os, "memfd_create"):
        return None
    descriptor = os.memfd_create("mtt-save")
    try:
        name = f"/proc/self/fd/{descriptor}"
        if not os.path.exists(name):  # (no /proc mounted)
            return None
        save(name)
        with open(name, "rb") as file:
            return file.read()
    finally:
        os.close(descriptor)


def _move_if_absent(tmp: str, path: str) -> None:
    """``tmp`` -> ``path`` unless ``path`` exists, decided in one step by the file system (a
    hard link fails on an existing name, where checking first and replacing would race)."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError:  # no hard links on this file system: check, then move
        if os.path.lexists(path):
            raise FileExistsError(path) from None
        os.replace(tmp, path)
        return
    os.remove(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def refuse_overwrite(
    path: str, force: bool, flag: str = "--force (force=True in Python)", inputs: Sequence[str] = ()
) -> None:
    """Never overwrite what a user made without being asked, nor ever the file a command
    reads (``inputs``); a directory is never replaced. Checked before any work (not after
    training, when the file would be moved there), as is that the file can be written."""
    if not path.strip():
        raise MttError("the output path is empty; give the path of a file to write (-o)")
    path = os.path.normpath(path) if not path.endswith(("/", os.sep)) else path
    if os.path.isdir(path) or path.endswith(("/", os.sep)):
        raise MttError(f"{path!r} is a directory; give the path of a file to write")
    if os.path.exists(path):
        if not os.path.isfile(path):  # the output replaces it: /dev/null would be a file
            raise MttError(
                f"{path!r} is not a regular file (a device, pipe or socket) and would be "
                "replaced by one; give the path of a file to write"
            )
        refuse_input_as_output(path, inputs)
        if not force:
            raise MttError(
                f"{path!r} already exists; choose another output path or pass {flag} to "
                "overwrite it"
            )
    _check_writable(path)


def refuse_input_as_output(path: str, inputs: Sequence[str]) -> None:
    """The output of a command is never a file it reads, nor inside a directory it reads (a
    packed data set), even with ``--force``."""
    for source in inputs:
        if os.path.exists(path) and os.path.exists(source) and os.path.samefile(path, source):
            raise MttError(
                f"{path!r} is the file this command reads; write the output to another path"
            )
        if os.path.isdir(source):
            inside = os.path.realpath(os.path.dirname(os.path.abspath(path)))
            top = os.path.realpath(source)
            if os.path.commonpath([inside, top]) == top:
                raise MttError(
                    f"{path!r} is inside {source!r}, which this command reads; write the "
                    "output outside it"
                )


def _check_writable(path: str) -> None:
    """A file can be created beside ``path`` (in its directory, or in the nearest existing
    one above it, where the missing directories would be made)."""
    directory = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(directory):
        directory = os.path.dirname(directory)
    if not os.path.isdir(directory):
        raise MttError(f"cannot write {path!r}: {directory!r} is a file, not a directory")
    _refuse_long_names(path, directory)
    try:
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as error:
        raise MttError(
            f"cannot write {path!r}: {error.strerror or error} in {directory!r}"
        ) from None


def _refuse_long_names(path: str, directory: str) -> None:
    """Names and paths longer than the file system takes (checked before a run, which
    otherwise failed at its end, after making the directories of the shorter parts)."""
    longest_name = os.pathconf(directory, "PC_NAME_MAX")
    longest_path = os.pathconf(directory, "PC_PATH_MAX")
    full = os.path.abspath(path)
    shown = repr(path) if len(path) <= 80 else f"{path[:40]!r}..."
    for part in full.split(os.sep):
        if len(os.fsencode(part)) > longest_name:
            raise MttError(
                f"cannot write {shown}: a name in it is {len(os.fsencode(part))} bytes long, "
                f"longer than the {longest_name} a file name may have here; shorten it"
            )
    if len(os.fsencode(full)) >= longest_path:
        raise MttError(
            f"cannot write {shown}: the path is longer than the {longest_path} bytes a path "
            "may have here; shorten it"
        )


def is_truncated_archive(path: str) -> bool:
    """Whether ``path`` starts like torch's zip archives (checkpoints, exported models) but
    lacks the directory at its end: an unfinished copy or download."""
    with open(path, "rb") as file:
        start = file.read(4)
    return start == b"PK\x03\x04" and not zipfile.is_zipfile(path)


def refuse_damaged(path: str, fix: str) -> None:
    """A one-line error naming the damaged part of the archive ``path``, and ``fix``."""
    member = damaged_member(path)
    if member is not None:
        raise MttError(
            f"{path!r} is damaged: the bytes of {member!r} in it do not match their checksum "
            f"(a disk or copy error); {fix}"
        )


def damaged_member(path: str) -> Optional[str]:
    """The first file inside the zip archive ``path`` whose bytes do not match the checksum
    stored with them (damage on a disk or in a copy, which torch loads without a word), or
    None when all match or ``path`` is not a complete zip archive."""
    if not zipfile.is_zipfile(path):
        return None
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            try:
                with archive.open(info) as member:
                    while member.read(1 << 24):
                        pass
            except (zipfile.BadZipFile, zlib.error, EOFError):
                return info.filename
    return None
