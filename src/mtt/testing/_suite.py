"""The tests every architecture passes; see :mod:`mtt.testing`."""

import glob
import json
import math
import os
from typing import Any, Dict, Tuple

import ase
import ase.build
import numpy as np
import pytest
import torch
from metatensor.torch import Labels
from metatomic.torch import ModelOutput, load_atomistic_model

from .. import architectures
from ..api import save_model
from ..checkpoints import read_checkpoint, save_checkpoint
from ..data.graph import atoms_to_graph, collate_graphs
from ..errors import MttError
from ..hypers import parse
from ..verification import METADATA_KEY, verify
from ._tools import (
    energy_of,
    engine_gradients,
    exported_in_fresh_process,
    molecule,
    nve_energies_in_fresh_process,
    periodic_crystal,
    random_model,
    systems_with_neighbors,
)


def random_rotation(seed: int) -> np.ndarray:
    """A random orthogonal matrix with determinant +1 (QR of a Gaussian matrix)."""
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def rotated(atoms: ase.Atoms, rotation: np.ndarray) -> ase.Atoms:
    copy = atoms.copy()
    copy.positions = atoms.positions @ rotation.T
    copy.set_cell(np.asarray(atoms.cell[:]) @ rotation.T, scale_atoms=False)
    return copy


def tolerance(dtype: torch.dtype) -> Dict[str, float]:
    return {"rtol": 1e-4, "atol": 1e-4} if dtype == torch.float32 else {"rtol": 1e-9, "atol": 1e-9}


class ArchitectureTests:
    """Subclass as ``class TestMyArch(ArchitectureTests)`` and set the attributes below."""

    architecture: str = ""
    """Registry name of the architecture."""
    model_hypers: Dict[str, Any] = {}
    """Small hypers that keep the tests fast; must give an interaction range below 4 Å."""
    dtypes: Tuple[torch.dtype, ...] = (torch.float32, torch.float64)
    """The dtypes the architecture supports."""
    rotation_invariant: bool = True
    """Whether energies are rotation invariant by construction. Set False for models that
    learn the invariance from rotated data (e.g. PET): the symmetry test then checks
    translations, permutations and periodic images exactly, but not rotations."""

    @pytest.fixture(params=["float32", "float64"])
    def dtype(self, request) -> torch.dtype:
        dtype = getattr(torch, request.param)
        if dtype not in self.dtypes:
            pytest.skip(f"{self.architecture} does not support {request.param}")
        return dtype

    golden_energies: Dict[str, float] = {}
    """Pinned energies (in the checkpoint's unit) of an ethanol molecule for golden
    checkpoints in ``tests/checkpoints``, by file name."""
    generic_targets: bool = True
    """Whether the architecture offers generic targets (vectors, tensors, per-atom scalars)."""

    def model(self, dtype: torch.dtype = torch.float64):
        return random_model(
            self.architecture, self.model_hypers, dtype, generic=self.generic_targets
        )

    def _generic(self, model, frames, dtype, selected=None):
        systems = systems_with_neighbors(model, frames, dtype)
        outputs = {name: model.supported_outputs()[name] for name in model.generic_names}
        result = model(systems, outputs, selected)
        return {name: tensor.block() for name, tensor in result.items()}

    def _predict(self, model, frames, quantities=("energy", "energy/forces", "energy/stress")):
        """Energies and gradients through the training path (graphs, autograd)."""
        dtype = next(model.parameters()).dtype
        graph = collate_graphs([atoms_to_graph(a, model.cutoff, dtype) for a in frames])
        result = model.predict(graph, list(quantities), training=False)
        return {k: v.detach().double().numpy() for k, v in result.items()}

    # --- outputs ----------------------------------------------------------------------------
    def test_output_metadata(self, dtype):
        """Per-system and per-atom energies have metatomic's sample names, shapes and dtype.
        A failure means engines would misread the model's outputs."""
        model = self.model(dtype)
        systems = systems_with_neighbors(model, [molecule(), periodic_crystal()], dtype)
        n_atoms = sum(len(s) for s in systems)
        for kind, names, rows in (("system", ["system"], 2), ("atom", ["system", "atom"], n_atoms)):
            block = model(systems, {"energy": ModelOutput(unit="eV", sample_kind=kind)})[
                "energy"
            ].block()
            assert block.samples.names == names
            assert block.values.shape == (rows, 1)
            assert block.values.dtype == dtype
            assert block.properties.names == ["energy"]

    def test_per_atom_energies_sum_to_total(self, dtype):
        """Per-atom energies add up to the total; a failure means LAMMPS' per-atom energies
        (compute pe/atom) disagree with the total."""
        model = self.model(dtype)
        for atoms in (molecule(), periodic_crystal()):
            total = energy_of(model, atoms, dtype)
            per_atom = energy_of(model, atoms, dtype, per_atom=True)
            assert per_atom.shape == (len(atoms),)
            torch.testing.assert_close(per_atom.sum(), total[0], **tolerance(dtype))

    def test_selected_atoms(self):
        """``selected_atoms`` gives exactly the energy of those atoms, per system and per atom;
        a failure means LAMMPS (which selects local atoms among ghosts) gets wrong energies."""
        model = self.model()
        frames = [molecule(), periodic_crystal()]
        systems = systems_with_neighbors(model, frames, torch.float64)
        chosen = [[0, 1], [0, 4], [1, 0], [1, 3], [1, 7]]
        selected = Labels(["system", "atom"], torch.tensor(chosen, dtype=torch.int32))
        per_atom = [energy_of(model, atoms, per_atom=True) for atoms in frames]
        expected = torch.stack(
            [sum(per_atom[s][a] for s2, a in chosen if s2 == s) for s in range(2)]
        )
        out = model(systems, {"energy": ModelOutput(unit="eV")}, selected)["energy"].block()
        torch.testing.assert_close(out.values.reshape(-1), expected)
        out = model(systems, {"energy": ModelOutput(unit="eV", sample_kind="atom")}, selected)[
            "energy"
        ].block()
        assert out.samples.values.tolist() == chosen
        torch.testing.assert_close(
            out.values.reshape(-1), torch.stack([per_atom[s][a] for s, a in chosen])
        )

    def test_ghost_atoms_like_lammps(self):
        """A non-periodic cluster of a crystal's images, with the original atoms selected,
        has the periodic crystal's energy: how LAMMPS evaluates the model with ghost atoms."""
        model = self.model()
        crystal = periodic_crystal()
        widths = crystal.cell.volume / np.linalg.norm(
            np.cross(crystal.cell[[1, 2, 0]], crystal.cell[[2, 0, 1]]), axis=1
        )
        reps = 2 * int(math.ceil(2 * model.cutoff / widths.min())) + 1
        cluster = crystal.repeat(reps)
        middle = reps // 2 * (len(crystal) * (reps * reps + reps + 1))
        cluster.pbc = False
        selected = Labels(
            ["system", "atom"],
            torch.tensor([[0, middle + i] for i in range(len(crystal))], dtype=torch.int32),
        )
        local = energy_of(model, cluster, selected=selected)
        torch.testing.assert_close(local, energy_of(model, crystal), rtol=1e-10, atol=1e-10)

    def test_isolated_atoms(self, dtype):
        """A single atom and atoms beyond the cutoff of each other are handled (no neighbours)
        and two far-apart atoms have the sum of their single-atom energies."""
        model = self.model(dtype)
        single = [energy_of(model, ase.Atoms(s), dtype) for s in ("H", "O")]
        pair = ase.Atoms("HO", positions=[[0, 0, 0], [0, 0, 3 * model.cutoff + 1]])
        assert all(torch.isfinite(e).all() for e in single)
        torch.testing.assert_close(
            energy_of(model, pair, dtype)[0], single[0][0] + single[1][0], **tolerance(dtype)
        )

    def test_cell_smaller_than_cutoff(self):
        """A periodic cell smaller than the cutoff and its supercell have the same energy per
        atom: periodic images are counted right."""
        model = self.model()
        crystal = periodic_crystal()
        supercell = crystal.repeat((2, 1, 2))
        assert min(crystal.cell.lengths()) < 2 * model.cutoff
        torch.testing.assert_close(
            energy_of(model, supercell) / 4, energy_of(model, crystal), rtol=1e-10, atol=1e-10
        )

    # --- symmetry ---------------------------------------------------------------------------
    def test_invariance_and_equivariance(self, dtype):
        """Energies are invariant and forces rotate with the structure under rotations,
        translations, permutations and a choice of periodic image (rotations only checked
        for ``rotation_invariant`` architectures)."""
        model = self.model(dtype)
        tol = tolerance(dtype)
        for atoms in (molecule(), periodic_crystal()):
            ref = self._predict(model, [atoms])
            rotation = random_rotation(3) if self.rotation_invariant else np.eye(3)
            moved = rotated(atoms, rotation)
            moved.positions += np.array([0.3, -1.2, 2.5])
            if atoms.pbc.all():
                moved.positions[0] += moved.cell[1]  # another periodic image of atom 0
            out = self._predict(model, [moved])
            np.testing.assert_allclose(out["energy"], ref["energy"], **tol)
            np.testing.assert_allclose(
                out["energy/forces"], ref["energy/forces"] @ rotation.T, **tol
            )
            permutation = np.random.default_rng(0).permutation(len(atoms))
            out = self._predict(model, [atoms[permutation]])
            np.testing.assert_allclose(out["energy"], ref["energy"], **tol)
            np.testing.assert_allclose(
                out["energy/forces"], ref["energy/forces"][permutation], **tol
            )

    def test_generic_targets_shapes_and_symmetry(self, dtype):
        """Generic targets have metatomic's layout (samples, Cartesian components, one
        property per sub-target); scalars are invariant, vectors rotate as ``R v`` and rank-2
        tensors as ``R T R^T`` and are symmetric. A failure means dipoles or polarizabilities
        would come out in the wrong frame."""
        if not self.generic_targets:
            pytest.skip(f"{self.architecture} has no generic targets")
        model = self.model(dtype)
        frames = [molecule(), periodic_crystal()]
        blocks = self._generic(model, frames, dtype)
        n_atoms = sum(len(a) for a in frames)
        assert blocks["mtt::dipole"].values.shape == (2, 3, 1)
        assert [c.names for c in blocks["mtt::polar"].components] == [["xyz_1"], ["xyz_2"]]
        assert blocks["mtt::polar"].values.shape == (2, 3, 3, 1)
        assert blocks["mtt::charges"].values.shape == (n_atoms, 2)
        assert blocks["mtt::charges"].samples.names == ["system", "atom"]
        assert blocks["mtt::gap"].values.shape == (2, 1)
        polar = blocks["mtt::polar"].values.detach()
        torch.testing.assert_close(polar, polar.transpose(1, 2), **tolerance(dtype))
        rotation = random_rotation(5)
        turned = self._generic(model, [rotated(a, rotation) for a in frames], dtype)
        r = torch.tensor(rotation, dtype=dtype)
        torch.testing.assert_close(
            turned["mtt::dipole"].values.detach()[..., 0],
            blocks["mtt::dipole"].values.detach()[..., 0] @ r.T,
            **tolerance(dtype),
        )
        torch.testing.assert_close(
            turned["mtt::polar"].values.detach()[..., 0],
            r @ polar[..., 0] @ r.T,
            **tolerance(dtype),
        )
        for name in ("mtt::charges", "mtt::gap"):
            torch.testing.assert_close(
                turned[name].values.detach(), blocks[name].values.detach(), **tolerance(dtype)
            )

    def test_generic_targets_with_selected_atoms(self):
        """Per-atom generic outputs give the rows of the selected atoms; per-structure sums
        and means run over the selected atoms only (what LAMMPS would get)."""
        if not self.generic_targets:
            pytest.skip(f"{self.architecture} has no generic targets")
        model = self.model()
        frames = [molecule(), periodic_crystal()]
        everything = self._generic(model, frames, torch.float64)
        chosen = [[0, 2], [1, 1], [1, 5]]
        selected = Labels(["system", "atom"], torch.tensor(chosen, dtype=torch.int32))
        some = self._generic(model, frames, torch.float64, selected)
        charges = everything["mtt::charges"]
        rows = [charges.samples.values.tolist().index(pair) for pair in chosen]
        torch.testing.assert_close(some["mtt::charges"].values, charges.values[rows])
        assert some["mtt::charges"].samples.values.tolist() == chosen

    # --- gradients against finite differences -----------------------------------------------
    def test_forces_finite_differences(self):
        """Forces equal central finite differences of the energy (float64); a failure means
        MD would not conserve energy."""
        model = self.model()
        for atoms in (molecule(), periodic_crystal()):
            forces = self._predict(model, [atoms])["energy/forces"]
            delta = 1e-5
            numerical = np.zeros_like(forces)
            for i in range(len(atoms)):
                for k in range(3):
                    energies = []
                    for sign in (1, -1):
                        displaced = atoms.copy()
                        displaced.positions[i, k] += sign * delta
                        energies.append(float(energy_of(model, displaced)[0]))
                    numerical[i, k] = -(energies[0] - energies[1]) / (2 * delta)
            np.testing.assert_allclose(forces, numerical, rtol=1e-5, atol=1e-6)

    def test_stress_finite_differences(self):
        """The stress equals (1/V) dE/dε by central finite differences of cells under
        symmetric strains (a deformation; an antisymmetric strain only rotates)."""
        model = self.model()
        atoms = periodic_crystal()
        stress = self._predict(model, [atoms])["energy/stress"][0]
        delta = 1e-5
        numerical = np.zeros((3, 3))
        for a in range(3):
            for b in range(3):
                energies = []
                for sign in (1, -1):
                    strain = np.eye(3)
                    strain[a, b] += sign * delta / 2
                    strain[b, a] += sign * delta / 2
                    strained = atoms.copy()
                    strained.set_cell(np.asarray(atoms.cell[:]) @ strain, scale_atoms=True)
                    energies.append(float(energy_of(model, strained)[0]))
                numerical[a, b] = (energies[0] - energies[1]) / (2 * delta) / atoms.get_volume()
        np.testing.assert_allclose(stress, numerical, rtol=1e-5, atol=1e-7)

    def test_engine_gradients(self):
        """Forces and stress as engines get them (``backward`` through the metatomic
        ``forward``; for architectures with lean gradients, through their linearised energy)
        equal the training path's, for two systems weighted differently in one batch; with
        LAMMPS-like selected atoms they equal those of the full autograd graph."""
        model = self.model()
        frames = [molecule(), periodic_crystal()]
        energies, position_grads, strain_grads = engine_gradients(model, frames, [1.0, -0.5])
        reference = self._predict(model, frames)
        np.testing.assert_allclose(energies.numpy(), reference["energy"].reshape(-1), rtol=1e-12)
        gradient = np.concatenate([g.numpy() for g in position_grads])
        gradient[len(frames[0]) :] /= -0.5  # undo the weight of the second system
        np.testing.assert_allclose(-gradient, reference["energy/forces"], rtol=1e-9, atol=1e-12)
        virial = strain_grads[1].numpy() / -0.5
        virial = (virial + virial.T) / 2  # the stress is its symmetric part, as in ASE's
        np.testing.assert_allclose(
            virial / frames[1].get_volume(), reference["energy/stress"][1], rtol=1e-9, atol=1e-12
        )

        selected = Labels(
            ["system", "atom"], torch.tensor([[0, 1], [0, 4], [1, 0], [1, 3]], dtype=torch.int32)
        )
        full_graph = model.export(second_derivatives=True).module
        for got, expected in zip(
            engine_gradients(model, frames, [0.7, 1.3], selected),
            engine_gradients(full_graph, frames, [0.7, 1.3], selected),
        ):
            for a, b in zip(got, expected):
                torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
        # atoms without neighbours, in a batch with pairs and alone (no pair at all: a lone
        # atom in ASE crashed soap_bpnn's written-out gradient)
        apart = ase.Atoms("HOH", positions=[[0, 0, 0], [0, 0, 10], [0, 10, 0]])
        for batch in ([apart, molecule()], [apart], [ase.Atoms("O")]):
            weights = [1.0, 0.5][: len(batch)]
            for got, expected in zip(
                engine_gradients(model, batch, weights),
                engine_gradients(full_graph, batch, weights),
            ):
                for a, b in zip(got, expected):
                    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)

    def test_energies_under_no_grad(self):
        """Positions that require gradients but a forward under ``torch.no_grad()`` (an
        engine wanting energies only): the energies, without autograd graph (architectures
        with lean gradients must not differentiate then)."""
        model = self.model()
        systems = systems_with_neighbors(model, [molecule()], torch.float64, positions_grad=True)
        with torch.no_grad():
            energy = model(systems, {"energy": ModelOutput(unit="eV")})["energy"].block().values
        assert energy.grad_fn is None
        torch.testing.assert_close(energy.reshape(-1), energy_of(model, molecule()))

    def test_atoms_at_the_same_position_are_refused(self):
        """A duplicated atom (two atoms at one position) in an engine: the energy has no
        value there, and models gave NaN energies and forces that MD carried on with; the
        model stops with the two atoms named."""
        model = self.model()
        atoms = molecule()
        atoms.positions[3] = atoms.positions[1]
        for engine_model in (model, model.export().module):  # eager, and as exported
            with pytest.raises(Exception, match="atoms 1 and 3 of system 1 are at the same"):
                engine_gradients(engine_model, [molecule(), atoms], [1.0, 1.0])

    # --- TorchScript and engines ------------------------------------------------------------
    def test_export_save_load(self, dtype, tmp_path):
        """The exported model scripts, saves and loads, and gives the eager model's energies
        (per system and per atom); it declares the model's units, types and range."""
        model = self.model(dtype)
        path = str(tmp_path / "model.pt")
        save_model(model.export(), path)
        loaded = load_atomistic_model(path)
        capabilities = loaded.capabilities()
        assert capabilities.length_unit == "angstrom"
        assert capabilities.outputs["energy"].unit == "eV"
        assert capabilities.atomic_types == model.atomic_types
        assert capabilities.interaction_range >= model.cutoff
        assert capabilities.dtype == str(dtype).split(".")[-1]
        frames = [molecule(), periodic_crystal()]
        from metatomic.torch import ModelEvaluationOptions

        for kind in ("system", "atom"):
            options = ModelEvaluationOptions(
                length_unit="angstrom", outputs={"energy": ModelOutput(unit="eV", sample_kind=kind)}
            )
            systems = systems_with_neighbors(model, frames, dtype)
            exported = loaded(systems, options, check_consistency=True)["energy"].block().values
            eager = (
                model(systems, {"energy": ModelOutput(unit="eV", sample_kind=kind)})["energy"]
                .block()
                .values
            )
            torch.testing.assert_close(exported, eager.detach())

    def _last_layer(self, model, frames):
        if not _offers_last_layer_features(model):
            pytest.skip(f"{self.architecture} does not offer last-layer features (no LLPR)")
        dtype = next(model.parameters()).dtype
        graph = collate_graphs([atoms_to_graph(a, model.cutoff, dtype) for a in frames])
        species = model.type_to_index[graph.types]
        features = model.last_layer_features(graph, species).detach().double()
        energies = model.per_atom_energies(graph, species).detach().double()
        return features, energies

    def test_energies_are_linear_in_the_last_layer_features(self):
        """Per-atom energies are one linear function of the last-layer features (least
        squares over more atoms than features leaves only rounding), which is what the
        energy uncertainties (LLPR) assume. A failure means the uncertainties describe
        features that the energies are not computed from."""
        model = self.model(torch.float64)
        frames = [molecule(seed) for seed in range(3)] + [periodic_crystal()]
        features, energies = self._last_layer(model, frames)
        while features.shape[0] < 2 * features.shape[1] + 10:
            frames.append(periodic_crystal(len(frames)))
            features, energies = self._last_layer(model, frames)
        weights = torch.linalg.lstsq(features, energies).solution
        residual = (features @ weights - energies).abs().max()
        assert residual < 1e-8 * (1 + energies.abs().max()), residual
        assert energies.std() > 1e-6  # a real check, not of constant energies

    def test_exported_uncertainties(self, tmp_path):
        """A model with calibrated uncertainties declares ``energy_uncertainty`` and the
        exported model gives the eager model's values per system and per selected atom."""
        model = self.model(torch.float64)
        frames = [molecule(), periodic_crystal()]
        features, _ = self._last_layer(model, frames)
        generator = torch.Generator().manual_seed(0)
        dim = features.shape[1]
        whitening = torch.randn(dim, dim, generator=generator, dtype=torch.float64)
        model.uncertainty.set_state(
            {"whitening": whitening, "alpha2": torch.full((len(model.target_names),), 0.3)},
            len(model.target_names),
        )
        path = str(tmp_path / "model.pt")
        save_model(model.export(), path)
        loaded = load_atomistic_model(path)
        assert "energy_uncertainty" in loaded.capabilities().outputs
        from metatomic.torch import ModelEvaluationOptions

        selected = Labels(["system", "atom"], torch.tensor([[0, 1], [1, 0], [1, 2]]).int())
        for kind in ("system", "atom"):
            output = {"energy_uncertainty": ModelOutput(unit="eV", sample_kind=kind)}
            options = ModelEvaluationOptions(
                length_unit="angstrom", outputs=output, selected_atoms=selected
            )
            systems = systems_with_neighbors(model, frames, torch.float64)
            exported = loaded(systems, options, check_consistency=True)
            eager = model(systems, output, selected)
            values = exported["energy_uncertainty"].block().values
            assert values.shape == (2 if kind == "system" else 3, 1)
            assert torch.all(values > 0)
            torch.testing.assert_close(values, eager["energy_uncertainty"].block().values.detach())

    def test_export_in_another_dtype_and_device(self, tmp_path):
        """A float64 model exported in float32 (``mtt export --dtype``) declares float32 and
        agrees with the float64 model to float32 precision; the loaded model moves between
        devices with ``.to()`` (CUDA only where available)."""
        if torch.float32 not in self.dtypes:
            pytest.skip(f"{self.architecture} has no float32")
        from metatomic.torch import ModelEvaluationOptions

        model = self.model(torch.float64)
        path = str(tmp_path / "model32.pt")
        save_model(model.to(torch.float32).export(), path)
        loaded = load_atomistic_model(path)
        assert loaded.capabilities().dtype == "float32"
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        frames = [molecule(), periodic_crystal()]
        reference = torch.cat([energy_of(model.to(torch.float64), a) for a in frames])
        options = ModelEvaluationOptions(
            length_unit="angstrom", outputs={"energy": ModelOutput(unit="eV")}
        )
        for device in devices:
            moved = loaded.to(device)
            systems = [s.to(device) for s in systems_with_neighbors(model, frames, torch.float32)]
            energies = moved(systems, options, True)["energy"].block().values
            torch.testing.assert_close(
                energies.reshape(-1).double().cpu(), reference, rtol=1e-5, atol=1e-4
            )

    def test_exported_model_in_fresh_process(self, tmp_path):
        """Energy, forces and stress from the ``.pt`` file alone, through metatomic's ASE
        calculator in a process that cannot import mtt, equal the eager model's."""
        model = self.model(torch.float64)
        path = str(tmp_path / "model.pt")
        save_model(model.export(), path)
        frames = [molecule(), periodic_crystal()]
        results = exported_in_fresh_process(path, frames, str(tmp_path))
        reference = self._predict(model, frames)
        offsets = np.cumsum([0] + [len(a) for a in frames])
        for k, result in enumerate(results):
            np.testing.assert_allclose(result["energy"], reference["energy"][k], rtol=1e-10)
            np.testing.assert_allclose(
                np.array(result["forces"]),
                reference["energy/forces"][offsets[k] : offsets[k + 1]],
                rtol=1e-8,
                atol=1e-10,
            )
        # ASE keeps the stress in Voigt form, its symmetric part; models that are not exactly
        # rotation invariant (see ``rotation_invariant``) also have an antisymmetric one
        stress = reference["energy/stress"][1]
        np.testing.assert_allclose(
            np.array(results[1]["stress"]), (stress + stress.T) / 2, rtol=1e-8, atol=1e-10
        )

    def test_energy_conservation_in_nve(self, tmp_path):
        """A short NVE run of the exported model (ASE velocity Verlet, fresh process) conserves
        the total energy: the drift per atom per ps stays far below what MD users accept. A
        failure means forces are not the exact gradient of the energy, or are not smooth."""
        model = self.model(torch.float64)
        path = str(tmp_path / "model.pt")
        save_model(model.export(), path)
        steps, timestep_fs = 400, 0.25
        energies = np.array(
            nve_energies_in_fresh_process(path, molecule(), str(tmp_path), steps, timestep_fs)
        )
        duration_ps = steps * timestep_fs / 1000
        drift = abs(energies[-1] - energies[0]) / len(molecule()) / duration_ps
        fluctuation = energies.std() / len(molecule())
        print(f"NVE drift {drift * 1000:.4f} meV/atom/ps, fluctuation {fluctuation * 1e3:.4f} meV")
        assert drift < 1e-3  # eV/atom/ps
        assert fluctuation < 1e-3

    def test_exported_model_verifies(self, dtype, tmp_path):
        """The reference results stored at export are reproduced by the exported model (what
        ``mtt verify`` checks), and a tampered reference is caught."""
        model = self.model(dtype)
        path = str(tmp_path / "model.pt")
        save_model(model.export(), path)
        loaded = load_atomistic_model(path)
        title = str(loaded.metadata()).splitlines()[0]  # metatomic's words around the name
        assert title == f"This is the mtt {model.__architecture__} model"
        stored = json.loads(loaded.metadata().extra[METADATA_KEY])
        assert verify(loaded, stored, loaded.capabilities().dtype) == []
        stored["structures"][1]["forces"][0][0] += 1e-2
        assert len(verify(loaded, stored, loaded.capabilities().dtype)) == 1

    # --- checkpoints ------------------------------------------------------------------------
    def test_checkpoint_round_trip(self, dtype, tmp_path):
        """A model saved to a checkpoint file and loaded back predicts the same energies."""
        model = self.model(dtype)
        path = str(tmp_path / "model.ckpt")
        save_checkpoint(model.get_checkpoint(), path)
        loaded = type(model).load_checkpoint(read_checkpoint(path), "export").eval()
        for atoms in (molecule(), periodic_crystal()):
            torch.testing.assert_close(
                energy_of(loaded, atoms, dtype), energy_of(model, atoms, dtype)
            )

    def test_golden_checkpoints_still_load(self, tmp_path):
        """Checkpoints written by earlier versions (``tests/checkpoints/*.ckpt`` of the
        architecture) still load through ``upgrade_checkpoint``, export, and restart training.
        A failure means users' old checkpoints would be unusable after an upgrade."""
        folder = os.path.join(
            os.path.dirname(architectures.load(self.architecture).__file__), "tests", "checkpoints"
        )
        paths = sorted(glob.glob(os.path.join(folder, "*.ckpt")))
        if not paths:
            pytest.skip(f"{self.architecture} has no golden checkpoints yet")
        for path in paths:
            checkpoint = read_checkpoint(path)
            architecture = architectures.load(checkpoint["architecture"])
            model = architecture.__model__.load_checkpoint(checkpoint, "export")
            save_model(model.export(), str(tmp_path / "golden.pt"))
            hypers_class = architecture.__trainer__.__hypers__
            train_hypers = parse(hypers_class, checkpoint["train_hypers"], "training")
            trainer = architecture.__trainer__.load_checkpoint(checkpoint, train_hypers, "restart")
            assert trainer.epoch == checkpoint["trainer_state"]["epoch"]

    def test_golden_checkpoints_predict_pinned_energies(self):
        """Each golden checkpoint named in ``golden_energies`` still gives the energy of an
        ethanol molecule it gave when written (regression numbers pinned in the architecture's
        test class; re-pin only when the checkpoint format changes on purpose)."""
        if not self.golden_energies:
            pytest.skip(f"{self.architecture} pins no golden energies")
        folder = os.path.join(
            os.path.dirname(architectures.load(self.architecture).__file__), "tests", "checkpoints"
        )
        for name, expected in self.golden_energies.items():
            checkpoint = read_checkpoint(os.path.join(folder, name))
            model_class = architectures.load(self.architecture).__model__
            model = model_class.load_checkpoint(checkpoint, "export").eval()
            dtype = model.baseline.dtype
            energy = float(energy_of(model, ase.build.molecule("CH3CH2OH"), dtype)[0])
            assert abs(energy - expected) < 0.02, (name, energy)

    def test_newer_checkpoint_refused(self):
        """A checkpoint from a newer mtt fails with a message to upgrade, not a crash."""
        model = self.model()
        checkpoint = model.get_checkpoint()
        checkpoint["model_checkpoint_version"] = model.__checkpoint_version__ + 1
        with pytest.raises(MttError, match="upgrade mtt"):
            type(model).load_checkpoint(checkpoint, "export")


def _offers_last_layer_features(model) -> bool:
    from ..energy_model import EnergyModel

    return type(model).last_layer_features is not EnergyModel.last_layer_features
