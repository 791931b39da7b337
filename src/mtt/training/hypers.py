"""Training hypers shared by every architecture (``architecture.training``).

Names follow metatrain where they mean the same (``num_epochs``, ``batch_size``,
``learning_rate``, ``checkpoint_interval``, ``per_structure_targets``). An architecture's
``hypers.py`` subclasses :class:`TrainingHypers` to add what only it needs.
"""

import difflib
import re
from dataclasses import dataclass, field
from typing import Dict, List, Literal, Optional, Tuple, Union

from ..finetune import FinetuneHypers
from ..options import TargetOptions


@dataclass
class LossHypers:
    """How predictions are compared with labels (``loss: mse`` is short for ``loss: {type:
    mse}``, as in metatrain)."""

    __shorthand__ = "type"
    # metatrain's loss has a section per target (its gradients' weights inside)
    __metatrain__ = {
        "*": "per-target loss sections are mtt's 'weights', one per quantity, e.g. "
        "{energy: 1.0, energy/forces: 10.0}; 'type' and 'huber_delta' apply to all"
    }

    type: Literal["mse", "mae", "huber"] = "mse"
    """Mean squared error, mean absolute error, or Huber (quadratic below ``huber_delta``)."""
    huber_delta: float = 1.0
    """Where Huber switches from quadratic to linear, in units of each quantity's scale."""
    weights: Dict[str, float] = field(default_factory=dict)
    """Weight of each quantity in the loss, e.g. ``{energy: 1.0, energy/forces: 10.0,
    energy/stress: 1.0}``; quantities left out weigh 1, forces 10. Each quantity is divided
    by its spread in the training set first, so weights compare like with like; energies
    learnt with forces by at least the forces' RMS times 0.1 Å (one molecule's trajectory
    spreads its per-atom energies by ~0.01 eV, and weighed that finely a model learns a flat
    energy surface instead of the forces). Forces 10 gave the best forces everywhere we
    measured and the best energies on molecules and one-phase bulk; where energies across
    phases matter most, ``energy/forces: 1`` gave carbon phases 3x smaller energy errors for
    forces 40 % worse (``benchmarks/README.md``)."""

    def validate(self) -> List[Tuple[str, str]]:
        problems = [
            ("weights", f"weight of {k!r} must be >= 0, got {w}")
            for k, w in self.weights.items()
            if w < 0
        ]
        if self.huber_delta <= 0:
            problems.append(("huber_delta", f"must be positive, got {self.huber_delta}"))
        elif self.huber_delta != 1.0 and self.type != "huber":
            problems.append(("huber_delta", f"is for type: huber, but the type is {self.type}"))
        return problems


@dataclass
class TrainingHypers:
    """The training loop's settings."""

    num_epochs: int = 100
    """Passes over the training set."""
    batch_size: int = 8
    """Structures per optimisation step, over all processes when training on several GPUs
    (each takes its share): N processes then follow the run of one."""
    max_atoms_per_batch: Optional[int] = None
    """Also cap the atoms per batch (for data sets of mixed sizes), over all processes like
    ``batch_size``; a structure larger than the cap makes a batch of its own; null: no cap."""
    learning_rate: float = 1e-3
    """Peak learning rate (reached after the warm-up)."""
    optimizer: Literal["adam", "adamw"] = "adam"
    """Adam, or AdamW (decoupled weight decay)."""
    weight_decay: Optional[float] = 0.0
    """Weight decay of the optimizer; null (metatrain's default) is 0, none."""
    warmup_epochs: float = 0.0
    """Epochs of linear warm-up to ``learning_rate`` (fractions allowed): over ``n`` steps
    the rate of step ``k`` is ``(k + 1) / (n + 1)`` of the peak, so the first step already
    moves the weights."""
    scheduler: Literal["cosine", "constant", "plateau"] = "cosine"
    """After the warm-up: cosine decay to ``min_learning_rate_ratio`` of the peak, constant,
    or ``plateau``: multiplied by ``plateau_factor`` whenever the validation loss has not
    improved for ``plateau_patience`` epochs."""
    plateau_factor: float = 0.5
    """Learning-rate factor of the plateau scheduler."""
    plateau_patience: int = 10
    """Epochs without improvement before the plateau scheduler lowers the learning rate."""
    early_stopping_patience: Optional[int] = None
    """Stop when the validation loss has not improved for this many epochs (null: never)."""
    ema_decay: Optional[float] = None
    """Keep an exponential moving average of the weights with this decay per step (e.g.
    0.99); validation, the best model and the export then use the averaged weights."""
    min_learning_rate_ratio: float = 0.01
    """Final learning rate of the cosine schedule, as a fraction of ``learning_rate``."""
    grad_clip_norm: Optional[float] = 10.0
    """Clip the gradient norm of the (dimensionless) loss to this value; null: no clipping."""
    loss: LossHypers = field(default_factory=LossHypers)
    """The loss: ``type``, ``huber_delta`` and per-quantity ``weights``."""
    per_structure_targets: List[str] = field(default_factory=list)
    """Energies listed here are compared per structure; the others per atom (the default)."""
    fixed_composition_weights: Dict[str, Dict[Union[str, int], float]] = field(default_factory=dict)
    """Reference energies fixed by hand, per target and element (a symbol, or an atomic
    number as in metatrain's files), in the target's unit, e.g. ``{energy: {H: -13.6, 8:
    -2040.0}}``; the other elements are fitted by least squares."""
    distributed: Literal["auto", "off"] = "auto"
    """``auto``: when launched by ``torchrun`` or SLURM's ``srun`` with several processes,
    train together, one process per GPU (see the multi-GPU how-to); ``off``: every process
    trains alone, whatever launched it."""
    checkpoint_interval: int = 100
    """Write a training checkpoint every this many epochs (and always at the end; on Ctrl-C
    or a scheduler's SIGTERM, the last complete epoch's)."""
    log_interval: int = 1
    """Print a line of metrics every this many epochs."""
    progress_bar: bool = True
    """Draw a per-batch progress bar with loss and ETA when attached to a terminal."""
    uncertainty: Literal["none", "llpr"] = "none"
    """``llpr``: after training, calibrate energy uncertainties from the last layer (LLPR,
    on the validation set) and export ``energy_uncertainty`` per structure and per atom;
    metatomic's ASE calculator then warns when an atom's uncertainty exceeds its threshold.
    Costs one pass over the data after training, and a second feature pass in MD."""
    finetune: Optional[FinetuneHypers] = None
    """Start from a pretrained checkpoint: ``read_from``, ``method`` (full, heads, lora,
    freeze), ``config``, ``inherit_heads``, ``reference_energies``, ``l2sp_weight``."""

    def validate(self) -> List[Tuple[str, str]]:
        problems = []
        positive = ("num_epochs", "batch_size", "checkpoint_interval", "log_interval")
        for name in positive:
            if getattr(self, name) < 1:
                problems.append((name, f"must be at least 1, got {getattr(self, name)}"))
        if self.learning_rate <= 0:
            problems.append(("learning_rate", f"must be positive, got {self.learning_rate}"))
        if self.plateau_patience < 0:
            problems.append(
                ("plateau_patience", f"must not be negative, got {self.plateau_patience}")
            )
        for name in ("weight_decay", "warmup_epochs"):
            if (getattr(self, name) or 0.0) < 0:
                problems.append((name, f"must not be negative, got {getattr(self, name)}"))
        if not 0 <= self.min_learning_rate_ratio <= 1:
            problems.append(("min_learning_rate_ratio", "must be in [0, 1]"))
        elif self.min_learning_rate_ratio != 0.01 and self.scheduler != "cosine":
            problems.append(
                (
                    "min_learning_rate_ratio",
                    f"is the floor of the cosine scheduler, but the scheduler is "
                    f"{self.scheduler}: remove it, or set scheduler: cosine",
                )
            )
        if self.warmup_epochs >= self.num_epochs > 0:
            problems.append(
                (
                    "warmup_epochs",
                    f"is {self.warmup_epochs}, not below num_epochs ({self.num_epochs}): the "
                    "learning rate would never reach learning_rate; lower it",
                )
            )
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            problems.append(("ema_decay", f"must be in (0, 1), got {self.ema_decay}"))
        if not 0 < self.plateau_factor < 1:
            problems.append(("plateau_factor", f"must be in (0, 1), got {self.plateau_factor}"))
        for name in ("early_stopping_patience", "max_atoms_per_batch"):
            value = getattr(self, name)
            if value is not None and value < 1:
                problems.append((name, f"must be at least 1 or null, got {value}"))
        if self.grad_clip_norm is not None and self.grad_clip_norm <= 0:
            problems.append(("grad_clip_norm", "must be positive or null"))
        return problems


# An energy of a pretrained model (or its forces), which distillation compares by name.
_ENERGY_QUANTITY = re.compile(r"energy(/[A-Za-z0-9_.\-]+)?(/forces)?")


def target_name_problems(
    hypers: TrainingHypers, targets: Dict[str, TargetOptions], direct_heads: bool = False
) -> List[Tuple[str, str]]:
    """``(key, message)`` for each name in ``loss.weights``, ``per_structure_targets`` and
    ``fixed_composition_weights`` that is not one of the declared ``targets`` (or, for the
    weights, one of their quantities: ``energy/forces``, ``energy/stress``, and with
    ``direct_heads`` ``energy/direct_forces`` and ``energy/direct_stress``). Keys are dotted
    paths under ``architecture.training``."""
    energies = [name for name in targets if not name.startswith("mtt::")]
    switched_off: Dict[str, str] = {}  # quantity -> the option that turns it off
    quantities: List[str] = []
    for name, target in targets.items():
        quantities.append(name)
        if name in energies:
            for quantity, reason in _gradient_quantities(name, target, direct_heads).items():
                if reason is None:
                    quantities.append(quantity)
                else:
                    switched_off[quantity] = reason
    # distillation weighs the pretrained model's energies and forces with the same weights
    teacher = hypers.finetune is not None and hypers.finetune.distillation is not None
    problems = []
    for name in hypers.loss.weights:
        if name in quantities or (teacher and _ENERGY_QUANTITY.fullmatch(name)):
            continue
        if name in switched_off:
            message = (
                f"weighs a quantity that is not trained ({switched_off[name]}); remove the "
                "weight or change that option"
            )
        else:
            message = _not_declared("target or quantity", name, quantities)
        problems.append((f"loss.weights.{name}", message))
    for index, name in enumerate(hypers.per_structure_targets):
        if name not in energies and not (teacher and _ENERGY_QUANTITY.fullmatch(name)):
            reason = _energies_only(name, targets, energies, "are compared per atom")
            problems.append((f"per_structure_targets[{index}]", f"({name!r}) {reason}"))
    for name in hypers.fixed_composition_weights:
        if name not in energies:
            message = _energies_only(name, targets, energies, "have composition baselines")
            problems.append((f"fixed_composition_weights.{name}", message))
    return problems


def _gradient_quantities(
    name: str, target: TargetOptions, direct_heads: bool
) -> Dict[str, Optional[str]]:
    """The gradient quantities of energy ``name``: None if trained, else why they are not."""
    where = f"training_set.targets.{name}"
    forces = None if target.forces is not False else f"'{where}.forces' is false"
    stress_on = target.stress is not False or target.virial is not False
    stress = None if stress_on else f"'{where}.stress' and '{where}.virial' are false"
    no_heads = "direct heads need pet's 'architecture.model.direct_forces: true'"
    return {
        f"{name}/forces": forces,
        f"{name}/stress": stress,
        f"{name}/direct_forces": forces if direct_heads else no_heads,
        f"{name}/direct_stress": stress if direct_heads else no_heads,
    }


def _energies_only(name: str, targets: Dict[str, TargetOptions], energies, what: str) -> str:
    if name in targets:
        return f"is not an energy: only energies {what}; remove it"
    return _not_declared("energy target", name, energies)


def _not_declared(what: str, name: str, valid: List[str]) -> str:
    message = f"names no {what} of the training set"
    stress = name.removesuffix("/virial") + "/stress"  # virial labels train the stress
    if name.endswith("/virial") and stress in valid:
        close = [stress]
    else:  # also match the last part: 'forcs' is close to 'energy/forces'
        tails = {v.rsplit("/", 1)[-1]: v for v in reversed(valid) if "/" in v}
        close = difflib.get_close_matches(name, valid, n=1)
        close = close or [tails[t] for t in difflib.get_close_matches(name, list(tails), n=1)]
    if close:
        message += f"; did you mean '{close[0]}'?"
    listed = ", ".join(f"'{v}'" for v in valid) or "none"
    return f"{message} (valid names: {listed})"
