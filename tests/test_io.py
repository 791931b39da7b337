"""Files mtt writes atomically still get the permissions of any file the user creates, and a
file system that cannot take them is named in one line."""

import errno
import os
import stat

import pytest
import torch
from helpers import fill_disk

from mtt import checkpoints
from mtt.errors import MttError
from mtt.io import atomic_path


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_atomic_files_follow_the_umask(tmp_path, umask):
    """A model written for a group to share is readable by the group (umask 022), and private
    when the user asks for privacy (umask 077); mkstemp alone would always make it 0600."""
    old = os.umask(umask)
    try:
        target = tmp_path / "model.pt"
        with atomic_path(str(target), suffix=".pt") as tmp:
            with open(tmp, "w") as file:
                file.write("data")
    finally:
        os.umask(old)
    assert target.read_text() == "data"
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]  # no temporary left over


@pytest.mark.parametrize(
    "code, expected",
    [
        (errno.ENOSPC, "no space left on the device writing {path!r}; free some space"),
        (errno.EDQUOT, "disk quota exceeded writing {path!r}; free some space"),
        (errno.EROFS, "cannot write {path!r}: {dir!r} is on a read-only file system; write"),
    ],
)
def test_a_file_system_that_cannot_take_the_file_is_named_and_leaves_no_temporary(
    tmp_path, code, expected
):
    """A full disk, a quota or a read-only mount is the user's to fix: one line naming the
    file, not an internal error; and no hidden half-written temporary file stays behind."""
    target = str(tmp_path / "model.ckpt")
    with pytest.raises(MttError) as error:
        with atomic_path(target) as tmp:
            with open(tmp, "w") as file:
                file.write("half")
            raise OSError(code, os.strerror(code))
    assert str(error.value).startswith(expected.format(path=target, dir=str(tmp_path)))
    assert list(tmp_path.iterdir()) == []


def test_a_checkpoint_is_written_by_python_so_that_a_full_disk_is_named(tmp_path, monkeypatch):
    """torch's own file writer reports a full disk as 'unexpected pos' (an internal error);
    serialised in memory and written by Python, the same disk is a one-line error."""
    fill_disk(monkeypatch, checkpoints)
    target = str(tmp_path / "epoch_3.ckpt")
    with pytest.raises(MttError, match="^no space left on the device writing "):
        checkpoints.save_checkpoint({"weights": torch.zeros(3)}, target)
    assert list(tmp_path.iterdir()) == []
