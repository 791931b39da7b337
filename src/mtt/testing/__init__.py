"""The architecture test suite every architecture must pass.

An architecture's tests subclass :class:`ArchitectureTests` and set only the class attributes
(its name, minimal hypers, capability flags); every test below then runs for it. Each test's
docstring says what a failure means.
"""

from ._suite import ArchitectureTests
from ._tools import (
    energy_of,
    energy_with_hydrogen_at,
    engine_gradients,
    exported_in_fresh_process,
    molecule,
    nve_energies_in_fresh_process,
    periodic_crystal,
    random_model,
    systems_with_neighbors,
)

__all__ = [
    "ArchitectureTests",
    "energy_of",
    "energy_with_hydrogen_at",
    "engine_gradients",
    "exported_in_fresh_process",
    "molecule",
    "nve_energies_in_fresh_process",
    "periodic_crystal",
    "random_model",
    "systems_with_neighbors",
]
