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
    # a float32 model trained 2 epochs on 12 ethanol frames (kcal/mol); regenerate with such
    # a run, copying outputs/<run>/checkpoints/epoch_2.ckpt, only when the format changes
    golden_energies = {"model-v1.ckpt": -97137.40625}
