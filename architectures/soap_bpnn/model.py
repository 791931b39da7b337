"""``soap_bpnn``: SOAP power spectrum descriptors and one small network per element.

Each atom's neighbourhood is expanded in radial functions and real spherical harmonics, one
density per neighbour element; the rotationally invariant power spectrum of these densities
(three-body correlations) is standardised with statistics of the training set and fed to the
network of the atom's element (Behler-Parrinello), whose output is the atom's energy. Forces
and stress are exact gradients. Everything is plain torch: the exported model needs no
compiled extension, so its forces are right in every engine.
"""

from typing import Iterable, List, Optional, Tuple

import torch
from metatomic.torch import ModelMetadata

from mtt.data.graph import Graph, edge_vectors
from mtt.data.targets import DatasetInfo
from mtt.energy_model import EnergyModel

from .hypers import ModelHypers
from .modules.soap import SoapPowerSpectrum


def element_network(n_in: int, width: int, n_hidden: int, n_out: int) -> torch.nn.Sequential:
    """A multilayer perceptron with smooth (SiLU) activations, so forces are smooth too."""
    layers: List[torch.nn.Module] = []
    for _ in range(n_hidden):
        layers += [torch.nn.Linear(n_in, width), torch.nn.SiLU()]
        n_in = width
    layers.append(torch.nn.Linear(n_in, n_out))
    return torch.nn.Sequential(*layers)


class SoapBpnn(EnergyModel):
    __checkpoint_version__ = 2
    __supported_devices__ = ["cuda", "cpu"]
    __supported_dtypes__ = [torch.float32, torch.float64]
    __hypers__ = ModelHypers
    __default_metadata__ = ModelMetadata(
        references={
            "architecture": [
                "https://doi.org/10.1103/PhysRevLett.98.146401",  # Behler-Parrinello networks
                "https://doi.org/10.1103/PhysRevB.87.184115",  # SOAP
            ],
        }
    )

    def __init__(
        self,
        hypers: ModelHypers,
        dataset_info: DatasetInfo,
        metadata: Optional[ModelMetadata] = None,
    ):
        super().__init__(hypers, dataset_info, metadata, hypers.cutoff)
        self.soap = SoapPowerSpectrum(
            cutoff=hypers.cutoff,
            cutoff_width=hypers.cutoff_width,
            max_radial=hypers.max_radial,
            max_angular=hypers.max_angular,
            n_species=len(self.atomic_types),
        )
        n_features = self.soap.n_features
        self.standardize = bool(hypers.standardize_features)
        self.register_buffer("feature_mean", torch.zeros(n_features))
        self.register_buffer("feature_std", torch.ones(n_features))
        self.networks = torch.nn.ModuleList(
            element_network(
                n_features,
                hypers.num_neurons_per_layer,
                hypers.num_hidden_layers,
                len(self.target_names),
            )
            for _ in (self.atomic_types if self.target_names else [])
        )
        self.add_generic_heads(n_features + len(self.atomic_types))
        self.lean_gradients = True
        # inputs of each network's output layer, for last-layer uncertainties
        self.n_network_layers = 2 * hypers.num_hidden_layers + 1
        self.last_width = hypers.num_neurons_per_layer if hypers.num_hidden_layers else n_features

    def per_atom_features(self, graph: Graph, species: torch.Tensor) -> torch.Tensor:
        """The descriptor and the element of each atom (one-hot), for generic targets."""
        descriptor = self.descriptor(graph, species)
        one_hot = torch.nn.functional.one_hot(species, len(self.atomic_types))
        return torch.cat([descriptor, one_hot.to(descriptor.dtype)], dim=1)

    def descriptor(self, graph: Graph, species: torch.Tensor) -> torch.Tensor:
        """The standardised SOAP power spectrum of each atom."""
        vectors = edge_vectors(graph)
        features = self.soap(vectors, graph.edge_i, species[graph.edge_j], graph.positions.shape[0])
        if self.standardize:
            features = (features - self.feature_mean) / self.feature_std
        return features

    def per_atom_energies(self, graph: Graph, species: torch.Tensor) -> torch.Tensor:
        return self.network_energies(self.descriptor(graph, species), species)

    def network_energies(self, features: torch.Tensor, species: torch.Tensor) -> torch.Tensor:
        """Each atom's descriptor through its element's network: ``[N, n_targets]``."""
        energies = torch.zeros(
            features.shape[0], len(self.target_names), dtype=features.dtype, device=features.device
        )
        for index, network in enumerate(self.networks):
            atoms = torch.nonzero(species == index).reshape(-1)
            energies = energies.index_copy(0, atoms, network(features[atoms]))
        return energies

    def energies_and_vector_gradient(
        self,
        graph: Graph,
        species: torch.Tensor,
        vectors: torch.Tensor,
        atom_weights: torch.Tensor,
        target: int,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Energies and their gradient with respect to the edge vectors for engines (see
        :mod:`mtt.lean_gradients`): autograd only through the element networks, then the
        power spectrum's chain rule written out (``SoapPowerSpectrum.vector_gradient``): a
        step takes 0.7-0.9 of the time of autograd through the whole model, which records
        and replays every per-edge operation (``benchmarks/README.md``)."""
        features, parts = self.soap.forward_saving(
            vectors, graph.edge_i, species[graph.edge_j], graph.positions.shape[0]
        )
        if self.standardize:
            features = (features - self.feature_mean) / self.feature_std
        if not torch.is_grad_enabled():  # under no_grad: energies only
            return self.network_energies(features, species), torch.zeros_like(vectors)
        leaf = features.detach().requires_grad_(True)
        energies = self.network_energies(leaf, species)
        weighted = (energies[:, target] * atom_weights).sum()
        gradient = torch.autograd.grad([weighted], [leaf], allow_unused=True)[0]
        if gradient is None:  # no atom with a network (no energy target)
            gradient = torch.zeros_like(leaf)
        if self.standardize:
            gradient = gradient / self.feature_std
        return energies.detach(), self.soap.vector_gradient(parts, gradient)

    def last_layer_features(self, graph: Graph, species: torch.Tensor) -> torch.Tensor:
        """Each atom's input to its element's output layer, plus a 1 for the bias, placed in
        its element's block: ``[N, n_elements * (width + 1)]``, so that every element's output
        layer is one linear map of these features."""
        features = self.descriptor(graph, species)
        n_blocks = len(self.networks)
        result = torch.zeros(
            features.shape[0],
            n_blocks,
            self.last_width + 1,
            dtype=features.dtype,
            device=features.device,
        )
        for index, network in enumerate(self.networks):
            atoms = torch.nonzero(species == index).reshape(-1)
            hidden = features[atoms]
            depth = 0
            for layer in network:
                if depth < self.n_network_layers - 1:
                    hidden = layer(hidden)
                depth += 1
            ones = torch.ones(hidden.shape[0], 1, dtype=hidden.dtype, device=hidden.device)
            result[atoms, index] = torch.cat([hidden, ones], dim=1)
        return result.reshape(features.shape[0], n_blocks * (self.last_width + 1))

    def head_modules(self) -> List[str]:
        """The last Linear layer of each element's network (one output per target)."""
        return [f"networks.{k}.{len(network) - 1}" for k, network in enumerate(self.networks)]

    def fit_statistics(self, batches: Iterable[Graph]) -> None:
        """Mean and spread of each descriptor over the training set, fixed afterwards (unlike
        a per-atom layer norm, a fixed affine map keeps energies smooth at the cutoff)."""
        if not self.standardize:
            return
        total, squares, count = 0.0, 0.0, 0
        with torch.no_grad():
            for graph in batches:
                features = self.soap(
                    edge_vectors(graph),
                    graph.edge_i,
                    self.type_to_index[graph.types][graph.edge_j],
                    graph.positions.shape[0],
                ).to(torch.float64)
                total = total + features.sum(0)
                squares = squares + (features**2).sum(0)
                count += features.shape[0]
        mean = total / count
        std = torch.sqrt(torch.clamp(squares / count - mean**2, min=0.0))
        self.feature_mean.copy_(mean)
        # descriptors that never vary carry no information: leave them unscaled
        self.feature_std.copy_(
            torch.where(std > 1e-8 * (1 + mean.abs()), std, torch.ones_like(std))
        )
