"""Fine-tuning and transfer learning from a pretrained mtt checkpoint.

``architecture.training.finetune`` follows metatrain's shape (``read_from``, ``method``,
``config``, ``inherit_heads``) and adds what users of the field keep asking for: a choice of
reference energies (refit on the new data, or keep the pretrained ones) with a report of how
they differ, and two controls against forgetting what the pretraining taught: L2-SP
regularisation towards the pretrained weights, and distillation from the frozen pretrained
model on perturbed copies of the new structures (:mod:`mtt.forgetting`), with a report of the
error on the old task before and after.
"""

import fnmatch
import logging
from dataclasses import dataclass, field
from typing import Any, Dict, List, Literal, Optional, Sequence, Set, Tuple, Union

import torch

from .errors import MttError
from .lora import adapter_config, add_adapters
from .options import DatasetOptions

LOGGER = logging.getLogger("mtt")


@dataclass
class LoraConfig:
    """``finetune.config`` for ``method: lora``."""

    rank: int = 4
    """Rank of the low-rank update of each adapted layer."""
    alpha: float = 8.0
    """Scale of the update (the update is multiplied by ``alpha / rank``)."""
    layers: List[str] = field(default_factory=lambda: ["*"])
    """Name patterns (shell-style, e.g. ``networks.*``) of the Linear layers to adapt."""

    def validate(self) -> List[Tuple[str, str]]:
        problems = []
        if self.rank < 1:
            problems.append(("rank", f"must be at least 1, got {self.rank}"))
        if self.alpha <= 0:
            problems.append(("alpha", f"must be positive, got {self.alpha}"))
        return problems


@dataclass
class FreezeConfig:
    """``finetune.config`` for ``method: freeze``."""

    patterns: List[str] = field(default_factory=list)
    """Name patterns (shell-style) of the parameters to keep fixed, e.g. ``networks.0.*``."""


@dataclass
class NoConfig:
    """``full`` and ``heads`` take no ``config``."""


@dataclass
class DistillationHypers:
    """``finetune.distillation``: keep the model close to the frozen pretrained model (the
    teacher) on randomly perturbed copies of the training structures, without needing the
    pretraining data."""

    weight: float = 1.0
    """Weight of the distillation term in the loss. The term is the loss itself (same type,
    per-quantity weights and per-atom energies), with the teacher's predictions as labels and
    each quantity divided by its spread in the teacher's predictions on the training set."""
    displacement: float = 0.05
    """Standard deviation of the Gaussian noise added to every atomic position of the copies,
    in the length unit of the data (Å); 0 compares the models on the training structures
    themselves."""
    every: int = 1
    """Add the term at every ``every``-th optimisation step of an epoch (1: at every step); the
    term costs about one more step of the model and one evaluation of the teacher."""

    def validate(self) -> List[Tuple[str, str]]:
        problems = []
        if not self.weight > 0:
            problems.append(
                ("weight", f"must be positive (leave out distillation for off), got {self.weight}")
            )
        if not 0 <= self.displacement < 1:
            problems.append(
                (
                    "displacement",
                    "must be in [0, 1) length units (typically "
                    f"0.01 to 0.1 Å), got {self.displacement}",
                )
            )
        if self.every < 1:
            problems.append(("every", f"must be at least 1, got {self.every}"))
        return problems


METHOD_CONFIGS = {"full": NoConfig, "heads": NoConfig, "lora": LoraConfig, "freeze": FreezeConfig}


@dataclass
class FinetuneHypers:
    """``architecture.training.finetune``: start from a pretrained model."""

    read_from: str
    """The pretrained model: a checkpoint (``.ckpt`` written by ``mtt train``, whose best
    weights are used) or the name of a foundation model shipped in an optional extra, e.g.
    ``sevennet-0`` (``pip install -e ".[sevenn]"`` in the clone)."""
    method: Literal["full", "heads", "lora", "freeze"] = "full"
    """``full``: train every weight; ``heads``: only the output layers; ``lora``: low-rank
    adapters, merged into the weights at export; ``freeze``: every weight but the parameters
    matching ``config.patterns``, which stay fixed."""
    config: Dict[str, Any] = field(default_factory=dict)
    """Settings of the method: ``{rank, alpha, layers}`` for lora, ``{patterns}`` for freeze."""
    inherit_heads: Dict[str, str] = field(default_factory=dict)
    """New energy targets that start from an existing one's output, e.g.
    ``{energy/pbe0: energy}``."""
    reference_energies: Literal["refit", "keep"] = "refit"
    """Per-element reference energies: refit on the new data (a new code or functional shifts
    them; the smallest change of the pretrained ones that fits, so that what the new
    compositions leave undetermined keeps its pretrained value) or keep the pretrained ones.
    Either way the difference is reported."""
    l2sp_weight: float = 0.0
    """Weight of the L2-SP penalty ``sum (w - w_pretrained)^2`` on trained weights, which
    keeps the model close to what it knew (0: off)."""
    distillation: Optional[DistillationHypers] = None
    """Distillation from the frozen pretrained model on perturbed copies of the training
    structures (energies per atom and forces of the pretrained targets), against forgetting:
    ``{weight, displacement, every}``; null: off."""
    old_task_set: Optional[Union[str, DatasetOptions]] = None
    """Labelled data of the pretraining task (a file with energies and forces in eV and Å, or
    a section like ``training_set``). The errors of the pretrained and of the fine-tuned model
    on it are reported at the start and the end, and written to ``forgetting.json``."""

    def validate(self) -> List[Tuple[str, str]]:
        if self.l2sp_weight < 0:
            return [("l2sp_weight", f"must be >= 0, got {self.l2sp_weight}")]
        return []


def parse_method_config(finetune: FinetuneHypers, path: str):
    """The method's config dataclass, validated (errors name ``<path>.config``)."""
    from .hypers import parse

    return parse(METHOD_CONFIGS[finetune.method], finetune.config, f"{path}.config")


def apply_method(
    model: torch.nn.Module, finetune: FinetuneHypers, pretrained_generic: Sequence[str] = ()
) -> None:
    """Choose what trains, in place, and log the number of trainable parameters. The heads of
    generic targets the pretrained model lacks (not in ``pretrained_generic``) start
    untrained, so they train whatever the method."""
    config = parse_method_config(finetune, "architecture.training.finetune")
    if finetune.method == "lora" and adapter_config(model):
        # restarting a LoRA run: the adapters came back with the checkpoint
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(".lora_" in name)
    elif finetune.method == "lora":
        layers = add_adapters(model, config.rank, config.alpha, config.layers)
        if not layers:
            raise MttError(
                f"'architecture.training.finetune.config.layers' {config.layers} matches no "
                f"Linear layer of the model; its layers are {linear_layer_names(model)}"
            )
    elif finetune.method == "heads":
        heads = set(model.head_parameter_names())
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(name in heads)
    elif finetune.method == "freeze":
        matched = _freeze(model, config.patterns)
        if not matched:
            raise MttError(
                "'architecture.training.finetune.config.patterns' matches no parameter; "
                f"parameter names look like {[n for n, _ in model.named_parameters()][:4]}"
            )
    for k, name in enumerate(getattr(model, "generic_names", [])):
        if name not in pretrained_generic:
            for parameter in model.generic_heads[k].parameters():
                parameter.requires_grad_(True)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    if finetune.method == "freeze" and trainable == 0:  # epochs that would change nothing
        raise MttError(
            f"'architecture.training.finetune.config.patterns' {config.patterns} match every "
            "parameter of the model, so nothing would train; name fewer (parameter names look "
            f"like {[n for n, _ in model.named_parameters()][-4:]}), or use method: heads"
        )
    LOGGER.info("fine-tuning (%s): %d of %d parameters train", finetune.method, trainable, total)


def _freeze(model: torch.nn.Module, patterns: List[str]) -> int:
    matched = 0
    for name, parameter in model.named_parameters():
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns):
            parameter.requires_grad_(False)
            matched += 1
    return matched


def linear_layer_names(model: torch.nn.Module) -> List[str]:
    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]


def report_reference_energies(
    model,
    old_baseline: torch.Tensor,
    new_baseline: torch.Tensor,
    scales: torch.Tensor,
    elements: Optional[Set[int]] = None,
) -> List[str]:
    """Lines comparing pretrained and refitted reference energies per target and element
    (of ``elements``, by default all the model's); a shift much larger than the energy scale
    usually means a unit or reference mistake."""
    import ase.data

    lines = []
    for t, name in enumerate(model.target_names):
        unit = model.energy_units[t]
        for k, z in enumerate(model.atomic_types):
            if elements is not None and z not in elements:
                continue
            old, new = float(old_baseline[t, k]), float(new_baseline[t, k])
            note = ""
            if abs(new - old) > 20 * float(scales[t]) and abs(new - old) > 1e-6:
                note = (
                    "  <- large shift: expected for another reference method, else check the unit"
                )
            lines.append(
                f"{name} {ase.data.chemical_symbols[z]:>2}: pretrained {old:.6g}, refit "
                f"{new:.6g}, difference {new - old:+.4g} {unit}{note}"
            )
    return lines
