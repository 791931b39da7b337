"""``mtt verify``: a model checks itself against the results stored in it at export."""

import torch
from metatomic.torch import AtomisticModel, ModelMetadata

from mtt.api import save_model
from mtt.cli import main
from mtt.testing import random_model

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
