"""``mtt verify``: a model checks itself against the results stored in it at export."""

import json
import os
from pathlib import Path

import pytest
import torch
from metatomic.torch import AtomisticModel, ModelMetadata

from mtt.api import save_model
from mtt.cli import main
from mtt.testing import random_model
from mtt.verification import METADATA_KEY

HYPERS = {"cutoff": 3.0, "max_radial": 2, "max_angular": 1, "num_neurons_per_layer": 4}


def test_verify_passes_on_an_exported_model(tmp_path, capsys):
    """A freshly exported model reproduces its stored reference structures."""
    path = str(tmp_path / "model.pt")
    save_model(random_model("soap_bpnn", HYPERS, torch.float64).export(), path)
    assert main(["verify", path]) == 0
    assert "all 2 reference structures reproduced" in capsys.readouterr().out


def test_verify_refuses_a_model_without_reference_results(tmp_path, capsys):
    """A metatomic model that carries no reference results gets a clear one-line error."""
    model = random_model("soap_bpnn", HYPERS, torch.float64)
    exported = model.export()
    bare = AtomisticModel(exported.module, ModelMetadata(), exported.capabilities())
    path = str(tmp_path / "bare.pt")
    save_model(bare, path)
    assert main(["verify", path]) == 1
    assert "holds no reference results" in capsys.readouterr().err


@pytest.mark.parametrize(
    "edit, problem",
    [
        (lambda text: text[:-5], "not JSON"),
        (
            lambda text: json.dumps(dict(json.loads(text), structures=[])),
            "list of structures is empty",
        ),
        (
            lambda text: json.dumps(dict(json.loads(text), output="energy/foo")),
            "no output 'energy/foo'",
        ),
        (lambda text: _shortened_forces(text), "structure 0: forces has the shape"),
    ],
)
def test_damaged_reference_results_are_named(tmp_path, capsys, edit, problem):
    """Reference results edited or damaged in the metadata were internal errors (a JSON
    error, an IndexError, a reshape or a KeyError); they are one line that says so."""
    exported = random_model("soap_bpnn", HYPERS, torch.float64).export()
    metadata = exported.metadata()
    extra = dict(metadata.extra)
    extra[METADATA_KEY] = edit(extra[METADATA_KEY])
    changed = ModelMetadata(metadata.name, metadata.description, [], {}, extra)
    path = str(tmp_path / "edited.pt")
    save_model(AtomisticModel(exported.module, changed, exported.capabilities()), path)
    assert main(["verify", path]) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"mtt: error: the reference results stored in {path!r} are damaged")
    assert problem in line


def _shortened_forces(text: str) -> str:
    stored = json.loads(text)
    stored["structures"][0]["forces"] = stored["structures"][0]["forces"][:-1]
    return json.dumps(stored)


def test_a_directory_or_a_text_file_given_as_the_model(tmp_path, capsys, monkeypatch):
    """A run directory, or an options file, given where a model goes: said as such (a
    directory was 'not found', a text file got a cut-off torch message)."""
    monkeypatch.chdir(tmp_path)
    os.mkdir("run")
    save_model(random_model("soap_bpnn", HYPERS, torch.float64).export(), "run/model.pt")
    Path("options.yaml").write_text("architecture: {name: soap_bpnn}\n")
    for given, message in (
        ("run", "'run' is a directory; give an exported model file ('run/model.pt' is one)"),
        ("options.yaml", "'options.yaml' is not a model (not an archive written by torch)"),
    ):
        assert main(["verify", given]) == 1
        assert capsys.readouterr().err.startswith(f"mtt: error: {message}")


def test_a_model_that_needs_extensions_is_not_sent_to_a_missing_option(
    tmp_path, capsys, monkeypatch
):
    """A model of another tool built with compiled extensions (metatrain's soap_bpnn) was
    told to 'give their directory with -e/--extensions-dir', which mtt verify does not have;
    it is told that such a model holds nothing to verify, and where -e exists."""
    import mtt.evaluate

    def missing(path, extensions_directory=None):
        raise RuntimeError(f"failed to load '{path}': missing TorchScript extensions.\nmore")

    monkeypatch.setattr(mtt.evaluate, "load_atomistic_model", missing)
    path = str(tmp_path / "other.pt")
    save_model(random_model("soap_bpnn", HYPERS, torch.float64).export(), path)
    assert main(["verify", path]) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "--extensions-dir" not in line
    assert "not exported by mtt" in line and "'mtt eval -e <directory>'" in line
