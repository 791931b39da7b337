"""Files mtt writes atomically still get the permissions of any file the user creates."""

import os
import stat

import pytest

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
