"""pet against the shared architecture suite, plus what only PET needs: smoothness when a
neighbour crosses the cutoff, the range it declares to engines, and learning rotational
invariance from randomly rotated training data (with exact restarts)."""

import functools
import os

import ase
import ase.build
import ase.io
import numpy as np
import pytest
import torch

from mtt.checkpoints import read_checkpoint
from mtt.data.dataset import dataset_from_atoms
from mtt.data.graph import atoms_to_graph, collate_graphs
from mtt.data.targets import DatasetInfo, TargetInfo
from mtt.errors import MttError
from mtt.hypers import parse
from mtt.options import EnergyTargetOptions
from mtt.testing import (
    ArchitectureTests,
    energy_with_hydrogen_at,
    random_model,
)
from mtt.testing._suite import random_rotation, rotated

from ..hypers import ModelHypers, TrainerHypers
from ..model import Pet
from ..trainer import Trainer

HYPERS = {
    "cutoff": 3.0,
    "d_pet": 16,
    "num_heads": 2,
    "num_attention_layers": 1,
    "num_gnn_layers": 2,
    "d_feedforward": 32,
}
# the least model with every part (for the slow compile test)
SMALLEST = dict(HYPERS, d_pet=8, num_attention_layers=1, num_gnn_layers=1, d_feedforward=8)
ETHANOL = os.path.join(
    os.path.dirname(__file__), "..", "..", "..", "examples", "data", "ethanol_reduced_100.xyz"
)


class TestPet(ArchitectureTests):
    architecture = "pet"
    model_hypers = HYPERS
    rotation_invariant = False  # learnt from rotated data, see test_random_rotations_...
    generic_targets = False  # vectors and tensors need rotation-invariant features
    # a float32 model trained 2 epochs on 12 ethanol frames (kcal/mol); regenerate with such
    # a run, copying outputs/<run>/checkpoints/epoch_2.ckpt, only when the format changes
    golden_energies = {"model-v1.ckpt": -97091.5390625}


def test_energy_is_smooth_when_a_neighbour_crosses_the_cutoff():
    """Just beyond the cutoff the H atom contributes exactly nothing (the energy is that of
    the far-apart atoms); just inside, its effect vanishes like the square of the distance
    to the cutoff (the cutoff function has zero slope there), so energies and forces are
    continuous. A failure means MD would see jumps whenever a neighbour enters the cutoff."""
    model = random_model("pet", HYPERS, torch.float64, generic=False)
    cutoff = model.cutoff
    far = energy_with_hydrogen_at(model, 4 * cutoff)
    for delta in (1e-3, 1e-4):
        assert energy_with_hydrogen_at(model, cutoff + delta) == pytest.approx(far, abs=1e-10)
    effects = [abs(energy_with_hydrogen_at(model, cutoff - d) - far) for d in (1e-3, 1e-4)]
    assert 0 < effects[1] < 1e-6
    assert effects[0] / effects[1] == pytest.approx(100, rel=0.05)


def test_interaction_range_covers_every_message_passing_layer():
    """Engines must provide neighbours up to cutoff x layers (LAMMPS ghost atoms): one
    cutoff per message-passing layer."""
    hypers = dict(HYPERS, num_gnn_layers=3)
    model = random_model("pet", hypers, torch.float64, generic=False)
    assert model.export().capabilities().interaction_range == pytest.approx(9.0)


def test_generic_targets_are_refused_with_the_architectures_that_have_them():
    """pet has no heads for generic targets; a scalar (metatrain's pet trains them) is
    refused with the same advice as a tensor, not an explanation about vectors."""
    targets = {"mtt::gap": TargetInfo("mtt::gap", "eV", kind="generic")}
    info = DatasetInfo("angstrom", [1, 6], targets)
    with pytest.raises(MttError, match=r"not \['mtt::gap'\].*scalars included.*soap_bpnn or painn"):
        Pet(parse(ModelHypers, HYPERS), info)


def _train(frames, random_rotations: bool, num_epochs: int, run_dir: str, every: int = 100):
    """A tiny PET trained on ``frames`` with the shared loop and the pet trainer, writing a
    checkpoint ``every`` epochs."""
    torch.manual_seed(0)
    dataset = _dataset(frames)
    info = DatasetInfo(dataset.length_unit, dataset.atomic_types, dataset.targets)
    model = Pet(parse(ModelHypers, HYPERS), info)
    hypers = {
        "num_epochs": num_epochs,
        "batch_size": 2,
        "learning_rate": 3e-3,
        "random_rotations": random_rotations,
        "checkpoint_interval": every,
        "log_interval": 1000,
        "progress_bar": False,
    }
    trainer = Trainer(parse(TrainerHypers, hypers, "architecture.training"))
    trainer.train(model, torch.float64, [torch.device("cpu")], [dataset], [], run_dir)
    return model.eval()


def _dataset(frames):
    targets = {"energy": EnergyTargetOptions(unit="kcal/mol")}
    return dataset_from_atoms(frames, targets, name="training_set")


def _force_rotation_error(model, frames) -> float:
    """How far forces are from rotating with the structure: RMS of F(R x) - R F(x) over
    random rotations, relative to the RMS of the forces themselves."""
    errors, sizes = [], []
    for atoms in frames:
        for seed in range(6):
            rotation = random_rotation(seed)
            pair = [atoms, rotated(atoms, rotation)]
            graph = collate_graphs([atoms_to_graph(a, model.cutoff, torch.float64) for a in pair])
            forces = model.predict(graph, ["energy/forces"], training=False)["energy/forces"]
            forces = forces.detach().numpy().reshape(2, len(atoms), 3)
            errors.append(forces[1] - forces[0] @ rotation.T)
            sizes.append(forces[0])
    return float(np.sqrt(np.mean(np.square(errors))) / np.sqrt(np.mean(np.square(sizes))))


def test_random_rotations_teach_rotational_invariance(tmp_path):
    """Trained on the same few ethanol frames, a PET that saw them randomly rotated
    (``random_rotations``, the default) predicts forces that rotate with the structure far
    better than one trained on the fixed orientations. A failure means the augmentation
    hook does not reach the training batches, or rotates labels inconsistently."""
    frames = ase.io.read(ETHANOL, ":6")
    errors = {}
    for augment in (False, True):
        model = _train(frames, augment, 40, str(tmp_path / str(augment)))
        errors[augment] = _force_rotation_error(model, frames)
    assert errors[True] < 0.5 * errors[False]


def test_restart_with_random_rotations_is_exact(tmp_path):
    """Restarting from the checkpoint of epoch 1 ends with exactly the weights of the
    uninterrupted run: the rotations are drawn from a generator seeded by the epoch, not
    from global random state."""
    frames = ase.io.read(ETHANOL, ":4")
    straight = _train(frames, True, 2, str(tmp_path / "straight"), every=1)
    checkpoint = read_checkpoint(str(tmp_path / "straight" / "checkpoints" / "epoch_1.ckpt"))
    model = Pet.load_checkpoint(checkpoint, "restart")
    hypers = parse(TrainerHypers, checkpoint["train_hypers"])
    trainer = Trainer.load_checkpoint(checkpoint, hypers, "restart")
    torch.manual_seed(1234)  # global random state must not matter
    run_dir = str(tmp_path / "resumed")
    trainer.train(model, torch.float64, [torch.device("cpu")], [_dataset(frames)], [], run_dir)
    for name, value in straight.state_dict().items():
        assert torch.equal(value, model.state_dict()[name]), name


@pytest.mark.parametrize("tokens_per_chunk", [1, 40, 4096])
def test_lean_gradients_equal_full_graph_in_every_chunking(tokens_per_chunk):
    """Three message-passing layers (so messages pass through the recomputed middle layer)
    and chunks from one atom to the whole batch: energies, forces and stress of the lean
    path equal those of the full autograd graph, with LAMMPS-like selected atoms and two
    systems weighted differently. A failure means engines get wrong forces from pet."""
    from metatensor.torch import Labels

    from mtt.testing import engine_gradients, molecule, periodic_crystal

    model = random_model("pet", dict(HYPERS, num_gnn_layers=3), torch.float64, generic=False)
    model.tokens_per_chunk = tokens_per_chunk
    full_graph = model.export(second_derivatives=True).module
    frames = [molecule(), periodic_crystal()]
    selected = Labels(
        ["system", "atom"], torch.tensor([[0, 2], [0, 8], [1, 1], [1, 6]], dtype=torch.int32)
    )
    for chosen in (None, selected):
        lean = engine_gradients(model, frames, [1.0, -2.0], chosen)
        full = engine_gradients(full_graph, frames, [1.0, -2.0], chosen)
        for got, expected in zip(lean, full):
            for a, b in zip(got, expected):
                torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13)
    # atoms without neighbours, in a batch with edges and alone (no edges at all)
    apart = ase.Atoms("HOH", positions=[[0, 0, 0], [0, 0, 10], [0, 10, 0]])
    for batch in ([apart, molecule()], [apart]):
        weights = [1.0, 0.5][: len(batch)]
        for got, expected in zip(
            engine_gradients(model, batch, weights), engine_gradients(full_graph, batch, weights)
        ):
            for a, b in zip(got, expected):
                torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13)


def test_second_derivatives_export_keeps_the_hessian(tmp_path):
    """``mtt export --second-derivatives``: the autograd Hessian of the exported model
    matches finite differences of its forces, which equal the default (lean) export's."""
    import subprocess
    import sys

    from metatomic.torch import ModelEvaluationOptions, ModelOutput, load_atomistic_model

    from mtt.api import save_model
    from mtt.checkpoints import save_checkpoint
    from mtt.testing import engine_gradients, molecule, systems_with_neighbors

    model = random_model("pet", HYPERS, torch.float64, generic=False)
    checkpoint = str(tmp_path / "model.ckpt")
    save_checkpoint(model.get_checkpoint(), checkpoint)
    exported = str(tmp_path / "hessian.pt")
    subprocess.run(
        [sys.executable, "-m", "mtt", "export", checkpoint, "-o", exported, "--second-derivatives"],
        check=True,
        capture_output=True,
    )
    save_model(model.export(), str(tmp_path / "lean.pt"))
    full = load_atomistic_model(exported)
    lean = load_atomistic_model(str(tmp_path / "lean.pt"))
    atoms = molecule()
    torch.testing.assert_close(
        engine_gradients(lean, [atoms], [1.0])[1][0],
        engine_gradients(full, [atoms], [1.0])[1][0],
        rtol=1e-10,
        atol=1e-13,
    )

    systems = systems_with_neighbors(full, [atoms], torch.float64, positions_grad=True)
    options = ModelEvaluationOptions(length_unit="angstrom", outputs={"energy": ModelOutput()})
    energy = full(systems, options, check_consistency=True)["energy"].block().values
    positions = systems[0].positions
    (gradient,) = torch.autograd.grad(energy.sum(), positions, create_graph=True)
    row = torch.autograd.grad(gradient[0, 0], positions)[0]  # d2E / dx_0 d(every position)
    delta = 1e-5
    numerical = torch.zeros_like(row)
    for sign in (1.0, -1.0):
        shifted = atoms.copy()
        shifted.positions[0, 0] += sign * delta
        numerical += sign * engine_gradients(full, [shifted], [1.0])[1][0] / (2 * delta)
    torch.testing.assert_close(row, numerical, rtol=1e-5, atol=1e-7)


def test_lora_adapters_give_exact_forces_before_and_after_merging():
    """LoRA adapters wrap the Linear layers whose matrices pet's lean gradients use directly
    (and the first layer's product): forces of the adapted model equal those of autograd
    through the adapters' own forward, and of the merged (exported) model."""
    import copy

    from mtt.lora import add_adapters, merge_adapters
    from mtt.testing import engine_gradients, molecule, periodic_crystal

    model = random_model("pet", HYPERS, torch.float64, generic=False)
    add_adapters(model, 2, 4.0, ["*"])
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_b" in name:
                parameter.normal_(std=0.3)  # a trained update, not the zero start
    frames = [molecule(), periodic_crystal()]
    lean = engine_gradients(model, frames, [1.0, 1.0])
    autograd = copy.deepcopy(model)
    autograd.lean_gradients = False
    merged = copy.deepcopy(model)
    merge_adapters(merged)
    for other in (autograd, merged):
        for got, expected in zip(engine_gradients(other, frames, [1.0, 1.0]), lean):
            for a, b in zip(got, expected):
                torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def _two_target_model(lora: bool):
    """A float64 pet with two energy targets (forces and stress each), optionally with
    trained-looking LoRA adapters, in training mode."""
    from mtt.lora import add_adapters
    from mtt.testing._tools import dataset_info

    info = dataset_info(generic=False)
    info.targets["mtt::other"] = TargetInfo("mtt::other", "eV", forces=True, stress=True)
    torch.manual_seed(3)
    model = Pet(parse(ModelHypers, HYPERS, "architecture.model"), info).to(torch.float64)
    model.set_baseline(
        torch.tensor([[-1.0, -2.0, -3.0], [0.5, 0.2, 0.1]], dtype=torch.float64),
        torch.tensor([0.7, 1.3], dtype=torch.float64),
    )
    if lora:
        add_adapters(model, 2, 4.0, ["*"])
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if "lora_b" in name:
                    parameter.normal_(std=0.3)
    return model.train()


def _loss_and_gradients(model, batch, quantities, through_edges: bool):
    from mtt.energy_model import EnergyModel

    model.zero_grad()
    if through_edges:
        predictions = model.predict(batch, quantities, training=True)
    else:
        predictions = EnergyModel.predict(model, batch, quantities, training=True)
    loss = sum((value * (k + 1)).square().sum() for k, value in enumerate(predictions.values()))
    loss.backward()
    return predictions, {
        name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None
    }


@pytest.mark.parametrize("lora", [False, True])
def test_training_through_edge_gradients_equals_differentiating_twice(lora):
    """Training takes forces and stress from pet's own gradient of the energy
    (``energies_and_input_gradients``, differentiated once by the loss's backward): the
    predictions and every parameter's gradient of a loss on them equal those of forces by
    ``autograd.grad(create_graph=True)`` differentiated again, for two targets, a molecule,
    a crystal, atoms without neighbours and a batch without any edge. A failure means pet
    trains on wrong force gradients."""
    from mtt.testing import molecule, periodic_crystal

    model = _two_target_model(lora)
    apart = ase.Atoms("HOH", positions=[[0, 0, 0], [0, 0, 10], [0, 10, 0]])
    quantities = ["energy", "energy/forces", "energy/stress", "mtt::other/forces"]
    for frames in ([molecule(), periodic_crystal(), apart], [apart]):
        batch = collate_graphs([atoms_to_graph(a, model.cutoff, torch.float64) for a in frames])
        got, got_grads = _loss_and_gradients(model, batch, quantities, True)
        expected, expected_grads = _loss_and_gradients(model, batch, quantities, False)
        assert sorted(got) == sorted(expected)
        for name in expected:
            torch.testing.assert_close(got[name], expected[name], rtol=1e-10, atol=1e-13)
        assert sorted(got_grads) == sorted(expected_grads)
        for name in expected_grads:
            torch.testing.assert_close(
                got_grads[name], expected_grads[name], rtol=1e-9, atol=1e-12, msg=name
            )


def test_own_derivatives_of_silu_and_layer_norm_gradients_equal_autograds():
    """Eager training differentiates SiLU's and layer norm's input gradients with formulas of
    its own (``_SiluBackward``, ``_LayerNormBackward``): they equal autograd's derivatives of
    the same gradients (and finite differences, gradcheck), with the norm's weight trained or
    frozen."""
    from ..modules.transformer import (
        _LayerNormBackward,
        _native_layer_norm_backward,
        _SiluBackward,
    )

    generator = torch.Generator().manual_seed(0)

    def random(*shape, scale=1.0):
        values = torch.randn(*shape, dtype=torch.float64, generator=generator) * scale
        return values.requires_grad_()

    grad, x = random(6, 5), random(6, 5, scale=4.0)
    assert torch.autograd.gradcheck(_SiluBackward.apply, (grad, x))
    upstream = torch.randn(6, 5, dtype=torch.float64, generator=generator)
    sigmoid = torch.sigmoid(x)
    formula = grad * sigmoid * (1 + x * (1 - sigmoid))
    for got, expected in zip(
        torch.autograd.grad((_SiluBackward.apply(grad, x) * upstream).sum(), (grad, x)),
        torch.autograd.grad((formula * upstream).sum(), (grad, x)),
    ):
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)

    own = functools.partial(_norm_input_gradient, _LayerNormBackward.apply)
    native = functools.partial(_norm_input_gradient, _native_layer_norm_backward)
    for weight_trained in (True, False):
        grad, x = random(3, 4, 7), random(3, 4, 7, scale=3.0)
        weight, bias = random(7).requires_grad_(weight_trained), random(7).detach()
        assert torch.autograd.gradcheck(own, (grad, x, weight, bias))
        upstream = torch.randn(3, 4, 7, dtype=torch.float64, generator=generator)
        inputs = [t for t in (grad, x, weight) if t.requires_grad]
        for got, expected in zip(
            torch.autograd.grad((own(grad, x, weight, bias) * upstream).sum(), inputs),
            torch.autograd.grad((native(grad, x, weight, bias) * upstream).sum(), inputs),
        ):
            torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def _norm_input_gradient(function, grad, x, weight, bias):
    """A layer norm's input gradient by ``function``, its mean and rstd from ``x``."""
    _, mean, rstd = torch.native_layer_norm(x, [x.shape[-1]], weight, bias, 1e-5)
    return function(grad, x, mean, rstd, weight, bias)


def _compiling_trainer(backend: str = "aot_eager"):
    trainer = Trainer(parse(TrainerHypers, {"compile": True}, "architecture.training"))
    trainer.compile_backend = backend
    return trainer


# importing torch's inductor defines a TorchScript module inside torch, with torch 2.13's
# deprecation warning for TorchScript (see the filters in pyproject.toml)
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
@pytest.mark.parametrize(
    "backend",
    [
        "aot_eager",
        pytest.param(
            "inductor",
            marks=pytest.mark.skipif(
                not os.environ.get("MTT_SLOW_TESTS"), reason="~3 min; MTT_SLOW_TESTS=1 runs it"
            ),
        ),
    ],
)
def test_compiled_training_step_equals_the_eager_one(backend):
    """``compile: true`` runs the training step's model part through torch.compile: the
    predictions and parameter gradients equal those of forces by autograd differentiated
    twice, for two batches of different sizes (dynamic shapes, one compilation) and one that
    would need a second compilation (it runs uncompiled), and validation stays eager.
    ``aot_eager`` traces and differentiates the graph as ``inductor`` (what users get) does,
    without generating C++ code: tracing alone takes ~40 s here even for this one-layer
    model, the C++ code two more minutes. A failure means compiled training optimises something else
    than the model that gets exported."""
    from mtt.testing import molecule, periodic_crystal

    model = random_model("pet", SMALLEST, torch.float64, generic=False).train()
    quantities = ["energy", "energy/forces", "energy/stress"]
    trainer = _compiling_trainer(backend)
    # a single atom without neighbours: sizes 1 and 0, which torch specialises on, need
    # another compilation; that batch runs uncompiled instead
    lone = ase.Atoms("O", positions=[[0, 0, 0]])
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    for frames in ([molecule(), periodic_crystal()], [periodic_crystal()], [lone]):
        batch = collate_graphs([atoms_to_graph(a, model.cutoff, torch.float64) for a in frames])
        # the reference: forces by autograd, differentiated twice
        expected, expected_grads = _loss_and_gradients(model, batch, quantities, False)
        model.zero_grad()
        got = trainer.predict(model, batch, quantities, training=True)
        sum((value * (k + 1)).square().sum() for k, value in enumerate(got.values())).backward()
        for name in expected:
            torch.testing.assert_close(got[name], expected[name], rtol=1e-9, atol=1e-12)
        for name, parameter in model.named_parameters():
            if name in expected_grads:
                torch.testing.assert_close(
                    parameter.grad, expected_grads[name], rtol=1e-8, atol=1e-11, msg=name
                )
    if hasattr(torch.compiler, "set_stance"):  # torch < 2.6 compiles again
        assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs + 1
    validation = trainer.predict(model, batch, ["energy", "energy/forces"], training=False)
    assert validation["energy/forces"].grad_fn is None


def test_compile_failure_names_the_option(monkeypatch):
    """Where torch.compile cannot work (no C++ compiler, an unsupported platform), the first
    step says which option to turn off, instead of a compiler traceback."""
    from mtt.errors import MttError
    from mtt.testing import molecule

    def failing(*args, **kwargs):
        def run(*args, **kwargs):
            raise torch._dynamo.exc.TorchDynamoException("no working C++ compiler found")

        return run

    monkeypatch.setattr(torch, "compile", failing)
    model = _two_target_model(lora=False)
    batch = collate_graphs([atoms_to_graph(molecule(), model.cutoff, torch.float64)])
    with pytest.raises(MttError, match="compile: false.*|.*compile: false"):
        _compiling_trainer().predict(model, batch, ["energy/forces"], training=True)


def test_eval_stress_is_the_symmetric_part_as_in_ase(tmp_path):
    """pet is not exactly rotation-invariant: dE/dε has an antisymmetric part (a rotation,
    not a deformation). mtt eval's stress is the symmetric part, as metatomic's ASE
    calculator's is (eval wrote the raw, asymmetric gradient)."""
    from metatomic_ase import MetatomicCalculator

    from mtt.api import save_model
    from mtt.evaluate import load_model, predict
    from mtt.testing._suite import periodic_crystal

    model = random_model("pet", HYPERS, torch.float64, generic=False)
    path = str(tmp_path / "model.pt")
    save_model(model.export(), path)
    atoms = periodic_crystal()
    atoms.set_cell(atoms.cell[:] @ np.array([[1.0, 0.1, 0.0], [0.0, 1.0, 0.2], [0.05, 0, 1.0]]))
    [result] = predict(load_model(path), [atoms], "energy", "angstrom", "eV")
    stress = result["stress"]
    np.testing.assert_allclose(stress, stress.T, rtol=0, atol=1e-14)
    atoms.calc = MetatomicCalculator(path)
    voigt = atoms.get_stress()
    np.testing.assert_allclose(stress[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]], voigt, atol=1e-12)
