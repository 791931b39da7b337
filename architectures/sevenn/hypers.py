"""Hypers of ``sevenn``: the single source of their defaults, types and documentation."""

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Tuple

from mtt.errors import did_you_mean
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
    trained from scratch, with sevenn's defaults for the keys it leaves out, except that
    ``conv_denominator`` (by default ``avg_num_neigh``) is the training data's mean number of
    neighbours and ``self_connection_type`` is ``linear`` (the one mtt converts)."""

    # filled from the checkpoint (see above): a run's options.yaml keeps the options' value,
    # since a given config means a network trained from scratch
    __filled_from_weights__ = ("sevennet_config",)

    def validate(self) -> List[Tuple[str, str]]:
        if not self.checkpoint and not self.sevennet_config:
            return [("checkpoint", "give a SevenNet checkpoint or a sevennet_config")]
        return _config_problems(self.sevennet_config)


def _config_problems(config: Dict[str, Any]) -> List[Tuple[str, str]]:
    """The keys of a from-scratch SevenNet config that sevenn would reject deep inside its
    model builder (as an internal error), checked here, one line each."""
    from .modules.convert import CONFIG_KEYS

    problems = []
    for key in config:
        if key not in CONFIG_KEYS:
            hint = did_you_mean(key, CONFIG_KEYS)
            problems.append(
                (f"sevennet_config.{key}", f"is not a SevenNet network setting; {hint}remove it")
            )
    cutoff = config.get("cutoff")
    if "cutoff" in config and not (_is_number(cutoff) and math.isfinite(cutoff) and cutoff > 0):
        problems.append(("sevennet_config.cutoff", f"must be a positive number, got {cutoff!r}"))
    # (-1: lmax_edge and lmax_node as lmax, SevenNet's default)
    # channel 1 builds zero-size gates: such a network trains nothing (only torch's warning)
    least = {"channel": 2, "num_convolution_layer": 1, "lmax": 0, "lmax_edge": -1, "lmax_node": -1}
    for name, smallest in least.items():
        value = config.get(name)
        if name in config and not (type(value) is int and value >= smallest):
            problems.append(
                (f"sevennet_config.{name}", f"must be an integer >= {smallest}, got {value!r}")
            )
    kind = config.get("self_connection_type", "linear")
    if kind != "linear":
        problems.append(
            ("sevennet_config.self_connection_type", f"only 'linear' is supported, got {kind!r}")
        )
    denominator = config.get("conv_denominator", "avg_num_neigh")
    numbers = denominator if isinstance(denominator, list) else [denominator]
    if denominator != "avg_num_neigh" and not all(_is_number(v) and v > 0 for v in numbers):
        problems.append(
            (
                "sevennet_config.conv_denominator",
                f"must be 'avg_num_neigh' (from the data) or positive numbers, got {denominator!r}",
            )
        )
    return problems + _activation_problems(config)


# sevenn 0.13's activations (sevenn._const, not imported: validating needs no sevenn); the
# gated nonlinearity takes even ("e") and odd ("o") scalars, each from its own set
_ACTIVATIONS = ("relu", "silu", "tanh", "abs", "ssp", "sigmoid", "elu")
_GATE_ACTIVATIONS = {"e": ("ssp", "silu"), "o": ("tanh", "abs")}


def _activation_problems(config: Dict[str, Any]) -> List[Tuple[str, str]]:
    """sevenn looks these up in its tables deep in its model builder (a bare KeyError); a
    given ``act_scalar`` replaces sevenn's default whole, so it needs both parities."""
    problems = []
    if "is_parity" in config and not isinstance(config["is_parity"], bool):
        problems.append(
            ("sevennet_config.is_parity", f"must be true or false, got {config['is_parity']!r}")
        )
    radial = config.get("act_radial", "silu")
    if radial not in _ACTIVATIONS:
        choices = ", ".join(_ACTIVATIONS)
        problems.append(("sevennet_config.act_radial", f"must be one of {choices}; got {radial!r}"))
    example = "{e: silu, o: tanh}"
    for name in ("act_scalar", "act_gate"):
        value = config.get(name, {"e": "silu", "o": "tanh"})
        key = f"sevennet_config.{name}"
        if not isinstance(value, dict) or set(value) != {"e", "o"}:
            message = "must map both parities e (even) and o (odd) to an activation, e.g. "
            problems.append((key, f"{message}{example}; got {value!r}"))
            continue
        for parity, choices in _GATE_ACTIVATIONS.items():
            if value[parity] not in choices:
                allowed = " or ".join(choices)
                problems.append((f"{key}.{parity}", f"must be {allowed}; got {value[parity]!r}"))
    return problems


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


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
