"""``sevenn``: SevenNet-0 (Park et al., J. Chem. Theory Comput. 2024, MIT licence), a
NequIP-style equivariant message-passing potential pretrained on the Materials Project
(MPtrj, PBE/PBE+U), 89 elements, cutoff 5 Å, 5 layers, about 0.84 M parameters.

The weights come from the checkpoints shipped inside the ``sevenn`` wheel (no download), and
the network is re-expressed in plain torch (:mod:`.modules.layers`): every learnable matrix
is a ``torch.nn.Linear``, so mtt's fine-tuning methods (``full``, ``heads``, ``lora``,
``freeze``) apply as to any architecture, and the exported ``.pt`` needs neither ``sevenn``
nor ``e3nn``. SevenNet's per-element energy shift becomes mtt's composition baseline (the
reference energies that ``finetune.reference_energies: refit`` refits on the new data); its
per-element scale stays inside the model. Forces and stress are exact gradients through the
neighbour vectors. Needs the ``sevenn`` extra (``pip install -e ".[sevenn]"``) to train or export.
"""

import dataclasses
from typing import Iterable, List, Optional

import ase.data
import torch
from metatomic.torch import ModelMetadata
from torch import Tensor

from mtt.data.graph import Graph, edge_vectors
from mtt.data.targets import DatasetInfo
from mtt.energy_model import EnergyModel
from mtt.errors import MttError
from mtt.units import conversion

from .hypers import ModelHypers
from .modules import convert


class SevenNet(EnergyModel):
    __checkpoint_version__ = 1
    __supported_devices__ = ["cuda", "cpu"]
    # SevenNet-0 was trained in float32; float64 runs the same network in double precision
    __supported_dtypes__ = [torch.float32, torch.float64]
    __hypers__ = ModelHypers
    # the option that sets the cutoff, for messages (SevenNet keeps it in its own config)
    cutoff_option = "architecture.model.sevennet_config.cutoff"
    __default_metadata__ = ModelMetadata(
        authors=["Yutack Park", "Jaesun Kim", "Seungwoo Hwang", "Seungwu Han"],
        references={
            "architecture": ["https://doi.org/10.1021/acs.jctc.4c00190"],
            "model": ["https://github.com/MDIL-SNU/SevenNet (MIT licence)"],
        },
    )

    def __init__(
        self,
        hypers: ModelHypers,
        dataset_info: DatasetInfo,
        metadata: Optional[ModelMetadata] = None,
    ):
        if hypers.sevennet_config:
            config = _with_species(dict(hypers.sevennet_config), dataset_info)
            built = dict(config)
            if built["conv_denominator"] == AVERAGE_NEIGHBOURS:  # until fit_statistics
                built["conv_denominator"] = 1.0
            network, pretrained = convert.build_from_config(built), False
        else:
            network, config = convert.load_checkpoint(hypers.checkpoint, hypers.trust_checkpoint)
            pretrained = True
        hypers = dataclasses.replace(hypers, sevennet_config=config)
        info = _sevenn_dataset_info(dataset_info, config["chemical_species"])
        super().__init__(hypers, info, metadata, float(config["cutoff"]))
        # an atom's energy depends on atoms up to one cutoff per message-passing layer away
        self.interaction_range = self.cutoff * int(config["num_convolution_layer"])
        core, shift, scale = convert.convert(network, len(self.target_names))
        self.core = core
        type_map = {int(z): k for k, z in enumerate(_numbers(config["chemical_species"]))}
        indices = [type_map[z] for z in self.atomic_types]
        self.register_buffer("sevenn_species", torch.tensor(indices, dtype=torch.int64))
        self.register_buffer("species_scale", scale[indices].to(torch.float32))
        # SevenNet's per-element shift (eV) is the composition baseline of every energy target
        factors = torch.tensor([conversion("eV", unit) for unit in self.energy_units])
        baseline = factors.double().unsqueeze(1) * shift[indices].double().unsqueeze(0)
        self.set_baseline(baseline, factors.double())
        # targets that start from SevenNet weights (the trainer keeps their output scale)
        self.pretrained_targets = list(self.target_names) if pretrained else []

    def head_modules(self) -> List[str]:
        """The last Linear layer, one output per energy target."""
        return ["core.readout"]

    def fit_statistics(self, batches: Iterable[Graph]) -> None:
        """A from-scratch network whose config asks for ``avg_num_neigh`` divides each
        convolution's sum by the training data's mean number of neighbours (as SevenNet
        does); the number goes into the config, so checkpoints rebuild the same network."""
        config = self.hypers.sevennet_config
        if config.get("conv_denominator") != AVERAGE_NEIGHBOURS:
            return
        edges, atoms = 0, 0
        for graph in batches:
            edges += int(graph.edge_i.shape[0])
            atoms += int(graph.types.shape[0])
        # (rounded as sevenn's network, which holds it in float32, gives it back when rebuilt)
        average = float(torch.tensor(max(edges / max(atoms, 1), 1.0), dtype=torch.float32))
        config["conv_denominator"] = [average] * int(config["num_convolution_layer"])
        for layer in self.core.layers:
            layer.convolution.denominator = average

    def per_atom_energies(self, graph: Graph, species: Tensor) -> Tensor:
        vectors = edge_vectors(graph)
        raw = self.core(self.sevenn_species[species], vectors, graph.edge_i, graph.edge_j)
        return raw * self.species_scale[species].to(raw.dtype).unsqueeze(1)


# SevenNet's name for the convolutions' denominator taken from the data
AVERAGE_NEIGHBOURS = "avg_num_neigh"


def _numbers(symbols: List[str]) -> List[int]:
    """Atomic numbers in SevenNet's one-hot order (its species sorted by symbol)."""
    return [ase.data.atomic_numbers[s] for s in sorted(set(symbols))]


def _with_species(config: dict, info: DatasetInfo) -> dict:
    """A from-scratch config: the data's elements, zero shift and unit scale by default, the
    self-connection mtt converts (SevenNet's default is NequIP's), and the convolutions'
    denominator as SevenNet's ``avg_num_neigh`` means it: a placeholder here, set from the
    training data by :meth:`SevenNet.fit_statistics`."""
    if "chemical_species" not in config:
        config["chemical_species"] = [ase.data.chemical_symbols[z] for z in info.atomic_types]
    n = len(set(config["chemical_species"]))
    config.setdefault("_number_of_species", n)
    config.setdefault("shift", [0.0] * n)
    config.setdefault("scale", [1.0] * n)
    config.setdefault("self_connection_type", "linear")
    if config.get("conv_denominator", AVERAGE_NEIGHBOURS) == AVERAGE_NEIGHBOURS:
        config["conv_denominator"] = AVERAGE_NEIGHBOURS
    return config


def _sevenn_dataset_info(info: DatasetInfo, symbols: List[str]) -> DatasetInfo:
    """The data's targets on every element SevenNet knows (a fine-tuned model keeps them)."""
    if info.length_unit.lower() not in ("angstrom", "a"):
        raise MttError(
            f"SevenNet works in angstrom but the data is in {info.length_unit!r}; "
            "convert the structures to angstrom"
        )
    known = _numbers(symbols)
    unknown = sorted(set(info.atomic_types) - set(known))
    if unknown:
        names = [ase.data.chemical_symbols[z] for z in unknown]
        raise MttError(f"SevenNet does not know the elements {names} of the data")
    generic = [name for name, t in info.targets.items() if t.kind != "energy"]
    if generic:
        raise MttError(f"sevenn predicts energies only, not {generic}; use soap_bpnn for them")
    return DatasetInfo(info.length_unit, sorted(known), info.targets)
