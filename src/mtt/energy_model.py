"""What every model of energies shares, so that an architecture writes only its layers.

:class:`EnergyModel` implements :class:`mtt.abc.ModelInterface` for models that map a
:class:`mtt.data.graph.Graph` to per-atom energies: the composition baseline and the energy scale
(saved with the model, applied at inference), metatomic outputs with ``selected_atoms``,
checkpoints, export, and the default training data (graphs with vesin neighbour lists, computed
once). An architecture subclasses it and implements :meth:`EnergyModel.per_atom_energies`.

Direct (non-conservative) forces and stress are optional: an architecture with such heads sets
``direct_kinds`` and overrides :meth:`EnergyModel.per_atom_energies_and_direct`; this class
declares, exports (``non_conservative_force``, ``non_conservative_stress``) and trains them
(quantities ``<target>/direct_forces``, ``<target>/direct_stress`` against the labels of
``<target>/forces`` and ``<target>/stress``).
"""

import copy
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import ase
import torch
from metatensor.torch import Labels, TensorMap
from metatomic.torch import (
    AtomisticModel,
    ModelCapabilities,
    ModelMetadata,
    ModelOutput,
    NeighborListOptions,
    System,
)

from .abc import CheckpointContext, ModelInterface
from .checkpoints import upgrade_model_checkpoint
from .data.graph import (
    MIN_DISTANCE,
    Graph,
    atoms_to_graph,
    collate_graphs,
    edge_vectors,
    systems_to_graph,
)
from .data.targets import DatasetInfo
from .direct import declared_outputs, direct_tensormaps, structure_stress
from .errors import MttError, did_you_mean
from .gradients import energies_and_gradients
from .heads import GenericHead, generic_in_units, generic_tensormap, reduce_atoms
from .hypers import parse, to_dict
from .lean_gradients import linked_energies
from .lora import adapter_config, merge_adapters, restore_adapters
from .metadata import merge_metadata
from .outputs import scalar_tensormap, selected_atom_indices
from .uncertainty import LastLayerUncertainty, uncertainty_name
from .units import conversion
from .verification import METADATA_KEY, verification_metadata
from .version import __version__

DTYPE_NAMES = {torch.float32: "float32", torch.float64: "float64"}


class EnergyModel(ModelInterface):
    """Base of architectures predicting energies as sums of per-atom contributions."""

    __architecture__: str = ""  # registry name, set by mtt.architectures on import
    # TorchScript needs the element types of lists that may be empty
    atomic_types: List[int]
    target_names: List[str]
    energy_units: List[str]
    generic_names: List[str]
    generic_per_atom: List[bool]
    generic_reduction: List[str]
    generic_ranks: List[int]
    uncertainty_names: List[str]
    direct_kinds: List[str]

    def __init__(
        self,
        hypers: Any,
        dataset_info: DatasetInfo,
        metadata: Optional[ModelMetadata],
        cutoff: float,
    ):
        super().__init__(
            hypers, dataset_info, metadata if metadata is not None else ModelMetadata()
        )
        self.cutoff = float(cutoff)
        # how far engines must provide neighbours (ghost atoms) for exact energies: the cutoff
        # for models that read each atom's neighbours once; message passing multiplies it
        self.interaction_range = self.cutoff
        self.atomic_types: List[int] = [int(z) for z in dataset_info.atomic_types]
        energies = [t for t in dataset_info.targets.values() if t.kind == "energy"]
        generic = [t for t in dataset_info.targets.values() if t.kind != "energy"]
        self.target_names: List[str] = [t.name for t in energies]
        self.energy_units: List[str] = [t.unit for t in energies]
        # generic targets (mtt::<name>): heads added by the architecture (add_generic_heads)
        self.generic_names: List[str] = [t.name for t in generic]
        self.generic_per_atom: List[bool] = [t.per_atom for t in generic]
        self.generic_reduction: List[str] = [t.reduction for t in generic]
        self.generic_ranks: List[int] = [t.rank for t in generic]
        self.generic_heads = torch.nn.ModuleList()
        self.register_buffer("generic_shift", torch.zeros(len(generic), dtype=torch.float64))
        self.register_buffer("generic_scale", torch.ones(len(generic), dtype=torch.float64))
        type_to_index = torch.full((119,), -1, dtype=torch.int64)
        type_to_index[self.atomic_types] = torch.arange(len(self.atomic_types))
        self.register_buffer("type_to_index", type_to_index)
        # E_i = scale * NN_i + baseline[type_i], one column per energy target
        n_targets, n_types = len(self.target_names), len(self.atomic_types)
        self.register_buffer("baseline", torch.zeros(n_targets, n_types, dtype=torch.float64))
        self.register_buffer("scale", torch.ones(n_targets, dtype=torch.float64))
        self.nl_options = NeighborListOptions(cutoff=self.cutoff, full_list=True, strict=True)
        # energy uncertainties (LLPR), calibrated after training when asked for
        self.uncertainty = LastLayerUncertainty()
        self.uncertainty_names: List[str] = [uncertainty_name(n) for n in self.target_names]
        # direct heads ("forces", "stress"): set by architectures that have them
        self.direct_kinds: List[str] = []
        # forces and stress by energies_and_vector_gradient at inference (mtt.lean_gradients):
        # set by architectures that implement it; export(second_derivatives=True) clears it
        self.lean_gradients = False

    # --- what an architecture implements --------------------------------------------------
    def per_atom_energies(self, graph: Graph, species: torch.Tensor) -> torch.Tensor:
        """Dimensionless per-atom energies ``[N, n_targets]`` (scaled and shifted here)."""
        raise NotImplementedError

    def per_atom_energies_and_direct(
        self, graph: Graph, species: torch.Tensor, direct: bool
    ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """Dimensionless per-atom energies and, when ``direct``, the dimensionless outputs of
        the direct heads of every kind in ``direct_kinds``, from the same pass:
        ``{"forces": [N, n_targets, 3], "stress": [N, n_targets, 3, 3]}``, the stress as
        per-atom contributions to the virial (summed per structure and divided by the volume
        here). Architectures with direct heads override this; by default there are none."""
        return self.per_atom_energies(graph, species), {}

    def energies_and_vector_gradient(
        self,
        graph: Graph,
        species: torch.Tensor,
        vectors: torch.Tensor,
        atom_weights: torch.Tensor,
        target: int,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Dimensionless per-atom energies ``[N, n_targets]`` (without autograd graph) and the
        gradient of ``sum_a atom_weights[a] * energies[a, target]`` with respect to the edge
        vectors ``vectors`` (``[E, 3]``, detached), computed so that memory stays small: see
        :mod:`mtt.lean_gradients`. Architectures that set ``lean_gradients`` implement it."""
        raise NotImplementedError("this architecture does not compute lean gradients")

    def per_atom_features(self, graph: Graph, species: torch.Tensor) -> torch.Tensor:
        """Rotation-invariant per-atom features ``[N, F]`` for generic targets' heads."""
        raise NotImplementedError

    def last_layer_features(self, graph: Graph, species: torch.Tensor) -> torch.Tensor:
        """Per-atom features ``[N, D]`` of which the dimensionless per-atom energies are a
        linear function (the inputs of the output layer), for uncertainties (LLPR).
        Architectures that offer them override this."""
        raise NotImplementedError("this architecture does not offer last-layer features")

    def add_generic_heads(self, n_features: int) -> None:
        """Create the heads of the generic targets; architectures that offer per-atom
        features call this at the end of their ``__init__``."""
        self.generic_features = n_features  # for heads added when fine-tuning (restart)
        for name in self.generic_names:
            self.generic_heads.append(self.make_generic_head(self.dataset_info.targets[name]))

    def make_generic_head(self, target: Any) -> torch.nn.Module:
        """A new head for the generic target ``target`` (a ``TargetInfo``), at creation and
        when fine-tuning adds one: by default an equivariant readout of the per-atom features
        (:func:`add_generic_heads`). Architectures with their own heads override this."""
        n_features = getattr(self, "generic_features", 0)
        if not n_features:
            raise MttError(
                f"{self.__architecture__} does not offer generic targets such as "
                f"{target.name!r}; use soap_bpnn or painn for them, or remove them"
            )
        return GenericHead(n_features, target.rank, target.num_subtargets, self.cutoff)

    def head_modules(self) -> List[str]:
        """Names of the Linear layers that map features to the energies (one output per
        target), for ``finetune.method: heads`` and new targets. Architectures override."""
        raise MttError(
            f"{self.__architecture__} does not name its output layers, so 'heads' fine-tuning "
            "and new targets are not available for it; use method full, lora or freeze"
        )

    def head_parameter_names(self) -> List[str]:
        names = set(self.head_modules())
        return [
            n
            for n, _ in self.named_parameters()
            if n.rsplit(".", 1)[0] in names or n.rsplit(".", 2)[0] in names
        ]

    def fit_statistics(self, batches: Iterable[Graph]) -> None:
        """Fix data-dependent constants (e.g. descriptor statistics) before training starts;
        called once with the training batches. Nothing to do by default."""

    # --- numerics shared by training and the exported model -------------------------------
    def atomic_energies(self, graph: Graph) -> torch.Tensor:
        """Per-atom energies ``[N, n_targets]`` in the targets' units."""
        return self.energies_and_direct(graph, False)[0]

    def energies_and_direct(
        self, graph: Graph, direct: bool
    ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """Per-atom energies ``[N, n_targets]`` and, when ``direct``, the per-atom direct
        predictions by quantity (``energy/direct_forces``: ``[N, 3]``; ``energy/direct_stress``:
        ``[N, 3, 3]`` virial contributions, not yet divided by the volume), in the targets'
        units: the heads' outputs times the energy scale, like the energies."""
        species = self.type_to_index[graph.types]
        raw, heads = self.per_atom_energies_and_direct(graph, species, direct)
        scale = self.scale.to(raw.dtype)
        results: Dict[str, torch.Tensor] = {}
        for kind, values in heads.items():
            for index, name in enumerate(self.target_names):
                results[name + "/direct_" + kind] = values[:, index] * scale[index]
        return self.in_target_units(raw, species), results

    def in_target_units(self, raw: torch.Tensor, species: torch.Tensor) -> torch.Tensor:
        """Per-atom energies in the targets' units: the dimensionless ``raw`` ``[N,
        n_targets]`` times the energy scale, plus the composition baseline."""
        scale = self.scale.to(raw.dtype)
        return raw * scale + self.baseline.to(raw.dtype)[:, species].T

    def direct_quantities(self) -> List[str]:
        """The quantities of the direct heads: ``<target>/direct_forces`` for energy targets
        with force labels, ``<target>/direct_stress`` for those with stress labels."""
        return [
            f"{name}/direct_{kind}"
            for kind in self.direct_kinds
            for name in self.target_names
            if getattr(self.dataset_info.targets[name], kind)
        ]

    def forward(
        self,
        systems: List[System],
        outputs: Dict[str, ModelOutput],
        selected_atoms: Optional[Labels] = None,
    ) -> Dict[str, TensorMap]:
        graph = systems_to_graph(systems, self.nl_options)
        results: Dict[str, TensorMap] = {}
        direct = False
        for name in outputs:
            direct = direct or name.startswith("non_conservative_")
        wanted: List[int] = []
        lean = self.lean_gradients and not self.training and not direct
        for index, name in enumerate(self.target_names):
            if name in outputs:
                wanted.append(index)
                lean = lean and outputs[name].sample_kind != "atom"
        if direct or len(wanted) > 0:
            links: Dict[str, torch.Tensor] = {}
            # the graph's tensors are built here, so they require gradients only when autograd
            # records (not under no_grad) and the engine asked for them
            needs_gradient = graph.positions.requires_grad or graph.cells.requires_grad
            if lean and needs_gradient:
                energies, links = self.lean_energies(graph, wanted, selected_atoms)
            else:
                energies, direct_values = self.energies_and_direct(graph, direct)
                results.update(direct_tensormaps(graph, direct_values, outputs, selected_atoms))
            for index in wanted:
                name = self.target_names[index]
                link: Optional[torch.Tensor] = None
                if name in links:
                    link = links[name]
                results[name] = scalar_tensormap(
                    energies[:, index],
                    graph.system_index,
                    graph.n_atoms,
                    "energy",
                    outputs[name].sample_kind == "atom",
                    selected_atoms,
                    link,
                )
        requested: List[int] = []
        for index, name in enumerate(self.uncertainty_names):
            if name in outputs:
                requested.append(index)
        if len(requested) > 0:
            features = self.last_layer_features(graph, self.type_to_index[graph.types])
            for index in requested:
                name = self.uncertainty_names[index]
                results[name] = self.uncertainty.tensormap(
                    features,
                    index,
                    graph.system_index,
                    graph.n_atoms,
                    outputs[name].sample_kind == "atom",
                    selected_atoms,
                )
        if any(name in outputs for name in self.generic_names):
            values = self.generic_values(graph)
            for index, name in enumerate(self.generic_names):
                if name in outputs:
                    results[name] = generic_tensormap(
                        values[index],
                        graph.system_index,
                        graph.n_atoms,
                        self.generic_ranks[index],
                        # a per-atom target asked per structure: reduced (the total charge)
                        self.generic_per_atom[index] and outputs[name].sample_kind == "atom",
                        self.generic_reduction[index],
                        selected_atoms,
                    )
        return results

    def lean_energies(
        self, graph: Graph, wanted: List[int], selected_atoms: Optional[Labels]
    ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """Per-atom energies without autograd graph, and for each target in ``wanted`` the
        zero-valued per-system term that carries their gradient (:mod:`mtt.lean_gradients`)."""
        species = self.type_to_index[graph.types]
        vectors = edge_vectors(graph)
        n_atoms = graph.positions.shape[0]
        # only the selected atoms' energies are summed (LAMMPS leaves its ghosts out)
        atom_weights = torch.zeros(n_atoms, dtype=vectors.dtype, device=vectors.device)
        atom_weights = atom_weights.index_fill(
            0, selected_atom_indices(graph.n_atoms, selected_atoms), 1.0
        )
        edge_system = graph.system_index.index_select(0, graph.edge_i)
        scale = self.scale.to(vectors.dtype)
        raw = torch.zeros_like(atom_weights).unsqueeze(1).expand(-1, len(self.target_names))
        links: Dict[str, torch.Tensor] = {}
        for index in wanted:
            raw, gradient = self.energies_and_vector_gradient(
                graph, species, vectors.detach(), atom_weights, index
            )
            links[self.target_names[index]] = linked_energies(
                gradient * scale[index], vectors, edge_system, graph.n_atoms.shape[0]
            )
        return self.in_target_units(raw, species), links

    def generic_values(self, graph: Graph) -> List[torch.Tensor]:
        """Per-atom values ``[N, C, k]`` of every generic target, in the targets' units."""
        species = self.type_to_index[graph.types]
        features = self.per_atom_features(graph, species)
        vectors = edge_vectors(graph)
        values: List[torch.Tensor] = []
        for index, head in enumerate(self.generic_heads):
            raw = head(features, vectors, graph.edge_i)
            values.append(
                generic_in_units(raw, self.generic_scale[index], self.generic_shift[index])
            )
        return values

    def requested_neighbor_lists(self) -> List[NeighborListOptions]:
        return [self.nl_options]

    def supported_outputs(self) -> Dict[str, ModelOutput]:
        outputs = {
            name: ModelOutput(
                unit=unit,
                sample_kind="atom",
                description=_described(self.dataset_info.targets[name].description, name),
            )
            for name, unit in zip(self.target_names, self.energy_units)
        }
        if self.uncertainty.calibrated():
            for name, unit in zip(self.uncertainty_names, self.energy_units):
                outputs[name] = ModelOutput(
                    unit=unit,
                    sample_kind="atom",
                    description="standard deviation of the energy (LLPR)",
                )
        for name, per_atom in zip(self.generic_names, self.generic_per_atom):
            target = self.dataset_info.targets[name]
            outputs[name] = ModelOutput(
                unit=target.unit,
                description=_described(target.description, name),
                sample_kind="atom" if per_atom else "system",
            )
        units = dict(zip(self.target_names, self.energy_units))
        length = self.dataset_info.length_unit
        outputs.update(declared_outputs(self.direct_quantities(), units, length))
        return outputs

    # --- training data (MatterTune's backbone interface) ----------------------------------
    def atoms_to_data(self, atoms: ase.Atoms) -> Graph:
        return atoms_to_graph(atoms, self.cutoff, self.baseline.dtype, self._min_distance())

    def _min_distance(self) -> float:
        """The closest two atoms of training data may be, in the model's length unit."""
        try:
            return MIN_DISTANCE * conversion("angstrom", self.dataset_info.length_unit)
        except (ValueError, RuntimeError):  # a unit metatomic does not know: no check
            return 0.0

    def collate_fn(self, data: Sequence[Graph]) -> Graph:
        return collate_graphs(list(data))

    def predict(
        self, batch: Graph, quantities: List[str], training: bool
    ) -> Dict[str, torch.Tensor]:
        direct = [q for q in quantities if q in self.direct_quantities()]

        def energies(graph: Graph) -> Dict[str, torch.Tensor]:
            # the direct heads come from the same pass, on the same (strained) structures
            per_atom, direct_values = self.energies_and_direct(graph, len(direct) > 0)
            results = self.system_totals(graph, per_atom)
            for quantity in direct:
                value = direct_values[quantity]
                stress = quantity.endswith("/direct_stress")
                results[quantity] = structure_stress(graph, value) if stress else value
            return results

        generic = [q for q in quantities if q in self.generic_names]
        energy_quantities = [q for q in quantities if q not in generic and q not in direct]
        results: Dict[str, torch.Tensor] = {}
        if energy_quantities or direct:
            results.update(
                energies_and_gradients(energies, batch, energy_quantities, create_graph=training)
            )
        if generic:
            values = self.generic_values(batch)
            for index, name in enumerate(self.generic_names):
                if name not in generic:
                    continue
                if self.generic_per_atom[index]:
                    results[name] = values[index]
                else:
                    results[name] = reduce_atoms(
                        values[index],
                        batch.system_index,
                        batch.n_atoms,
                        self.generic_reduction[index],
                    )
        return results

    def system_totals(self, graph: Graph, per_atom: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Per-structure sums ``[S]`` of per-atom energies ``[N, n_targets]``, by target."""
        n_systems = graph.n_atoms.shape[0]
        totals = torch.zeros(
            n_systems, per_atom.shape[1], dtype=per_atom.dtype, device=per_atom.device
        ).index_add(0, graph.system_index, per_atom)
        return {name: totals[:, i] for i, name in enumerate(self.target_names)}

    def set_generic_normalization(self, shift: torch.Tensor, scale: torch.Tensor) -> None:
        """Per-atom shift and scale of each generic target's head output."""
        self.generic_shift.copy_(shift)
        self.generic_scale.copy_(scale)

    def set_baseline(self, baseline: torch.Tensor, scale: torch.Tensor) -> None:
        """Set the composition baseline ``[n_targets, n_types]`` and scales ``[n_targets]``."""
        self.baseline.copy_(baseline)
        self.scale.copy_(scale)

    # --- checkpoints, restart, export -----------------------------------------------------
    def get_checkpoint(self) -> Dict[str, Any]:
        return {
            "adapters": adapter_config(self),
            "architecture": self.__architecture__,
            "model_checkpoint_version": self.__checkpoint_version__,
            "model_hypers": to_dict(self.hypers),
            "dataset_info": self.dataset_info.to_dict(),
            "dtype": DTYPE_NAMES[self.baseline.dtype],
            "model_state_dict": self.state_dict(),
            "uncertainty": self.uncertainty.get_state(),
        }

    @classmethod
    def load_checkpoint(
        cls, checkpoint: Dict[str, Any], context: CheckpointContext
    ) -> "EnergyModel":
        checkpoint = cls.upgrade_checkpoint(checkpoint)
        hypers = parse(cls.__hypers__, checkpoint["model_hypers"], "architecture.model")
        info = DatasetInfo.from_dict(checkpoint["dataset_info"])
        model = cls(hypers, info, ModelMetadata())
        dtype = {v: k for k, v in DTYPE_NAMES.items()}[checkpoint["dtype"]]
        model = model.to(dtype)
        restore_adapters(model, checkpoint.get("adapters") or {})
        state = checkpoint["model_state_dict"]
        if context != "restart" and checkpoint.get("best_model_state_dict") is not None:
            state = checkpoint["best_model_state_dict"]
        model.load_state_dict(state)
        model.uncertainty.set_state(checkpoint.get("uncertainty"), len(model.target_names))
        return model

    @classmethod
    def upgrade_checkpoint(cls, checkpoint: Dict[str, Any]) -> Dict[str, Any]:
        return upgrade_model_checkpoint(cls, checkpoint)

    def restart(
        self, dataset_info: DatasetInfo, inherit_heads: Optional[Dict[str, str]] = None
    ) -> "EnergyModel":
        """Adapt to new data: same elements; new energy targets get new outputs (copied from
        ``inherit_heads[new]`` or starting at zero); targets absent from the data are kept."""
        self.uncertainty.reset()  # calibrated for the old weights; recalibrated after training
        new_types = sorted(set(dataset_info.atomic_types) - set(self.atomic_types))
        if new_types:
            raise MttError(
                f"the new data has elements {new_types} that this {self.__architecture__} "
                f"model was not trained on (it knows {self.atomic_types}); neither a restart "
                "nor fine-tuning can add elements to it: train a new model, or remove those "
                "structures"
            )
        for name, target in dataset_info.targets.items():
            known = self.dataset_info.targets.get(name)
            if known is not None and target.unit != known.unit:
                raise MttError(
                    f"target {name!r} is in {target.unit!r} in the new data but the model "
                    f"predicts {known.unit!r}; declare the model's unit (metatomic converts) "
                    "or convert the labels"
                )
        self._check_inherit_heads(inherit_heads or {}, dataset_info)
        new_generic = [
            name
            for name, target in dataset_info.targets.items()
            if target.kind != "energy" and name not in self.generic_names
        ]
        if new_generic:
            self._add_generic_targets(new_generic, dataset_info)
        new_targets = [
            name
            for name, target in dataset_info.targets.items()
            if target.kind == "energy" and name not in self.target_names
        ]
        if new_targets:
            self._add_targets(new_targets, dataset_info, inherit_heads or {})
        return self

    def _add_generic_targets(self, names: List[str], info: DatasetInfo) -> None:
        """New heads (untrained, normalised on the new data) for new generic targets."""
        reference = self.baseline
        for name in names:
            target = info.targets[name]
            head = self.make_generic_head(target)
            # the model's dtype and device, which its buffers share
            self.generic_heads.append(head.to(device=reference.device, dtype=reference.dtype))
            self.generic_names = self.generic_names + [name]
            self.generic_per_atom = self.generic_per_atom + [target.per_atom]
            self.generic_reduction = self.generic_reduction + [target.reduction]
            self.generic_ranks = self.generic_ranks + [target.rank]
        extra = len(names)
        self.generic_shift = torch.cat([self.generic_shift, self.generic_shift.new_zeros(extra)])
        self.generic_scale = torch.cat([self.generic_scale, self.generic_scale.new_ones(extra)])
        targets = dict(self.dataset_info.targets)
        targets.update({n: info.targets[n] for n in names})
        self.dataset_info = DatasetInfo(self.dataset_info.length_unit, self.atomic_types, targets)

    def _check_inherit_heads(self, inherit: Dict[str, str], info: DatasetInfo) -> None:
        """Each ``finetune.inherit_heads`` entry names a new energy target of the data and a
        target of the pretrained model (a typo would silently start the head from zero)."""
        new = [
            name
            for name, target in info.targets.items()
            if target.kind == "energy" and name not in self.target_names
        ]
        for name, source in inherit.items():
            key = f"'architecture.training.finetune.inherit_heads.{name}'"
            if name in self.target_names:
                raise MttError(
                    f"{key}: {name!r} is a target of the pretrained model, which keeps its own "
                    "head; inherit_heads gives a head to a new target of the training set"
                )
            if name not in new:
                hint = did_you_mean(name, new)
                raise MttError(
                    f"{key} names no new energy target of the training set; {hint}its new "
                    f"energy targets are {new}"
                )
            if source not in self.target_names:
                raise MttError(
                    f"{key} names {source!r}, which the pretrained model does not predict "
                    f"(it predicts {self.target_names})"
                )

    def _add_targets(self, names: List[str], info: DatasetInfo, inherit: Dict[str, str]) -> None:
        # (checked by _check_inherit_heads: each source is a pretrained target)
        sources = [self.target_names.index(inherit[n]) if n in inherit else None for n in names]
        for module_name in self.head_modules():
            head = self.get_submodule(module_name)
            _replace_module(self, module_name, _grown_linear(head, sources))
        pick = [s if s is not None else -1 for s in sources]
        # an inherited output starts as its source, converted to the new target's unit
        factors = [
            conversion(self.energy_units[s], info.targets[name].unit) if s >= 0 else 1.0
            for name, s in zip(names, pick)
        ]
        for buffer in ("baseline", "scale"):
            old = getattr(self, buffer)
            default = torch.zeros_like(old[0]) if buffer == "baseline" else old.mean()
            extra = torch.stack([old[s] * f if s >= 0 else default for s, f in zip(pick, factors)])
            setattr(self, buffer, torch.cat([old, extra]))
        self.target_names = self.target_names + names
        self.energy_units = self.energy_units + [info.targets[n].unit for n in names]
        self.uncertainty_names = [uncertainty_name(n) for n in self.target_names]
        targets = dict(self.dataset_info.targets)
        targets.update({n: info.targets[n] for n in names})
        self.dataset_info = DatasetInfo(self.dataset_info.length_unit, self.atomic_types, targets)

    def export(
        self, metadata: Optional[ModelMetadata] = None, second_derivatives: bool = False
    ) -> AtomisticModel:
        """The metatomic model. ``second_derivatives`` keeps the whole autograd graph
        through the energy, for Hessians by autograd, at the cost of lean gradients'
        memory savings (:mod:`mtt.lean_gradients`)."""
        # AtomisticModel switches off requires_grad in place: wrap a copy; LoRA adapters are
        # folded into the weights so the exported model costs what the pretrained one did
        model = copy.deepcopy(self).eval()
        merge_adapters(model)
        if second_derivatives:
            model.lean_gradients = False
        capabilities = ModelCapabilities(
            outputs=self.supported_outputs(),
            atomic_types=self.atomic_types,
            interaction_range=self.interaction_range,
            length_unit=self.dataset_info.length_unit,
            supported_devices=self.__supported_devices__,
            dtype=DTYPE_NAMES[self.baseline.dtype],
        )
        merged = merge_metadata(self.__default_metadata__, metadata)
        extra = dict(merged.extra)
        extra.update(architecture=self.__architecture__, mtt_version=__version__)
        extra[METADATA_KEY] = verification_metadata(model)
        merged = ModelMetadata(
            merged.name or f"mtt {self.__architecture__}",  # printed as "This is the <name> model"
            merged.description,
            merged.authors,
            merged.references,
            extra,
        )
        return AtomisticModel(model, merged, capabilities)


def _described(description: str, name: str) -> str:
    """The user's description of an output, or one from its name: metatomic warns on every
    load about variants of an output without descriptions."""
    if description:
        return description
    base, _, variant = name.partition("/")
    what = "total energy" if base == "energy" else f"learnt target {base}"
    return f"{what} ({variant})" if variant else what


def _replace_module(model: torch.nn.Module, name: str, module: torch.nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def _grown_linear(head: torch.nn.Linear, sources: List[Optional[int]]) -> torch.nn.Linear:
    """``head`` with one more output per entry of ``sources``: a copy of output ``source``,
    or zeros (the new target starts from its composition baseline)."""
    grown = torch.nn.Linear(
        head.in_features,
        head.out_features + len(sources),
        bias=head.bias is not None,
        dtype=head.weight.dtype,
        device=head.weight.device,
    )
    with torch.no_grad():
        grown.weight.zero_()
        grown.weight[: head.out_features] = head.weight
        if head.bias is not None:
            grown.bias.zero_()
            grown.bias[: head.out_features] = head.bias
        for k, source in enumerate(sources):
            if source is not None:
                grown.weight[head.out_features + k] = head.weight[source]
                if head.bias is not None:
                    grown.bias[head.out_features + k] = head.bias[source]
    return grown
