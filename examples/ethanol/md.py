"""Molecular dynamics with the exported model, using only ASE and metatomic (no mtt code).

Usage: python md.py [model.pt] [steps] — runs 0.5 ps (1000 steps) of NVE from a training
structure at 300 K and reports the energy drift, the first check of a model meant for MD.
"""

import sys

import ase.io
import numpy as np
from ase import units
from ase.md.velocitydistribution import Stationary, thermalize_momenta
from ase.md.verlet import VelocityVerlet
from metatomic_ase import MetatomicCalculator

model = sys.argv[1] if len(sys.argv) > 1 else "model.pt"
atoms = ase.io.read("../data/ethanol_reduced_100.xyz", index=0)
atoms.calc = MetatomicCalculator(model, extensions_directory=None)
thermalize_momenta(atoms, temperature_K=300, rng=np.random.default_rng(0))
Stationary(atoms)

timestep_fs = 0.5
steps = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
dynamics = VelocityVerlet(atoms, timestep=timestep_fs * units.fs)
energies = []


def record():
    energies.append(atoms.get_potential_energy() + atoms.get_kinetic_energy())


dynamics.attach(record, interval=10)
dynamics.run(steps)
energies = np.array(energies)
duration_ps = steps * timestep_fs / 1000
drift = (energies[-1] - energies[0]) / len(atoms) / duration_ps
print(f"ran {steps} steps ({duration_ps} ps) of NVE MD with {model}")
print(f"temperature at the end: {atoms.get_temperature():.0f} K")
print(
    f"total energy: start {energies[0]:.5f} eV, end {energies[-1]:.5f} eV, "
    f"fluctuation {energies.std() / len(atoms) * 1000:.3f} meV/atom, "
    f"drift {drift * 1000:.3f} meV/atom/ps"
)
