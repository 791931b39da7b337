"""``painn``: the polarizable atom interaction neural network (Schütt, Unke & Gastegger,
arXiv:2102.03150), an exactly equivariant message-passing network.

Each atom carries scalar features ``s_i`` (``num_features`` of them, starting from a learnt
embedding of its element) and vector features ``v_i`` (``num_features`` Cartesian vectors,
starting at zero). Each of ``num_layers`` layers has

* a *message* block: every neighbour ``j`` within the cutoff sends scalars and vectors to
  ``i``, weighted by filters of the distance ``|r_ij|`` (a sine radial basis times a smooth
  cutoff function, so energies and forces are continuous when neighbours come and go); the
  vectors sent are the neighbour's own vectors and the direction ``r_ij / |r_ij|``;
* an *update* block: each atom mixes its scalars with the norms and dot products of linear
  combinations of its vectors, and rescales its vectors by learnt scalars.

Vectors are only multiplied by invariant scalars and combined linearly over the feature axis,
never across Cartesian components, so ``s`` is exactly rotation invariant and ``v`` exactly
equivariant, with no need for rotated training data. The atom's energy is a small network of
its final scalars; forces and stress are exact gradients.

Generic targets use the same features: scalars come from ``s``, vectors (dipoles) from gated
linear combinations of ``v``, and symmetric rank-2 tensors (polarizabilities) from gated sums
of outer products ``v ⊗ v`` plus an isotropic part: equivariant by construction, in float32
and float64 alike.

When to choose it: for exactly equivariant vector and tensor targets (dipoles,
polarizabilities) next to energies, and for energies that need more than one neighbourhood:
by passing messages, an atom sees atoms up to ``cutoff * num_layers`` away (the interaction
range engines must provide, so LAMMPS's ghost region grows with it). Unlike ``pet`` it needs
no rotated training data. On the ethanol example (80 training frames) it is as accurate as
``soap_bpnn``. Its cost grows with pairs x features x layers: for small molecules it runs
about as fast as ``soap_bpnn`` (1.4 times its time per step on ethanol), but in dense solids
at the default 5 Å cutoff (about 90 neighbours per atom) it is roughly eight to ten times
slower per atom on a CPU; a smaller ``cutoff`` or ``num_features`` buys speed.
"""

from typing import Any, List, Optional, Tuple

import torch
from metatomic.torch import ModelMetadata
from torch import Tensor

from mtt.data.graph import Graph, edge_vectors
from mtt.data.targets import DatasetInfo
from mtt.energy_model import EnergyModel
from mtt.heads import generic_in_units

from .hypers import ModelHypers
from .modules.heads import EquivariantHead
from .modules.layers import Message, Update
from .modules.radial import SineBasis, cutoff_function


class Painn(EnergyModel):
    __checkpoint_version__ = 1
    __supported_devices__ = ["cuda", "cpu"]
    __supported_dtypes__ = [torch.float32, torch.float64]
    __hypers__ = ModelHypers
    __default_metadata__ = ModelMetadata(
        references={"architecture": ["https://arxiv.org/abs/2102.03150"]}
    )

    def __init__(
        self,
        hypers: ModelHypers,
        dataset_info: DatasetInfo,
        metadata: Optional[ModelMetadata] = None,
    ):
        super().__init__(hypers, dataset_info, metadata, hypers.cutoff)
        # an atom's energy depends on atoms up to one cutoff per message-passing layer away
        self.interaction_range = self.cutoff * hypers.num_layers
        self.cutoff_width = float(hypers.switch_width)
        self.n_features = hypers.num_features
        width = hypers.num_features
        self.embedding = torch.nn.Embedding(len(self.atomic_types), width)
        self.radial = SineBasis(hypers.num_radial, hypers.cutoff)
        self.messages = torch.nn.ModuleList(
            Message(width, hypers.num_radial) for _ in range(hypers.num_layers)
        )
        self.updates = torch.nn.ModuleList(Update(width) for _ in range(hypers.num_layers))
        # the energies: a two-layer network of the final scalars, its hidden layer shared by
        # every energy target, one output each (none for a model of generic targets only: a
        # Linear layer without outputs is not a thing torch initialises quietly)
        self.readout_hidden = torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.SiLU())
        self.readout = torch.nn.ModuleList(
            torch.nn.Linear(width, len(self.target_names))
            for _ in ([0] if self.target_names else [])
        )
        self.width = width
        for name in self.generic_names:
            self.generic_heads.append(self.make_generic_head(self.dataset_info.targets[name]))

    def make_generic_head(self, target: Any) -> torch.nn.Module:
        """PaiNN's own heads: vectors and tensors from its equivariant vector features."""
        return EquivariantHead(self.width, target.rank, target.num_subtargets)

    def representation(self, graph: Graph, species: Tensor) -> Tuple[Tensor, Tensor]:
        """Scalar ``[N, F]`` and vector ``[N, 3, F]`` features after the last layer."""
        vectors = edge_vectors(graph)
        r = torch.linalg.vector_norm(vectors, dim=-1)
        unit = (vectors / r.unsqueeze(-1)).T  # [3, E]: the layers keep Cartesian axes first
        radial = self.radial(r)
        switch = cutoff_function(r, self.cutoff, self.cutoff_width)
        s = self.embedding(species).to(vectors.dtype)
        v = torch.zeros(3, s.shape[0], self.n_features, dtype=s.dtype, device=s.device)
        for message, update in zip(self.messages, self.updates):
            s, v = message(s, v, radial, switch, unit, graph.edge_i, graph.edge_j)
            s, v = update(s, v)
        return s, v.permute(1, 0, 2)

    def last_layer_features(self, graph: Graph, species: Tensor) -> Tensor:
        """The hidden layer of the energy readout and a 1 for its bias ``[N, F + 1]``:
        per-atom energies are a linear function of it (for last-layer uncertainties)."""
        hidden = self._readout_input(graph, species)
        ones = torch.ones(hidden.shape[0], 1, dtype=hidden.dtype, device=hidden.device)
        return torch.cat([hidden, ones], dim=1)

    def _readout_input(self, graph: Graph, species: Tensor) -> Tensor:
        s, _ = self.representation(graph, species)
        return self.readout_hidden(s)

    def per_atom_energies(self, graph: Graph, species: Tensor) -> Tensor:
        hidden = self._readout_input(graph, species)
        energies = torch.zeros(
            hidden.shape[0], len(self.target_names), dtype=hidden.dtype, device=hidden.device
        )
        for readout in self.readout:
            energies = readout(hidden)
        return energies

    def per_atom_features(self, graph: Graph, species: Tensor) -> Tensor:
        """The final scalar features: rotation invariant."""
        s, _ = self.representation(graph, species)
        return s

    def generic_values(self, graph: Graph) -> List[Tensor]:
        """Per-atom values ``[N, C, k]`` of every generic target, from the scalar and
        (for vectors and tensors) the equivariant vector features."""
        species = self.type_to_index[graph.types]
        s, v = self.representation(graph, species)
        values: List[Tensor] = []
        for index, head in enumerate(self.generic_heads):
            raw = head(s, v)
            values.append(
                generic_in_units(raw, self.generic_scale[index], self.generic_shift[index])
            )
        return values

    def head_modules(self) -> List[str]:
        """The output layer of the energy readout (one output per energy target)."""
        return [f"readout.{k}" for k in range(len(self.readout))]
