"""``pet``: the point-edge transformer (Pozdnyakov & Ceriotti, arXiv:2305.19302).

Each atom sees its neighbourhood as a set of tokens, one per edge ``i -> j`` within the
cutoff, plus one for itself. A transformer mixes them, with the smooth cutoff function in
the attention weights so that neighbours enter and leave continuously. Several such layers
pass messages: the output token of ``j -> i`` becomes part of the input token of ``i -> j``
in the next layer, so information travels one cutoff per layer. Each layer's energy head
reads the atom's pooled tokens; the atom's energy is the sum over layers.

Tokens are built from raw edge vectors, so PET is *not* rotation invariant by construction:
it learns the invariance from randomly rotated training data (``random_rotations`` in the
training hypers). Forces and stress are exact gradients (conservative).

Optionally (``direct_forces: true``), PET also predicts forces and stress *directly*: the
last layer's output token of each edge gives a weight of its edge vector (coefficients of
radial functions of ``r_ij``), ``F_i = sum_j w_ij f(r_ij) r_ij``, and a weight of
``r_ij ⊗ r_ij`` for the stress (summed and divided by the volume; zero unless periodic). These
heads train against the same force and stress labels (loss and metrics
``energy/direct_forces``, ``energy/direct_stress``) and are exported as
``non_conservative_force`` and ``non_conservative_stress``. They make MD faster (no backward
pass through the model) but they are not gradients of an energy, so energy is not conserved:
use them with a thermostat, or with multiple time stepping (direct forces for the inner steps,
exact ones for the outer step). In ASE::

    from metatomic_ase import MetatomicCalculator
    atoms.calc = MetatomicCalculator("model.pt", non_conservative=True)
    # or non_conservative="forces" for a model trained without stress labels

(the calculator removes the mean of the direct forces, so that there is no net force).
"""

from typing import Dict, List, Optional, Tuple

import torch
from metatomic.torch import ModelMetadata
from torch import Tensor

from mtt.data.graph import Graph, edge_vectors
from mtt.data.targets import DatasetInfo
from mtt.energy_model import EnergyModel
from mtt.errors import MttError

from .hypers import ModelHypers
from .modules.direct import DirectHeads
from .modules.layer import PetLayer
from .modules.neighbors import neighbor_slots, reverse_edges
from .modules.radial import GaussianBasis, cutoff_function


class Pet(EnergyModel):
    __checkpoint_version__ = 1
    __supported_devices__ = ["cuda", "cpu"]
    __supported_dtypes__ = [torch.float32, torch.float64]
    __hypers__ = ModelHypers
    __default_metadata__ = ModelMetadata(
        references={"architecture": ["https://arxiv.org/abs/2305.19302"]}
    )

    def __init__(
        self,
        hypers: ModelHypers,
        dataset_info: DatasetInfo,
        metadata: Optional[ModelMetadata] = None,
    ):
        super().__init__(hypers, dataset_info, metadata, hypers.cutoff)
        if self.generic_names:
            raise MttError(
                f"pet predicts energies only, not {self.generic_names}: its features are not "
                "rotation invariant by construction, so vectors and tensors would come out in "
                "the wrong frame; train these targets with soap_bpnn"
            )
        # an atom's energy depends on atoms up to one cutoff per message-passing layer away
        self.interaction_range = self.cutoff * hypers.num_gnn_layers
        self.cutoff_width = float(hypers.cutoff_width)
        self.radial = GaussianBasis(hypers.num_radial, hypers.cutoff)
        self.d_pet = hypers.d_pet
        self.layers = torch.nn.ModuleList(
            PetLayer(
                n_geometry=3 + hypers.num_radial,
                n_species=len(self.atomic_types),
                n_targets=len(self.target_names),
                d_model=hypers.d_pet,
                num_heads=hypers.num_heads,
                d_feedforward=hypers.d_feedforward,
                num_attention_layers=hypers.num_attention_layers,
            )
            for _ in range(hypers.num_gnn_layers)
        )
        # empty unless enabled, so that the state dict of models without them is unchanged
        self.direct = torch.nn.ModuleList(
            [DirectHeads(hypers.d_pet, hypers.num_radial, len(self.target_names))]
            if hypers.direct_forces
            else []
        )
        if hypers.direct_forces:
            self.direct_kinds = ["forces", "stress"]

    def head_modules(self) -> List[str]:
        """The last Linear layer of each message-passing layer's energy head."""
        return [f"layers.{k}.head.{len(layer.head) - 1}" for k, layer in enumerate(self.layers)]

    def head_parameter_names(self) -> List[str]:
        """The energy heads' last layers and, if any, the whole direct heads: what
        ``finetune.method: heads`` trains."""
        direct = [name for name, _ in self.named_parameters() if name.startswith("direct.")]
        return super().head_parameter_names() + direct

    def restart(
        self, dataset_info: DatasetInfo, inherit_heads: Optional[Dict[str, str]] = None
    ) -> "Pet":
        """As for every model, refusing new energy targets when there are direct heads."""
        new_energies = [
            name
            for name, target in dataset_info.targets.items()
            if target.kind == "energy" and name not in self.target_names
        ]
        if len(self.direct) > 0 and new_energies:
            raise MttError(
                f"this pet model has direct force heads, which cannot grow outputs for the "
                f"new energy targets {new_energies} yet; fine-tune on the targets it has "
                f"({self.target_names}), or train a new model"
            )
        super().restart(dataset_info, inherit_heads)
        return self

    def _token_weights(
        self, cutoffs: Tensor, slots: Tensor, n_atoms: int, width: int
    ) -> Tuple[Tensor, Tensor]:
        """Dense ``[A, T]`` key weights (centre 1, edge ``f(r)``, padding 0) and the mask of
        real tokens."""
        weights = torch.zeros(n_atoms, width, dtype=cutoffs.dtype, device=cutoffs.device)
        weights[:, 0] = 1.0
        weights = weights.reshape(-1).index_copy(0, slots, cutoffs).reshape(n_atoms, width)
        real = torch.zeros(n_atoms * width, dtype=torch.bool, device=cutoffs.device)
        real = real.index_fill(0, slots, True).reshape(n_atoms, width)
        real[:, 0] = True
        return weights, real

    def per_atom_energies(self, graph: Graph, species: Tensor) -> Tensor:
        return self.per_atom_energies_and_direct(graph, species, False)[0]

    def per_atom_energies_and_direct(
        self, graph: Graph, species: Tensor, direct: bool
    ) -> Tuple[Tensor, Dict[str, Tensor]]:
        n_atoms = graph.positions.shape[0]
        vectors = edge_vectors(graph)
        r = torch.linalg.vector_norm(vectors, dim=-1)
        # the raw vector (not divided by the cutoff): displacements of 0.01 Å must matter
        radial = self.radial(r)
        geometry = torch.cat([vectors, radial], dim=1)
        cutoffs = cutoff_function(r, self.cutoff, self.cutoff_width)
        reverse, has_reverse = reverse_edges(graph.edge_i, graph.edge_j, graph.edge_shifts)
        slots, width = neighbor_slots(graph.edge_i, n_atoms)
        weights, real = self._token_weights(cutoffs, slots, n_atoms, width)
        neighbor_species = species[graph.edge_j]

        messages = torch.zeros(
            vectors.shape[0], self.d_pet, dtype=vectors.dtype, device=vectors.device
        )
        energies = torch.zeros(
            n_atoms, len(self.target_names), dtype=vectors.dtype, device=vectors.device
        )
        tokens = messages
        for layer in self.layers:
            layer_energies, tokens = layer(
                geometry, species, neighbor_species, messages, slots, weights, real
            )
            energies = energies + layer_energies
            # PET's message passing: edge i -> j next reads the output token of j -> i
            messages = tokens[reverse] * has_reverse.unsqueeze(-1).to(tokens.dtype)
        heads: Dict[str, Tensor] = {}
        if direct:
            for direct_heads in self.direct:
                forces, virials = direct_heads(
                    tokens, radial, vectors, cutoffs, graph.edge_i, n_atoms
                )
                heads["forces"] = forces
                heads["stress"] = virials
        return energies, heads
