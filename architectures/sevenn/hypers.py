"""Hypers of ``sevenn``: the single source of their defaults, types and documentation."""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Tuple

from mtt.training.hypers import TrainingHypers


@dataclass
class ModelHypers:
    """``architecture.model`` for ``sevenn``."""

    checkpoint: str = "sevennet-0"
    """The SevenNet model to start from: the name of a checkpoint shipped in the sevenn wheel
    (``sevennet-0``, ``sevennet-0_22may2024``, ``sevennet-l3i5``) or the path of a SevenNet
    ``.pth`` file (see ``trust_checkpoint``). Ignored when ``sevennet_config`` is given."""
    trust_checkpoint: bool = False
    """SevenNet ``.pth`` files are pickles, which run code when loaded. The ones shipped in
    the sevenn package are read as they are; another file only with ``true``."""
    sevennet_config: Dict[str, Any] = field(default_factory=dict)
    """The SevenNet network settings (sevenn's own config keys: ``cutoff``, ``channel``,
    ``lmax``, ``num_convolution_layer``, ``chemical_species``...). Left empty, it is filled
    from ``checkpoint`` and stored in mtt checkpoints, which are then rebuilt from it without
    the ``.pth`` file. Given, the network is built from it with random weights: SevenNet
    trained from scratch."""

    def validate(self) -> List[Tuple[str, str]]:
        if not self.checkpoint and not self.sevennet_config:
            return [("checkpoint", "give a SevenNet checkpoint or a sevennet_config")]
        return []


@dataclass
class TrainerHypers(TrainingHypers):
    """``architecture.training`` for ``sevenn``: the shared training hypers. Without a
    ``finetune`` section, the SevenNet weights of ``architecture.model.checkpoint`` are
    fine-tuned as with ``finetune: {method: full, reference_energies: refit}``."""

    learning_rate: float = 1e-4
    """Peak learning rate (reached after the warm-up). Lower than other architectures'
    1e-3: every weight of a pretrained network trains, and at 1e-3 the first epochs undo
    what it knew (20 ethanol and 20 SiGe structures, 2 epochs: energies 61 meV/atom and
    forces 0.41 eV/Å from a zero-shot 11 and 0.20; at 1e-4, 13 and 0.14). Training from
    scratch (``sevennet_config``) wants ~1e-3."""
