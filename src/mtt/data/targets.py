"""The property schema: what a model learns, as resolved from the options.

An energy target has a name (``energy`` or ``energy/<variant>``), a unit, and optionally forces
and stress, each either conservative (exact gradients of the energy) or direct (a separate head).
:class:`DatasetInfo` gathers what a model must know about its data; it is stored in checkpoints
as a plain dict and compared on restart and fine-tuning.
"""

import re
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Union

from ..errors import MttError
from ..options import DEFAULT_GRADIENT_KEYS, GradientOptions, TargetOptions
from ..units import check_energy_unit, check_unit


@dataclass
class GradientSource:
    """Where one gradient of an energy is read, and whether it must be there."""

    key: str
    required: bool
    read_from: Optional[str] = None
    reader: Optional[str] = None
    conservative: bool = True


@dataclass
class TargetInfo:
    """What the model predicts for one target.

    ``kind`` is ``energy`` (a per-structure sum with optional forces and stress as its exact
    gradients) or ``generic`` (``mtt::<name>``: ``rank`` 0, 1 or 2 Cartesian values with
    ``num_subtargets`` channels, per atom or reduced over atoms with ``reduction``)."""

    name: str
    unit: str
    forces: bool = False
    stress: bool = False
    conservative: bool = True
    description: str = ""
    kind: str = "energy"
    rank: int = 0
    per_atom: bool = False
    num_subtargets: int = 1
    reduction: str = "sum"

    @property
    def quantities(self) -> List[str]:
        """Label names of this target: the energy and its gradients, e.g. ``energy/forces``."""
        names = [self.name]
        names += [f"{self.name}/forces"] if self.forces else []
        names += [f"{self.name}/stress"] if self.stress else []
        return names

    @property
    def components(self) -> int:
        """Cartesian components per channel: 1, 3 or 9."""
        return 3**self.rank


@dataclass
class DatasetInfo:
    """Units, elements and targets of a training set."""

    length_unit: str
    atomic_types: List[int]
    targets: Dict[str, TargetInfo] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "DatasetInfo":
        targets = {name: TargetInfo(**t) for name, t in data["targets"].items()}
        return cls(data["length_unit"], [int(t) for t in data["atomic_types"]], targets)


def target_kind(name: str) -> str:
    """``energy`` for ``energy`` and ``energy/<variant>``, ``generic`` for ``mtt::<name>``."""
    if re.fullmatch(r"energy(/[A-Za-z0-9_.\-]+)?", name):
        variant = name.partition("/")[2]
        if variant in DEFAULT_GRADIENT_KEYS:  # 'energy/forces' names the energy's own forces
            raise MttError(
                f"target name {name!r} is taken by the {variant} of 'energy': declare them in "
                f"its section ('energy: {{{variant}: <key>}}'), and give another energy a "
                "variant name such as 'energy/pbe0'"
            )
        return "energy"
    if re.fullmatch(r"mtt::[A-Za-z_][A-Za-z0-9_]*(/[A-Za-z0-9_.\-]+)?", name):
        return "generic"
    raise MttError(
        f"target name {name!r} is not valid: use 'energy', 'energy/<variant>' (e.g. "
        "'energy/pbe0') or 'mtt::<name>' for other properties (e.g. 'mtt::dipole')"
    )


def resolve_gradient(
    value: Union[bool, str, GradientOptions], kind: str
) -> Optional[GradientSource]:
    """Turn the user's ``forces``/``stress``/``virial`` option into a :class:`GradientSource`."""
    if value is False:
        return None
    if value is True:
        return GradientSource(DEFAULT_GRADIENT_KEYS[kind], required=False)
    if isinstance(value, str):
        return GradientSource(value, required=True)
    key = value.key or DEFAULT_GRADIENT_KEYS[kind]
    return GradientSource(key, True, value.read_from, value.reader, value.conservative)


@dataclass
class TargetSpec:
    """A target resolved from the options, before reading the data."""

    name: str
    options: TargetOptions
    gradients: Dict[str, GradientSource]
    kind: str
    key: str
    unit: str

    def generic_info(self) -> "TargetInfo":
        """The :class:`TargetInfo` of a generic target (``mtt::<name>``), from its options."""
        options = self.options
        return TargetInfo(
            self.name,
            self.unit,
            description=options.description,
            kind="generic",
            rank=options.rank,
            per_atom=options.per_atom,
            num_subtargets=options.num_subtargets,
            reduction=options.reduction,
        )

    @classmethod
    def from_options(cls, name: str, options: TargetOptions, where: str) -> "TargetSpec":
        kind = target_kind(name)
        if kind == "energy":
            return cls._energy(name, options, where)
        unit = options.unit or ""
        if unit:
            check_unit(unit, f"{where}.unit")
        for gradient in ("forces", "stress", "virial"):
            if getattr(options, gradient) not in (True, False):
                raise MttError(f"'{where}.{gradient}': only energies have {gradient}; remove it")
        if options.reduction == "max" and options.rank != 0:
            raise MttError(f"'{where}.reduction': max is only for scalars; use sum or mean")
        key = options.key or name.split("::", 1)[1].split("/")[0]
        return cls(name, options, {}, kind, key, unit)

    @classmethod
    def _energy(cls, name: str, options: TargetOptions, where: str) -> "TargetSpec":
        unit = options.unit if options.unit is not None else "eV"
        check_energy_unit(unit, f"{where}.unit")
        for field_name, wrong in (
            ("per_atom", options.per_atom),
            ("type", options.rank != 0),
            ("num_subtargets", options.num_subtargets != 1),
            ("reduction", options.reduction != "sum"),
        ):
            if wrong:
                raise MttError(
                    f"'{where}.{field_name}': an energy is one scalar per structure "
                    f"(a sum over atoms); remove {field_name}"
                )
        gradients = {}
        for kind in ("forces", "stress", "virial"):
            source = resolve_gradient(getattr(options, kind), kind)
            if source is not None:
                if source.read_from is None:  # as in metatrain: the energy's own file
                    source.read_from, source.reader = options.read_from, options.reader
                gradients[kind] = source
        return cls(name, options, gradients, "energy", options.key or "energy", unit)


#: The previous name of :class:`TargetSpec`.
EnergySpec = TargetSpec
