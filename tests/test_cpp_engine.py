"""The LAMMPS path: an exported model run through metatomic-torch's C++ API.

LAMMPS' ``pair_style metatomic`` loads the ``.pt`` file with metatomic-torch's C++ library and
calls it on one non-periodic system of local + ghost atoms, with its own neighbour lists and
``selected_atoms`` = the local atoms. ``tests/cpp/mtt_engine_check.cpp`` does the same without
LAMMPS (see the comment at its top for the conventions). It is built once per session with
CMake against the libtorch, metatensor(-torch) and metatomic-torch libraries that the installed
Python packages ship, then its energy, forces and virial are compared with a periodic
evaluation of the same file in Python (:func:`mtt.evaluate.predict`).
"""

import json
import os
import shutil
import subprocess

import ase
import ase.build
import ase.neighborlist
import numpy as np
import pytest
import torch

from mtt.api import save_model
from mtt.evaluate import load_model, predict
from mtt.testing import periodic_crystal, random_model

SOURCES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cpp")
HYPERS = {"cutoff": 3.0, "max_radial": 3, "max_angular": 2, "num_neurons_per_layer": 8}
RTOL = 1e-6  # the requirement for float64: agree with Python to 1e-6 relative


def cmake_prefix_path() -> str:
    """Where the Python packages keep their CMake configuration files (no hard-coded paths:
    CI runs an installed mtt in a tox virtualenv)."""
    import metatensor.torch.utils
    import metatensor.utils
    import metatomic.torch.utils
    import torch.utils

    return ";".join(
        [
            torch.utils.cmake_prefix_path,
            metatensor.utils.cmake_prefix_path,
            metatensor.torch.utils.cmake_prefix_path,
            metatomic.torch.utils.cmake_prefix_path,
        ]
    )


def run_logged(command, cwd, what: str) -> None:
    completed = subprocess.run(
        command, cwd=cwd, capture_output=True, text=True, timeout=900, check=False
    )
    if completed.returncode != 0:
        log = (completed.stdout + completed.stderr)[-6000:]
        pytest.fail(f"{what} failed ({' '.join(command)}):\n{log}", pytrace=False)


@pytest.fixture(scope="session")
def engine(tmp_path_factory) -> str:
    """The ``mtt_engine_check`` executable, built once per session (Release, ``make -j2``).
    Skips when the build tools are missing; an existing tool chain that fails to build it
    is an error."""
    cmake = shutil.which("cmake")
    if cmake is None:
        pytest.skip("cmake is not installed (needed to build the C++ engine check)")
    compilers = [os.environ["CXX"]] if os.environ.get("CXX") else ["c++", "g++", "clang++"]
    compiler = next((shutil.which(c) for c in compilers if shutil.which(c)), None)
    if compiler is None:
        pytest.skip(f"no C++ compiler found (tried {', '.join(compilers)})")
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed (needed to build the C++ engine check)")

    build = tmp_path_factory.mktemp("cpp-engine-build")
    configure = [
        cmake,
        SOURCES,
        "-DCMAKE_BUILD_TYPE=Release",
        f"-DCMAKE_CXX_COMPILER={compiler}",
        f"-DCMAKE_PREFIX_PATH={cmake_prefix_path()}",
    ]
    run_logged(configure, build, "configuring the C++ engine check with CMake")
    run_logged([make, "-j2"], build, "building the C++ engine check")
    return str(build / "mtt_engine_check")


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> str:
    """A float64 soap_bpnn model with random weights, exported to a ``.pt`` file."""
    path = tmp_path_factory.mktemp("cpp-engine-model") / "model.pt"
    save_model(random_model("soap_bpnn", HYPERS, torch.float64).export(), str(path))
    return str(path)


def run_engine(engine: str, model_path: str, atoms: ase.Atoms, workdir) -> dict:
    """Energy, forces and virial of ``atoms`` from the C++ program."""
    structure = os.path.join(workdir, "structure.txt")
    with open(structure, "w") as file:  # repr() round-trips float64 exactly
        file.write(f"{len(atoms)}\n")
        for row in np.asarray(atoms.cell[:]):
            file.write(" ".join(repr(float(v)) for v in row) + "\n")
        for number, position in zip(atoms.numbers, atoms.positions):
            file.write(f"{number} " + " ".join(repr(float(v)) for v in position) + "\n")
    completed = subprocess.run(
        [engine, model_path, structure], capture_output=True, text=True, timeout=300, check=False
    )
    if completed.returncode != 0:
        raise AssertionError(f"the C++ engine check failed:\n{completed.stderr[-4000:]}")
    return json.loads(completed.stdout)


def python_reference(model_path: str, atoms: ase.Atoms) -> dict:
    """Periodic evaluation of the same file in Python; virial = -stress * volume (LAMMPS)."""
    result = predict(load_model(model_path), [atoms], "energy", "angstrom", "eV")[0]
    result["virial"] = -result["stress"] * abs(atoms.get_volume())
    return result


def assert_agree(cpp: dict, python: dict) -> None:
    """Energy, forces and virial agree to ``RTOL``, relative to each quantity's largest entry."""
    for name in ("energy", "forces", "virial"):
        expected = np.asarray(python[name], dtype=np.float64)
        actual = np.asarray(cpp[name], dtype=np.float64)
        assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
        error = np.abs(actual - expected).max() / np.abs(expected).max()
        assert error < RTOL, (
            f"{name}: C++ and Python differ by {error:.2e} (relative), more than {RTOL:g}\n"
            f"C++:\n{actual}\nPython:\n{expected}"
        )


def test_crystal_matches_python(engine, model_path, tmp_path):
    """The sheared, rattled 8-atom crystal: energy, forces and virial through the C++ API
    (local + ghost atoms, no pbc, selected_atoms) match Python's periodic evaluation. A
    failure means LAMMPS would give different results than Python for this model: look at
    ghosts / selected_atoms (energy), ghost-force folding or neighbour-list autograd (forces),
    the strain trick or its sign (virial)."""
    atoms = periodic_crystal()
    cpp = run_engine(engine, model_path, atoms, tmp_path)
    assert cpp["n_local"] == len(atoms) and cpp["n_ghost"] > 0
    assert_agree(cpp, python_reference(model_path, atoms))


def test_supercell_matches_python(engine, model_path, tmp_path):
    """A rattled 2x2x2 supercell (64 atoms), some atoms given outside the cell: the same
    agreement. A failure (with the 8-atom test passing) points to something that depends on
    the structure's size or on atoms outside the cell: wrapping of local atoms, the ghost
    shell, or atom ordering between local and ghost atoms."""
    atoms = periodic_crystal().repeat((2, 2, 2))
    atoms.rattle(0.03, seed=3)
    cell = np.asarray(atoms.cell[:])
    atoms.positions[0] += cell[0]
    atoms.positions[7] -= cell[1] + cell[2]
    atoms.positions[33] += 2 * cell[2]
    cpp = run_engine(engine, model_path, atoms, tmp_path)
    assert cpp["n_local"] == 64
    assert_agree(cpp, python_reference(model_path, atoms))


def test_neighbor_list_with_many_images(engine, model_path, tmp_path):
    """A sheared 2-atom cell with all cell vectors (about 2.6 Å) shorter than the cutoff
    (3 Å, far below twice the cutoff): every atom sees many images of itself and of the
    other atom, also two cells away. The C++ program's neighbour count of each local atom
    must match ASE's periodic neighbour list (independent of both the program and vesin),
    and energy, forces and virial must match Python. A failure means the C++ ghost shell or
    brute-force list misses or duplicates images, so the check of the other tests could not
    be trusted."""
    atoms = ase.build.bulk("C", "diamond", a=3.6)
    atoms.numbers[1] = 8
    shear = np.array([[1.0, 0.04, 0.0], [0.0, 1.0, 0.06], [0.03, 0.0, 1.0]])
    atoms.set_cell(np.asarray(atoms.cell[:]) @ shear, scale_atoms=True)
    atoms.rattle(0.05, seed=2)
    cutoff = load_model(model_path).requested_neighbor_lists()[0].cutoff
    assert np.linalg.norm(atoms.cell[:], axis=1).max() < cutoff

    cpp = run_engine(engine, model_path, atoms, tmp_path)
    first = ase.neighborlist.neighbor_list("i", atoms, cutoff)
    expected = np.bincount(first, minlength=len(atoms))
    assert cpp["neighbors_per_atom"] == expected.tolist()
    assert_agree(cpp, python_reference(model_path, atoms))
