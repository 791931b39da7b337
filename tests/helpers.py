"""Shared test helpers (on sys.path through pytest's ``pythonpath``)."""

# Small models keep the suite fast; tests add what they need on top.
TINY_MODEL = {
    "cutoff": 4.0,
    "max_radial": 4,
    "max_angular": 3,
    "num_hidden_layers": 2,
    "num_neurons_per_layer": 16,
}


class FullDiskFile:
    """A file opened for writing on a full disk: every write fails with ENOSPC (the file
    itself is created, as on a real full disk)."""

    def __init__(self, path, mode="r", *args, **kwargs):
        self.file = open(path, mode, *args, **kwargs)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.file.close()

    def write(self, data):
        import errno

        raise OSError(errno.ENOSPC, "No space left on device")


def fill_disk(monkeypatch, module) -> None:
    """Make the files that ``module`` opens for writing sit on a full disk (Python's own
    writes; what C++ writes directly is untouched)."""

    def opener(path, mode="r", *args, **kwargs):
        if "w" in mode:
            return FullDiskFile(path, mode, *args, **kwargs)
        return open(path, mode, *args, **kwargs)

    monkeypatch.setattr(module, "open", opener, raising=False)
