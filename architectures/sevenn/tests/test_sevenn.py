"""sevenn: the shared suite on a small SevenNet network trained from scratch, and what only
the pretrained SevenNet-0 needs: parity of the exported ``.pt`` (run where neither sevenn nor
e3nn can be imported) with sevenn's own ASE calculator, the declared interaction range,
checkpoints that rebuild without the ``.pth`` file, and fine-tuning methods that train
exactly the intended weights."""

import copy
import os
import warnings
from pathlib import Path

import ase
import ase.build
import ase.io
import numpy as np
import pytest
import torch

pytest.importorskip(
    "sevenn", reason='the sevenn extra is not installed (pip install -e ".[sevenn]")'
)

from mtt import pretrained  # noqa: E402
from mtt.api import save_model  # noqa: E402
from mtt.checkpoints import read_checkpoint, save_checkpoint  # noqa: E402
from mtt.data.dataset import dataset_from_atoms  # noqa: E402
from mtt.data.targets import DatasetInfo  # noqa: E402
from mtt.errors import MttError  # noqa: E402
from mtt.finetune import FinetuneHypers, apply_method  # noqa: E402
from mtt.hypers import parse  # noqa: E402
from mtt.options import EnergyTargetOptions  # noqa: E402
from mtt.testing import (  # noqa: E402
    ArchitectureTests,
    energy_of,
    exported_in_fresh_process,  # noqa: E402
    molecule,
)

from ..hypers import ModelHypers, TrainerHypers  # noqa: E402
from ..model import SevenNet  # noqa: E402
from ..modules import convert  # noqa: E402
from ..trainer import Trainer  # noqa: E402

# a small network trained from scratch: one layer, 3 Å, so that the suite stays fast
SMALL = {
    "sevennet_config": {
        "cutoff": 3.0,
        "channel": 8,
        "lmax": 2,
        "is_parity": False,
        "num_convolution_layer": 1,
        "radial_basis": {"radial_basis_name": "bessel", "bessel_basis_num": 6},
        "cutoff_function": {"cutoff_function_name": "XPLOR", "cutoff_on": 2.5},
        "weight_nn_hidden_neurons": [8],
        "self_connection_type": "linear",
        "conv_denominator": 5.0,
    }
}
XTB_ETHANOL = os.path.join(
    os.path.dirname(__file__), "..", "..", "..", "examples", "data", "ethanol_xtb_200.xyz"
)


class TestSevenNet(ArchitectureTests):
    architecture = "sevenn"
    model_hypers = SMALL
    generic_targets = False  # energies only
    # SMALL trained 2 epochs on 12 ethanol frames (kcal/mol), float32; regenerate with such a
    # run (mtt.train, checkpoint_interval: 1, epoch_2.ckpt) only when the format changes
    golden_energies = {"model-v1.ckpt": -97077.703125}


@pytest.fixture(scope="module")
def sevennet_0():
    return pretrained.load("sevennet-0")


def _sevenn_calculator():
    from sevenn.calculator import SevenNetCalculator

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "No tensor product accelerator", UserWarning)
        return SevenNetCalculator("7net-0", device="cpu")


def _structures():
    """A sheared, rattled Si crystal, a rattled NaCl cell and a rattled ethanol molecule."""
    silicon = ase.build.bulk("Si", "diamond", a=5.43, cubic=True)
    silicon.set_cell(silicon.cell[:] @ np.array([[1, 0.03, 0], [0, 1, 0.02], [0.01, 0, 1]]), True)
    silicon.rattle(0.05, seed=1)
    salt = ase.build.bulk("NaCl", "rocksalt", a=5.64) * (2, 1, 1)
    salt.rattle(0.05, seed=2)
    return [silicon, salt, molecule()]


def test_exported_sevennet_0_matches_sevenn_without_sevenn(sevennet_0, tmp_path):
    """``mtt export sevennet-0``'s model, run by metatomic's ASE calculator in a process
    where mtt, sevenn and e3nn cannot be imported, gives sevenn's own calculator's energy,
    forces and stress to float32 precision, on crystals and a molecule. A failure means the
    plain-torch network, the element mapping or the shift/scale differ from SevenNet's."""
    path = str(tmp_path / "sevennet-0.pt")
    save_model(sevennet_0.export(), path)
    frames = _structures()
    results = exported_in_fresh_process(path, frames, str(tmp_path), ("mtt", "sevenn", "e3nn"))
    calculator = _sevenn_calculator()
    for atoms, result in zip(frames, results):
        atoms.calc = calculator
        # float32: energies of ~-40 eV agree to a few 1e-6 relative, forces to ~1e-5 eV/Å
        np.testing.assert_allclose(result["energy"], atoms.get_potential_energy(), rtol=2e-6)
        np.testing.assert_allclose(result["forces"], atoms.get_forces(), atol=5e-5)
        if atoms.pbc.all():
            stress = atoms.get_stress(voigt=False)
            np.testing.assert_allclose(result["stress"], stress, atol=1e-6)


def test_declared_range_elements_and_precision(sevennet_0):
    """Engines (LAMMPS) must provide neighbours up to 5 layers x 5 Å; SevenNet-0 knows 89
    elements and runs in float32, as shipped."""
    capabilities = sevennet_0.export().capabilities()
    assert capabilities.interaction_range == pytest.approx(25.0)
    assert len(capabilities.atomic_types) == 89
    assert capabilities.dtype == "float32"
    assert 0.83e6 < sum(p.numel() for p in sevennet_0.parameters()) < 0.85e6


def test_checkpoint_rebuilds_without_the_sevenn_file(sevennet_0, tmp_path, monkeypatch):
    """An mtt checkpoint holds SevenNet's config in its hypers: loading it (weights_only)
    rebuilds the network without reading any SevenNet ``.pth`` file (no unpickling)."""
    path = str(tmp_path / "model.ckpt")
    save_checkpoint(sevennet_0.get_checkpoint(), path)

    def refuse(*args, **kwargs):
        raise AssertionError("a SevenNet .pth file was read")

    monkeypatch.setattr(convert, "load_checkpoint", refuse)
    loaded = SevenNet.load_checkpoint(read_checkpoint(path), "export").eval()
    for atoms in _structures()[:2]:
        torch.testing.assert_close(
            energy_of(loaded, atoms, torch.float32), energy_of(sevennet_0, atoms, torch.float32)
        )


def test_foreign_sevenn_file_needs_trust(tmp_path):
    """A SevenNet ``.pth`` outside the sevenn package is a pickle: refused unless trusted."""
    path = tmp_path / "other.pth"
    path.write_bytes(b"not read")
    with pytest.raises(MttError, match="trust_checkpoint"):
        convert.load_checkpoint(str(path), trust_file=False)


def _xtb_dataset(n: int):
    frames = ase.io.read(XTB_ETHANOL, f":{n}")
    targets = {"energy": EnergyTargetOptions(unit="eV")}
    return dataset_from_atoms(frames, targets, name="training_set")


@pytest.mark.parametrize(
    "method, config",
    [
        ("full", {}),
        ("heads", {}),
        ("lora", {"rank": 2, "layers": ["core.layers.4.*", "core.hidden"]}),
        ("freeze", {"patterns": ["core.layers.*"]}),
    ],
)
def test_finetuning_trains_only_the_intended_weights(sevennet_0, tmp_path, method, config):
    """A few steps of each fine-tuning method on three xTB ethanol frames change exactly the
    weights the method names (the readout for ``heads``, only the adapters for ``lora``,
    everything but the frozen layers for ``freeze``), and keep SevenNet's output scale."""
    model = copy.deepcopy(sevennet_0).train()
    dataset = _xtb_dataset(3)
    finetune = FinetuneHypers(read_from="sevennet-0", method=method, config=config)
    apply_method(model, finetune)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    hypers = {"num_epochs": 2, "batch_size": 3, "learning_rate": 1e-3, "progress_bar": False}
    hypers["finetune"] = {"read_from": "sevennet-0", "method": method, "config": config}
    trainer = Trainer(parse(TrainerHypers, hypers, "architecture.training"))
    trainer.pretrained_targets = ["energy"]
    trainer.train(model, torch.float32, [torch.device("cpu")], [dataset], [], str(tmp_path))
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert changed and changed <= trainable
    if method == "heads":
        assert changed == {"core.readout.weight"}
    elif method == "lora":
        assert all(".lora_" in n for n in changed)
    elif method == "freeze":
        assert not any(n.startswith("core.layers.") for n in changed)
    assert float(model.scale[0]) == 1.0  # SevenNet's scale, not the data's force spread


def test_without_finetune_section_starts_from_sevennet(tmp_path):
    """``architecture: {name: sevenn}`` without ``finetune`` fine-tunes SevenNet-0 fully:
    its output scale is kept and the reference energies are refitted on the new data (xTB
    total energies are hundreds of eV from PBE's references)."""
    dataset = _xtb_dataset(4)
    info = dataset.targets
    from mtt.data.targets import DatasetInfo

    model = SevenNet(
        parse(ModelHypers, {}, "architecture.model"),
        DatasetInfo("angstrom", dataset.atomic_types, info),
    )
    baseline = model.baseline.clone()
    hypers = {"num_epochs": 1, "batch_size": 4, "progress_bar": False}
    trainer = Trainer(parse(TrainerHypers, hypers, "architecture.training"))
    trainer.train(model, torch.float32, [torch.device("cpu")], [dataset], [], str(tmp_path))
    assert float(model.scale[0]) == 1.0
    carbon = model.atomic_types.index(6)
    assert abs(float(model.baseline[0, carbon] - baseline[0, carbon])) > 1.0


def test_the_dry_run_without_finetune_section_is_that_of_full_fine_tuning(
    tmp_path, monkeypatch, capsys
):
    """sevenn without a finetune section fine-tunes SevenNet-0 fully; its dry run reported a
    training from scratch (a composition-only energy scale, no reference energies, no
    zero-shot errors) and the old task's section was read from an absent finetune."""
    import yaml

    from mtt.cli import main

    monkeypatch.chdir(tmp_path)
    ase.io.write("xtb.xyz", ase.io.read(XTB_ETHANOL, ":8"))
    options = {
        "architecture": {"name": "sevenn"},
        "training_set": {"systems": "xtb.xyz", "targets": {"energy": {"unit": "eV"}}},
        "validation_set": 0.25,
    }
    reports = []
    for section in (None, {"read_from": "sevennet-0"}):
        if section is not None:
            options["architecture"]["training"] = {"finetune": section}
        Path("options.yaml").write_text(yaml.safe_dump(options))
        capsys.readouterr()
        assert main(["train", "options.yaml", "--dry-run"]) == 0
        lines = capsys.readouterr().out.splitlines()
        reports.append([line for line in lines if not line.startswith(("dry run", "fine-tun"))])
    assert reports[0] == reports[1]
    assert "zero-shot errors of the pretrained model on the new training set:" in reports[0]
    assert any(line.startswith("reference energies") for line in reports[0])


def test_a_config_with_sevenns_defaults_builds_and_divides_by_the_mean_neighbours(tmp_path):
    """A plain config (sevenn's defaults: 'avg_num_neigh' as the denominator, NequIP's
    self-connection) was an internal error; the denominator is now the training data's mean
    number of neighbours, kept in the checkpoint's config so that the network rebuilds."""
    config = {"cutoff": 3.0, "channel": 4, "lmax": 1, "num_convolution_layer": 2}
    dataset = _xtb_dataset(4)
    info = DatasetInfo("angstrom", dataset.atomic_types, dataset.targets)
    model = SevenNet(parse(ModelHypers, {"sevennet_config": config}, "architecture.model"), info)
    graphs = [model.atoms_to_data(atoms) for atoms, _ in dataset]
    model.fit_statistics([model.collate_fn(graphs)])
    edges = sum(int(g.edge_i.shape[0]) for g in graphs)
    atoms = sum(int(g.types.shape[0]) for g in graphs)
    mean = pytest.approx(edges / atoms, rel=1e-7)
    assert model.hypers.sevennet_config["conv_denominator"] == [mean] * 2
    assert [layer.convolution.denominator for layer in model.core.layers] == [mean] * 2
    path = str(tmp_path / "model.ckpt")
    save_checkpoint(model.get_checkpoint(), path)
    rebuilt = SevenNet.load_checkpoint(read_checkpoint(path), "export")
    assert [layer.convolution.denominator for layer in rebuilt.core.layers] == [
        layer.convolution.denominator for layer in model.core.layers
    ]
    torch.testing.assert_close(
        energy_of(rebuilt.double().eval(), molecule()), energy_of(model.double().eval(), molecule())
    )


@pytest.mark.parametrize(
    "config, message",
    [
        ({"cutoff": -1.0}, "sevennet_config.cutoff' must be a positive number, got -1.0"),
        ({"channel": 0}, "sevennet_config.channel' must be an integer >= 2, got 0"),
        ({"channel": 1}, "sevennet_config.channel' must be an integer >= 2, got 1"),
        ({"lmax": "two"}, "sevennet_config.lmax' must be an integer >= 0, got 'two'"),
        ({"chanel": 8}, "sevennet_config.chanel' is not a SevenNet network setting; did you"),
        ({"self_connection_type": "nequip"}, "only 'linear' is supported, got 'nequip'"),
        (
            {"act_scalar": {"e": "silu"}},
            "sevennet_config.act_scalar' must map both parities e (even) and o (odd) to an "
            "activation, e.g. {e: silu, o: tanh}; got {'e': 'silu'}",
        ),
        ({"act_gate": {"e": "tanh", "o": "tanh"}}, "act_gate.e' must be ssp or silu; got 'tanh'"),
        ({"act_radial": "gelu"}, "act_radial' must be one of relu, silu, tanh, abs, ssp"),
        ({"is_parity": "yes"}, "sevennet_config.is_parity' must be true or false, got 'yes'"),
    ],
)
def test_bad_sevennet_configs_are_refused_with_the_key(config, message):
    from mtt.errors import MttError as Error

    with pytest.raises(Error, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse(ModelHypers, {"sevennet_config": config}, "architecture.model")


def test_a_runs_options_keep_the_sevennet_config_the_user_gave(sevennet_0):
    """The model fills sevennet_config from its checkpoint (its own checkpoints rebuild from
    it); the run's options.yaml keeps the options' empty one: reused, a filled config would
    train SevenNet from scratch."""
    from mtt.api import _record_model

    model = {"checkpoint": "sevennet-0", "trust_checkpoint": False, "sevennet_config": {}}
    recorded = _record_model({"architecture": {"name": "sevenn", "model": model}}, sevennet_0)
    assert recorded["architecture"]["model"]["sevennet_config"] == {}
    assert sevennet_0.hypers.sevennet_config["num_convolution_layer"] == 5
