"""The options a user writes in ``options.yaml``.

The format is metatrain's wherever the two tools share a feature, so its users can bring their
files: ``architecture: {name, model, training}``, ``training_set``, ``validation_set``,
``test_set``, ``seed``, ``device`` and ``base_precision``. The shortest valid file is::

    architecture:
      name: soap_bpnn
    training_set: data.xyz
    validation_set: 0.1

Each dataclass below is the single source of the defaults, types and documentation of its keys.
The ``model`` and ``training`` sections belong to the architecture and are validated against its
own hypers dataclasses (see :mod:`mtt.architectures`).
"""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Literal, Optional, Tuple, Union

#: Default key under which each gradient of an energy is looked for in the data.
DEFAULT_GRADIENT_KEYS = {"forces": "forces", "stress": "stress", "virial": "virial"}


@dataclass
class GradientOptions:
    """Where to read forces, stress or virial of an energy target."""

    key: str = ""
    """Key in ``atoms.arrays`` (forces) or ``atoms.info`` (stress, virial), or a calculator
    result. Empty means the default: ``forces``, ``stress`` or ``virial``."""
    read_from: Optional[str] = None
    """File to read the labels from; by default the energy's (its ``read_from``, else the
    systems' file), as in metatrain."""
    reader: Optional[str] = None
    """ASE format name for ``read_from``; by default the energy's ``reader``, else guessed
    from the file name."""
    conservative: bool = True
    """``true``: exact gradients of the energy (forces -dE/dx, stress (1/V) dE/dε), the only
    choice of the shipped architectures; ``false`` (labels learnt by direct heads only) is
    refused. To train direct (non-conservative) heads *as well*, on the same labels, use
    ``pet`` with ``architecture.model.direct_forces: true``."""

    def validate(self) -> List[Tuple[str, str]]:
        if not self.conservative:
            return [
                (
                    "conservative",
                    "false (labels learnt by direct heads only) is not available; remove "
                    "it to use exact energy gradients, and for direct forces/stress heads "
                    "trained alongside them set pet's architecture.model.direct_forces: true",
                )
            ]
        return []


@dataclass
class TargetOptions:
    """A target: an energy (``energy``, ``energy/<variant>``) with its gradients, or a generic
    property (``mtt::<name>``: scalars, vectors, symmetric rank-2 tensors, per structure or per
    atom), in metatrain's syntax."""

    key: Optional[str] = None
    """Key in ``atoms.info`` (per structure), ``atoms.arrays`` (per atom) or the calculator
    results; by default ``energy`` for energies and ``<name>`` for ``mtt::<name>``."""
    unit: Optional[str] = None
    """Unit of the labels as metatomic spells it (energies: ``eV``, ``meV``, ``kcal/mol``,
    ``kJ/mol``, ``Hartree``; others e.g. ``D``, ``bohr^3``, or empty); by default ``eV`` for
    energies and none for other targets. The exported model predicts in this unit."""
    read_from: Optional[str] = None
    """File to read the labels from; by default the systems' file."""
    reader: Optional[str] = None
    """ASE format name for ``read_from``; by default guessed from the file name."""
    type: Union[Literal["scalar"], Dict[str, Any]] = "scalar"
    """``scalar``, or ``{cartesian: {rank: 1}}`` (a vector, e.g. a dipole: 3 numbers) or
    ``{cartesian: {rank: 2}}`` (a symmetric tensor, e.g. a polarizability: 9 numbers,
    row-major). Energies are scalars."""
    quantity: str = ""
    """Kept for metatrain compatibility: free text, except ``energy`` on an ``mtt::<name>``
    target, which is refused (mtt's energies are the targets named ``energy``)."""
    per_atom: bool = False
    """Labels per atom (``atoms.arrays``) instead of per structure; not for energies."""
    num_subtargets: int = 1
    """Numbers per label of a scalar target (e.g. 3 class scores); vectors and tensors take
    ``num_subtargets`` times 3 or 9 numbers. Energies have one."""
    reduction: Literal["sum", "mean", "max"] = "sum"
    """How per-atom contributions make a per-structure prediction (``max`` only for scalars);
    energies are sums."""
    description: str = ""
    """Free text stored in the exported model."""
    forces: Union[bool, str, GradientOptions] = True
    """Energies only. ``true``: train on forces if the data has them under ``forces``; a key
    name or a section: read them from there (an error if absent); ``false``: no forces."""
    stress: Union[bool, str, GradientOptions] = True
    """Energies only. As ``forces``, for the stress (energy/length³, ASE's sign); only
    periodic structures."""
    virial: Union[bool, str, GradientOptions] = False
    """Energies only. As ``forces``, for the virial (energy; converted to stress as
    -virial/volume)."""

    def validate(self) -> List[Tuple[str, str]]:
        problems = []
        if self.num_subtargets < 1:
            problems.append(("num_subtargets", f"must be at least 1, got {self.num_subtargets}"))
        if self.stress not in (False, True) and self.virial not in (False, True):
            problems.append(("virial", "cannot be read together with 'stress'; give one of them"))
        if isinstance(self.type, dict) and cartesian_rank(self.type) is None:
            problems.append(("type", _unsupported_type(self.type)))
        return problems

    @property
    def rank(self) -> int:
        return 0 if self.type == "scalar" else int(cartesian_rank(self.type) or 0)


def cartesian_rank(value: Dict[str, Any]) -> Optional[int]:
    """The rank of a ``{cartesian: {rank: N}}`` type, or None if it is not one we support."""
    if set(value) != {"cartesian"} or not isinstance(value["cartesian"], dict):
        return None
    rank = value["cartesian"].get("rank")
    exact = set(value["cartesian"]) == {"rank"} and type(rank) is int  # not true, not 1.0
    return rank if exact and rank in (1, 2) else None


def _unsupported_type(value: Dict[str, Any]) -> str:
    supported = "scalar, {cartesian: {rank: 1}} or {cartesian: {rank: 2}}"
    if "spherical" in value:  # metatrain's irreducible targets, whatever their irreps
        return f"is a spherical target, which mtt does not support; use {supported}"
    return f"must be {supported}, got {value}"


def raw_target_problems(raw: Any) -> List[str]:
    """What the parsed options cannot tell from a default, one line each: a target's ``unit:
    null`` (metatrain's way to leave it unset; the default would silently be eV), and a
    ``forces``, ``stress`` or ``virial`` key that the raw options give a generic target
    (``mtt::<name>``) with any value but ``false`` (``true`` is the energies' default), and
    metatrain's ``quantity: energy`` on a generic target (an energy there, a number here)."""
    problems = []
    for set_name in ("training_set", "validation_set", "test_set"):
        section = raw.get(set_name) if isinstance(raw, dict) else None
        targets = section.get("targets") if isinstance(section, dict) else None
        for name, target in targets.items() if isinstance(targets, dict) else ():
            generic = isinstance(name, str) and name.startswith("mtt::")
            if isinstance(target, dict) and "unit" in target and target["unit"] is None:
                fix = (
                    "the labels' unit (e.g. D), or '' for a dimensionless target"
                    if generic
                    else "the energies' unit (e.g. eV, kcal/mol, Hartree), or leave the key "
                    "out for eV"
                )
                problems.append(f"option '{set_name}.targets.{name}.unit' is null: give {fix}")
            if (
                isinstance(target, dict)
                and target.get("reader") not in (None, "ase")
                and target.get("read_from") is None
            ):
                problems.append(
                    f"option '{set_name}.targets.{name}.reader' is set without read_from: the "
                    f"labels are read from the systems' file with its reader; set "
                    f"'{set_name}.systems.reader' instead, or name the labels' file in read_from"
                )
            where = f"option '{set_name}.targets.{name}.reduction' is set, but"
            if isinstance(target, dict) and target.get("reduction", "sum") != "sum":
                if not generic:
                    problems.append(f"{where} energies are sums; remove it")
                elif target.get("per_atom") is True:
                    problems.append(f"{where} per-atom targets are not reduced; remove it")
            if not generic:
                continue
            quantity = target.get("quantity") if isinstance(target, dict) else None
            if isinstance(quantity, str) and quantity.strip().lower() == "energy":
                variant = name.split("::", 1)[1].replace("/", "_")
                problems.append(
                    f"option '{set_name}.targets.{name}.quantity' is energy, which makes it an "
                    f"energy in metatrain; mtt trains energies (per-element reference energies, "
                    f"forces, stress) as the targets 'energy' and 'energy/<variant>': name it "
                    f"'energy/{variant}', or remove quantity to train a generic number without "
                    "reference energies"
                )
            for key in ("forces", "stress", "virial"):
                if isinstance(target, dict) and key in target and target[key] is not False:
                    problems.append(
                        f"option '{set_name}.targets.{name}.{key}' is set, but only energies "
                        f"have {key}; remove it"
                    )
    return problems


#: The previous name of :class:`TargetOptions`.
EnergyTargetOptions = TargetOptions


@dataclass
class SystemsOptions:
    """Where the structures come from."""

    read_from: str
    """Path of a file ASE can read (extxyz, ASE database, VASP, ...), relative to options.yaml."""
    reader: Optional[str] = None
    """ASE format name (``extxyz``, ``vasp-xml``, ...); by default, or with ``ase`` as in
    metatrain's files, guessed from the file name."""
    length_unit: str = "angstrom"
    """Length unit of the positions and cells (``angstrom``, ``bohr``, ``nm``)."""


@dataclass
class DatasetOptions:
    """A data set: structures and the targets to learn from them."""

    # metatrain's keys that mtt does without: said so, not only 'unknown option'
    __metatrain__ = {
        "indices": "mtt reads every frame of a file; write the frames you want to their own "
        "file (ase.io.write) and name it",
        "extra_data": "mtt reads no extra data; remove it",
    }

    systems: Union[str, SystemsOptions]
    """A file path, or a section with ``read_from``, ``reader`` and ``length_unit``."""
    targets: Dict[str, TargetOptions] = field(default_factory=lambda: {"energy": TargetOptions()})
    """Targets by name: ``energy``, variants like ``energy/pbe0``, or ``mtt::<name>``."""


@dataclass
class ArchitectureOptions:
    """Which model to train and how."""

    name: str
    """Architecture name, e.g. ``soap_bpnn`` (``mtt train --help`` lists them)."""
    model: Dict[str, Any] = field(default_factory=dict)
    """Model hypers of the architecture (see its documentation page)."""
    training: Dict[str, Any] = field(default_factory=dict)
    """Training hypers (see the architecture's documentation page)."""


@dataclass
class Options:
    """The whole ``options.yaml``."""

    # metatrain's keys that mtt does without: said so, not only 'unknown option'
    __metatrain__ = {
        "print_stats": "mtt always prints the structures and labels of each set; remove it",
        "final_eval": "mtt always reports the errors on every set at the end; remove it",
        "wandb": "mtt logs to train.csv and, when installed, TensorBoard; remove it",
    }

    architecture: ArchitectureOptions
    """The architecture section: ``name``, ``model`` and ``training``."""
    training_set: Union[str, DatasetOptions]
    """A structure file (energies under ``energy``, forces under ``forces``, in eV and Å) or a
    data set section with ``systems`` and ``targets``."""
    validation_set: Union[float, str, DatasetOptions] = 0.1
    """A fraction of the training set in [0, 1), a file, or a data set section."""
    test_set: Union[float, str, DatasetOptions] = 0.0
    """As ``validation_set``; 0 means no test set."""
    seed: int = 0
    """Seed of every random choice (splits, initial weights, shuffling): same seed, same run."""
    device: str = "auto"
    """``auto`` (a GPU if there is one), ``cpu``, ``cuda`` or ``cuda:N``."""
    base_precision: Literal[16, 32, 64] = 32
    """Floating point bits of training and of the exported model: 32 or 64 (16 is refused)."""

    def validate(self) -> List[Tuple[str, str]]:
        problems = []
        for name in ("validation_set", "test_set"):
            value = getattr(self, name)
            if isinstance(value, float) and not 0.0 <= value < 1.0:
                problems.append((name, f"must be a fraction in [0, 1), got {value}"))
        if self.base_precision == 16:
            problems.append(("base_precision", "16 bits is not supported; use 32 or 64"))
        if self.seed < 0:
            problems.append(("seed", f"must be zero or positive, got {self.seed}"))
        return problems
