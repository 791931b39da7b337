"""The property schema: what a model learns, as resolved from the options.

An energy target has a name (``energy`` or ``energy/<variant>``), a unit, and optionally forces
and stress, each either conservative (exact gradients of the energy) or direct (a separate head).
:class:`DatasetInfo` gathers what a model must know about its data; it is stored in checkpoints
as a plain dict and compared on restart and fine-tuning.
"""

from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Union

from ..errors import MttError
from ..options import DEFAULT_GRADIENT_KEYS, EnergyTargetOptions, GradientOptions
from ..units import check_energy_unit


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
    """What the model predicts for one energy target."""

    name: str
    unit: str
    forces: bool = False
    stress: bool = False
    conservative: bool = True
    description: str = ""

    @property
    def quantities(self) -> List[str]:
        """Label names of this target: the energy and its gradients, e.g. ``energy/forces``."""
        names = [self.name]
        names += [f"{self.name}/forces"] if self.forces else []
        names += [f"{self.name}/stress"] if self.stress else []
        return names


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


def check_target_name(name: str) -> None:
    """Only energies (and their variants) are targets so far."""
    base, _, variant = name.partition("/")
    if base != "energy" or (name.count("/") > 0 and not variant):
        raise MttError(
            f"target {name!r} is not supported: targets are energies, named 'energy' or "
            "'energy/<variant>' (e.g. 'energy/pbe0')"
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
class EnergySpec:
    """An energy target resolved from the options, before reading the data."""

    name: str
    options: EnergyTargetOptions
    gradients: Dict[str, GradientSource]

    @classmethod
    def from_options(cls, name: str, options: EnergyTargetOptions, where: str) -> "EnergySpec":
        check_target_name(name)
        check_energy_unit(options.unit, f"{where}.unit")
        gradients = {}
        for kind in ("forces", "stress", "virial"):
            source = resolve_gradient(getattr(options, kind), kind)
            if source is not None:
                gradients[kind] = source
        return cls(name, options, gradients)
