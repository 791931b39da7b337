"""soap_bpnn against the shared architecture suite."""

from mtt.testing import ArchitectureTests


class TestSoapBpnn(ArchitectureTests):
    architecture = "soap_bpnn"
    model_hypers = {
        "cutoff": 3.0,
        "max_radial": 3,
        "max_angular": 2,
        "num_hidden_layers": 2,
        "num_neurons_per_layer": 8,
    }
