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


def test_golden_checkpoint_predicts_the_same_energy():
    """The version-1 checkpoint shipped in tests/checkpoints gives the energy it gave when it
    was written (a float32 model trained for 2 epochs on 12 ethanol frames; regenerate with a
    2-epoch `mtt train` of that size and copy outputs/<run>/checkpoints/epoch_2.ckpt, then pin
    the new number here, only when the checkpoint format changes on purpose)."""
    import os

    import ase.build
    import torch

    from mtt.architectures.soap_bpnn import SoapBpnn
    from mtt.checkpoints import read_checkpoint
    from mtt.testing import energy_of

    path = os.path.join(os.path.dirname(__file__), "checkpoints", "model-v1.ckpt")
    model = SoapBpnn.load_checkpoint(read_checkpoint(path), "export").eval()
    energy = float(energy_of(model, ase.build.molecule("CH3CH2OH"), torch.float32)[0])
    assert abs(energy - (-97137.40625)) < 0.02  # kcal/mol
