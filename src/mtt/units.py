"""Units: the user declares them, metatomic knows them, the exported model states them."""

from metatomic.torch import unit_conversion_factor

from .errors import MttError


def _check(unit: str, reference: str, kind: str, where: str) -> str:
    examples = f"{reference!r}, " + (
        "'meV', 'kcal/mol', 'kJ/mol', 'Hartree'" if kind == "energy" else "'bohr', 'nm'"
    )
    if not unit.strip():  # metatomic reads an empty unit as "no unit", which hides the mistake
        raise MttError(
            f"{where}: the {kind} unit is empty; set one metatomic knows, e.g. {examples}"
        )
    try:
        unit_conversion_factor(unit, reference)
    except ValueError as error:
        reason = str(error).splitlines()[0]
        raise MttError(
            f"{where}: {unit!r} is not a valid {kind} unit ({reason}); use one metatomic "
            f"knows, e.g. {examples}"
        ) from None
    return unit


def check_energy_unit(unit: str, where: str) -> str:
    """Return ``unit`` if metatomic knows it as an energy unit, else raise naming ``where``.
    ``kcal`` and ``kJ`` alone are refused: they are amounts per system, ~1e22 eV, where
    atomistic data mean per mole (kcal/mol, kJ/mol); an energy in them is a slip of the pen."""
    if unit.strip().lower() in ("kcal", "kj"):
        raise MttError(
            f"{where}: {unit!r} is an energy per structure (1 {unit} = "
            f"{unit_conversion_factor(unit, 'eV'):.3g} eV); molecular energies are per mole: "
            f"write '{unit.strip()}/mol'"
        )
    return _check(unit, "eV", "energy", where)


def check_length_unit(unit: str, where: str) -> str:
    """Return ``unit`` if metatomic knows it as a length unit, else raise naming ``where``."""
    return _check(unit, "angstrom", "length", where)


def conversion(from_unit: str, to_unit: str) -> float:
    return float(unit_conversion_factor(from_unit, to_unit))


def check_unit(unit: str, where: str) -> str:
    """Return ``unit`` if metatomic knows it (any dimension), else raise naming ``where``."""
    from metatomic.torch import ModelOutput

    try:
        ModelOutput(unit=unit)
    except (ValueError, RuntimeError) as error:
        reason = str(error).splitlines()[0]
        raise MttError(
            f"{where}: {unit!r} is not a unit metatomic knows ({reason}); use e.g. 'D', "
            "'e*angstrom', 'bohr^3', 'Hartree', or leave it empty"
        ) from None
    return unit
