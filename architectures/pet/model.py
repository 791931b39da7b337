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

Measured limitation: energies that depend on how many neighbours an atom has are learnt
slowly. After 10-25 epochs on CHGNet Si data that include vacancy trajectories, the vacancy
formation energy came out 0.01-0.09 eV (labels ~0.75 eV; ``soap_bpnn`` on the same data and
epochs 0.85 eV) and the (001) surface energy ~0.05 J/m², with good test errors on the same
frames (5-7 meV/atom). Attention averages an atom's neighbours, so one neighbour fewer barely
changes its tokens; pooling the head's input differently did not help. Check defect, surface
or cluster energies before relying on them (``soap_bpnn`` learns them from the same data).

Exported models compute forces and stress layer by layer, a chunk of atoms at a time
(:mod:`mtt.lean_gradients`): about 0.05-0.25 MB per atom instead of ~2 MB for the whole
autograd graph, with the same first derivatives. ``mtt export --second-derivatives`` keeps the
whole graph, for Hessians by autograd.
"""

from typing import Callable, Dict, List, Optional, Tuple

import torch
from metatomic.torch import ModelMetadata
from torch import Tensor

from mtt.data.graph import Graph, edge_vectors
from mtt.data.targets import DatasetInfo
from mtt.energy_model import EnergyModel
from mtt.errors import MttError
from mtt.gradients import energies_and_gradients_from_edges

from .hypers import ModelHypers
from .modules.chunks import (
    TOKENS_PER_CHUNK,
    Chunk,
    LayerInputs,
    chunks_by_neighbour_count,
)
from .modules.direct import DirectHeads
from .modules.layer import PetLayer
from .modules.neighbors import TokenLayout, neighbor_slots, reverse_edges, token_layout
from .modules.radial import GaussianBasis, cutoff_function
from .modules.rows import add_rows_, pick_rows

# the quantities of an energy target that are its gradients
GRADIENTS = ("forces", "stress")


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
                f"pet predicts energies only, not {self.generic_names}: it has no heads for "
                "other targets, scalars included (vectors and tensors would also need "
                "features that are rotation invariant by construction, which pet's are not); "
                "train these targets with soap_bpnn or painn"
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
        self.lean_gradients = True
        self.tokens_per_chunk = TOKENS_PER_CHUNK

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

    def _key_weights(self, cutoffs: Tensor, slots: Tensor, n_atoms: int, width: int) -> Tensor:
        """Dense ``[A, T]`` key weights: centre 1, edge ``f(r)``, padding 0."""
        weights = torch.zeros(n_atoms, width, dtype=cutoffs.dtype, device=cutoffs.device)
        weights[:, 0] = 1.0
        return weights.reshape(-1).index_copy(0, slots, cutoffs).reshape(n_atoms, width)

    def _token_weights(
        self, cutoffs: Tensor, slots: Tensor, n_atoms: int, width: int
    ) -> Tuple[Tensor, Tensor]:
        """Dense ``[A, T]`` key weights (see :meth:`_key_weights`) and the mask of real
        tokens."""
        weights = self._key_weights(cutoffs, slots, n_atoms, width)
        real = torch.zeros(n_atoms * width, dtype=torch.bool, device=cutoffs.device)
        real = real.index_fill(0, slots, True).reshape(n_atoms, width)
        real[:, 0] = True
        return weights, real

    def per_atom_energies(self, graph: Graph, species: Tensor) -> Tensor:
        return self.per_atom_energies_and_direct(graph, species, False)[0]

    def _edge_features(self, vectors: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """Geometry features ``[E, 3 + num_radial]``, radial basis and cutoff weights ``[E]``."""
        r = torch.linalg.vector_norm(vectors, dim=-1)
        # the raw vector (not divided by the cutoff): displacements of 0.01 Å must matter
        radial = self.radial(r)
        geometry = torch.cat([vectors, radial], dim=1)
        return geometry, radial, cutoff_function(r, self.cutoff, self.cutoff_width)

    def _message_passing(
        self,
        geometry: Tensor,
        species: Tensor,
        neighbor_species: Tensor,
        layout: TokenLayout,
        weights: Tensor,
        real: Tensor,
        reverse: Tensor,
        keep: Tensor,
    ) -> Tuple[Tensor, Tensor, List[Tuple[List[Tensor], List[List[Tensor]]]]]:
        """Every layer in turn: the summed per-atom energies ``[A, n_targets]``, the last
        layer's output edge tokens ``[E, d]``, and what each layer's ``backward`` needs."""
        energies = torch.zeros(
            weights.shape[0], len(self.target_names), dtype=geometry.dtype, device=geometry.device
        )
        messages: Optional[Tensor] = None  # the first layer's: zeros
        tokens = torch.zeros(0)
        saved: List[Tuple[List[Tensor], List[List[Tensor]]]] = []
        for layer in self.layers:
            layer_energies, tokens, layer_saved, transformer_saved = layer(
                geometry, species, neighbor_species, messages, layout, weights, real
            )
            saved.append((layer_saved, transformer_saved))
            energies = energies + layer_energies
            # PET's message passing: edge i -> j next reads the output token of j -> i
            messages = pick_rows(tokens, reverse) * keep
        return energies, tokens, saved

    def per_atom_energies_and_direct(
        self, graph: Graph, species: Tensor, direct: bool
    ) -> Tuple[Tensor, Dict[str, Tensor]]:
        n_atoms = graph.positions.shape[0]
        vectors = edge_vectors(graph)
        geometry, radial, cutoffs = self._edge_features(vectors)
        reverse, has_reverse = reverse_edges(graph.edge_i, graph.edge_j, graph.edge_shifts)
        slots, width = neighbor_slots(graph.edge_i, n_atoms)
        weights, real = self._token_weights(cutoffs, slots, n_atoms, width)
        layout = token_layout(slots, n_atoms, width)
        keep = has_reverse.unsqueeze(-1).to(vectors.dtype)
        energies, tokens, _ = self._message_passing(
            geometry, species, species[graph.edge_j], layout, weights, real, reverse, keep
        )
        heads: Dict[str, Tensor] = {}
        if direct:
            for direct_heads in self.direct:
                forces, virials = direct_heads(
                    tokens, radial, vectors, cutoffs, graph.edge_i, n_atoms
                )
                heads["forces"] = forces
                heads["stress"] = virials
        return energies, heads

    # --- training: forces and stress from the model's own differentiable gradient ----------
    def predict(
        self,
        batch: Graph,
        quantities: List[str],
        training: bool,
        core: Optional[Callable[..., Tuple[Tensor, List[Tuple[Tensor, Tensor]]]]] = None,
    ) -> Dict[str, Tensor]:
        """As every model's; in training, energies with their forces and stress come from
        :meth:`energies_and_input_gradients` (``core``: that function, or a compiled version
        of it, see ``compile`` in the training hypers)."""
        if not (training and self._through_edges(quantities)):
            return super().predict(batch, quantities, training)

        def energies(
            graph: Graph, vectors: Tensor, names: List[str]
        ) -> Tuple[Dict[str, Tensor], Dict[str, Tensor]]:
            return self._energies_and_edge_gradients(graph, vectors, names, core)

        return energies_and_gradients_from_edges(energies, batch, quantities)

    def _through_edges(self, quantities: List[str]) -> bool:
        """Whether ``quantities`` are energies, forces and stress only, with some gradient."""
        gradients = [
            q
            for q in quantities
            if q.rsplit("/", 1)[0] in self.target_names and q.rsplit("/", 1)[-1] in GRADIENTS
        ]
        plain = all(q in self.target_names or q in gradients for q in quantities)
        return plain and len(gradients) > 0

    def _energies_and_edge_gradients(
        self,
        graph: Graph,
        vectors: Tensor,
        names: List[str],
        core: Optional[Callable[..., Tuple[Tensor, List[Tuple[Tensor, Tensor]]]]],
    ) -> Tuple[Dict[str, Tensor], Dict[str, Tensor]]:
        """Energies per structure in the targets' units, and for each of ``names`` the
        gradient of their sum with respect to the edge vectors, both differentiable."""
        n_atoms = graph.positions.shape[0]
        species = self.type_to_index[graph.types]
        geometry, _, cutoffs = self._edge_features(vectors)
        reverse, has_reverse = reverse_edges(graph.edge_i, graph.edge_j, graph.edge_shifts)
        slots, width = neighbor_slots(graph.edge_i, n_atoms)
        real = self._token_weights(cutoffs.detach(), slots, n_atoms, width)[1]
        targets = [self.target_names.index(name) for name in names]
        run = Pet.energies_and_input_gradients if core is None else core
        raw, grads = run(
            self,
            geometry,
            cutoffs,
            species,
            species[graph.edge_j],
            slots,
            token_layout(slots, n_atoms, width),
            reverse,
            has_reverse.unsqueeze(-1).to(vectors.dtype),
            real,
            targets,
        )
        scale = self.scale.to(raw.dtype)
        energies = self.system_totals(graph, self.in_target_units(raw, species))
        vector_grads: Dict[str, Tensor] = {}
        for name, target, (grad_geometry, grad_cutoffs) in zip(names, targets, grads):
            found = torch.autograd.grad(
                [geometry, cutoffs],
                [vectors],
                [grad_geometry, grad_cutoffs],
                create_graph=True,
                allow_unused=True,
            )[0]
            found = torch.zeros_like(vectors) if found is None else found
            vector_grads[name] = found * scale[target]
        return energies, vector_grads

    def energies_and_input_gradients(
        self,
        geometry: Tensor,
        cutoffs: Tensor,
        species: Tensor,
        neighbor_species: Tensor,
        slots: Tensor,
        layout: TokenLayout,
        reverse: Tensor,
        keep: Tensor,
        real: Tensor,
        targets: List[int],
    ) -> Tuple[Tensor, List[Tuple[Tensor, Tensor]]]:
        """Dimensionless per-atom energies ``[A, n_targets]`` and, for each index in
        ``targets``, the gradient of that target's summed energy with respect to the edges'
        geometry features ``[E, n_geometry]`` and cutoff weights ``[E]``.

        Every layer runs forward, then each layer's own ``backward`` (see
        :mod:`.modules.transformer`) from the last to the first: tensor operations only, no
        ``autograd.grad`` inside. Training then differentiates this result once, where
        forces by ``autograd.grad(create_graph=True)`` and the loss's backward would
        differentiate the model twice; the numbers are the same (parameter gradients equal
        to 1e-14 in float64), and torch.compile, whose autograd cannot differentiate twice,
        can compile this function. ``real`` (``[A, T]``, see :meth:`_token_weights`) carries
        the dense layout's shape as tensor sizes, so that a compiled version does not
        specialise on it.
        """
        n_atoms, width = real.shape
        weights = self._key_weights(cutoffs, slots, n_atoms, width)
        energies, _, saved = self._message_passing(
            geometry, species, neighbor_species, layout, weights, real, reverse, keep
        )
        layers = list(self.layers)
        grads: List[Tuple[Tensor, Tensor]] = []
        for target in targets:
            grad_energies = torch.zeros_like(energies)
            grad_energies[:, target] = 1.0
            grad_geometry = torch.zeros_like(geometry)
            grad_weights = torch.zeros_like(weights)
            upstream: Optional[Tensor] = None  # gradient of the layer's output edge tokens
            for k in range(len(layers) - 1, -1, -1):
                layer_grads = layers[k].backward(
                    grad_energies, upstream, saved[k][0], saved[k][1], layout, weights, real, k > 0
                )
                grad_geometry = grad_geometry + layer_grads[0]
                grad_weights = grad_weights + layer_grads[1]
                grad_messages = layer_grads[2]
                if grad_messages is not None:
                    # messages[e] = tokens[reverse[e]] * keep[e]
                    upstream = add_rows_(
                        torch.zeros_like(grad_messages), reverse, grad_messages * keep
                    )
            # the centre's weight is the constant 1: only the edges' slots have a gradient
            grads.append((grad_geometry, pick_rows(grad_weights.reshape(-1), slots)))
        return energies, grads

    # --- inference: gradients layer by layer, a chunk of atoms at a time ---------------------
    def energies_and_vector_gradient(
        self,
        graph: Graph,
        species: Tensor,
        vectors: Tensor,
        atom_weights: Tensor,
        target: int,
    ) -> Tuple[Tensor, Tensor]:
        """Energies and their gradient with respect to the edge vectors, keeping only one
        chunk of atoms' intermediates alive (see :mod:`mtt.lean_gradients`).

        A first pass without autograd keeps the messages entering each layer (``[E, d]``
        each). Then, from the last layer to the first, each chunk of atoms runs its layer
        again, keeping its intermediates, and is differentiated at once by the layer's own
        ``backward`` (native backward kernels, no autograd graph): the chunk's energy
        (weighted by ``atom_weights``) plus its output tokens times the gradient that the
        next layer's messages received. This gives the gradient with respect to the layer's
        inputs (edge geometry, cutoff weights and incoming messages), the last of which
        passes on to the previous layer's tokens through the edge reversal. The last layer
        runs once, the others twice. Chunks group atoms of similar neighbour counts (see
        :mod:`.modules.chunks`). Autograd only chains the result to the edge vectors.
        """
        n_atoms = graph.positions.shape[0]
        n_edges = vectors.shape[0]
        leaf = vectors.detach().requires_grad_(True)
        geometry, _, cutoffs = self._edge_features(leaf)
        reverse, has_reverse = reverse_edges(graph.edge_i, graph.edge_j, graph.edge_shifts)
        fixed = LayerInputs(
            geometry.detach(),
            cutoffs.detach(),
            species,
            species[graph.edge_j],
            chunks_by_neighbour_count(graph.edge_i, n_atoms, self.tokens_per_chunk),
        )
        keep = has_reverse.unsqueeze(-1).to(vectors.dtype)

        messages = self._messages_without_graph(fixed, reverse, keep)
        energies = torch.zeros(
            n_atoms, len(self.target_names), dtype=vectors.dtype, device=vectors.device
        )
        grad_geometry = torch.zeros_like(fixed.geometry)
        grad_cutoffs = torch.zeros_like(fixed.cutoffs)
        # [E, d] buffers updated in place: the gradients of a layer's incoming messages and
        # of its output tokens (those of the last layer get none)
        grad_messages = torch.empty(n_edges, self.d_pet, dtype=vectors.dtype, device=vectors.device)
        grad_tokens = torch.zeros_like(grad_messages)
        with torch.no_grad():
            for step in range(len(self.layers)):
                k = len(self.layers) - 1 - step
                for chunk in fixed.chunks:
                    upstream: Optional[Tensor] = None
                    if step > 0:
                        upstream = grad_tokens.index_select(0, chunk.edges)
                    layer_energies, grads = self._layer_with_gradients(
                        k, fixed, chunk, messages, atom_weights, target, upstream
                    )
                    energies.index_add_(0, chunk.atoms, layer_energies)
                    # every edge belongs to one chunk: each row is written once per layer
                    grad_geometry.index_add_(0, chunk.edges, grads[0])
                    grad_cutoffs.index_add_(0, chunk.edges, grads[1])
                    if k > 0:
                        grad_messages.index_copy_(0, chunk.edges, grads[2])
                if k > 0:
                    # messages[k][e] = tokens_{k-1}[reverse[e]] * keep[e]
                    grad_tokens.zero_().index_add_(0, reverse, grad_messages.mul_(keep))
                del messages[-1]

        gradient = torch.zeros_like(leaf)
        if n_edges > 0:
            outputs: List[Tensor] = [geometry, cutoffs]
            chained: List[Optional[Tensor]] = [grad_geometry, grad_cutoffs]
            found = torch.autograd.grad(outputs, [leaf], chained, allow_unused=True)[0]
            if found is not None:
                gradient = found
        return energies, gradient

    def _messages_without_graph(
        self, fixed: LayerInputs, reverse: Tensor, keep: Tensor
    ) -> List[Tensor]:
        """The messages entering every layer (``[E, d]`` each), without autograd graph;
        layer 0's, zeros, as an empty placeholder (see :meth:`_incoming`)."""
        n_edges = fixed.geometry.shape[0]
        dtype = fixed.geometry.dtype
        device = fixed.geometry.device
        messages: List[Tensor] = [torch.zeros(0, self.d_pet, dtype=dtype, device=device)]
        with torch.no_grad():
            for k in range(len(self.layers) - 1):
                tokens = torch.empty(n_edges, self.d_pet, dtype=dtype, device=device)
                for chunk in fixed.chunks:
                    incoming = self._incoming(messages, k, chunk.edges)
                    layer_tokens = self._layer(k, fixed, chunk, incoming)
                    tokens.index_copy_(0, chunk.edges, layer_tokens)
                messages.append(tokens.index_select(0, reverse).mul_(keep))
        return messages

    def _incoming(self, messages: List[Tensor], k: int, edges: Tensor) -> Optional[Tensor]:
        """The chunk's rows of the messages entering layer ``k`` (None, zeros, for the
        first)."""
        if k == 0:
            return None
        return messages[k].index_select(0, edges)

    def _layer_with_gradients(
        self,
        k: int,
        fixed: LayerInputs,
        chunk: Chunk,
        messages: List[Tensor],
        atom_weights: Tensor,
        target: int,
        upstream: Optional[Tensor],
    ) -> Tuple[Tensor, List[Tensor]]:
        """Layer ``k`` on one chunk: its energies, and the gradients of the chunk's weighted
        energy plus ``upstream`` times its output tokens with respect to its inputs: the
        edges' geometry features and cutoff weights, and for ``k > 0`` the messages."""
        geometry, cutoffs, species, neighbor_species = fixed.rows(chunk)
        n_atoms = chunk.atoms.shape[0]
        weights, real = self._token_weights(cutoffs, chunk.slots, n_atoms, chunk.width)
        incoming = self._incoming(messages, k, chunk.edges)
        energies = torch.zeros(0)
        grads: List[Tensor] = []
        # TorchScript indexes a ModuleList only with constants: pick layer k by iterating
        for index, layer in enumerate(self.layers):
            if index == k:
                energies, _, saved, transformer_saved = layer(
                    geometry, species, neighbor_species, incoming, chunk.layout, weights, real
                )
                grad_energies = torch.zeros_like(energies)
                grad_energies[:, target] = atom_weights.index_select(0, chunk.atoms)
                grad_geometry, grad_weights, grad_incoming = layer.backward(
                    grad_energies,
                    upstream,
                    saved,
                    transformer_saved,
                    chunk.layout,
                    weights,
                    real,
                    k > 0,
                )
                grads = [grad_geometry, grad_weights.reshape(-1).index_select(0, chunk.slots)]
                if grad_incoming is not None:
                    grads.append(grad_incoming)
        return energies, grads

    def _layer(
        self, k: int, fixed: LayerInputs, chunk: Chunk, messages: Optional[Tensor]
    ) -> Tensor:
        """Layer ``k`` on one chunk: its output edge tokens."""
        geometry, cutoffs, species, neighbor_species = fixed.rows(chunk)
        n_atoms = chunk.atoms.shape[0]
        weights, real = self._token_weights(cutoffs, chunk.slots, n_atoms, chunk.width)
        tokens = torch.zeros(0)
        # TorchScript indexes a ModuleList only with constants: pick layer k by iterating
        for index, layer in enumerate(self.layers):
            if index == k:
                tokens = layer(
                    geometry, species, neighbor_species, messages, chunk.layout, weights, real
                )[1]
        return tokens
