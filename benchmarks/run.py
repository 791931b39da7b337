"""Benchmarks of mtt against metatrain: training speed and errors, inference speed and memory.

Run with mtt's environment (it needs numpy and ASE; both tools run as subprocesses)::

    .venv/bin/python benchmarks/run.py -o benchmarks/results.json
    .venv/bin/python benchmarks/run.py --quick                 # ~2-4 minutes, checks it works
    .venv/bin/python benchmarks/run.py --only inference

metatrain must be installed in its own environment (``--metatrain-venv``, default
``/tmp/venv-metatrain``)::

    python3 -m venv /tmp/venv-metatrain
    /tmp/venv-metatrain/bin/pip install torch==2.13.0
    /tmp/venv-metatrain/bin/pip install "metatrain[pet,soap-bpnn]==2026.4.1" metatomic-ase

Every timing runs with ``OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE``. The machine this was
written on is shared, so the two tools always run in the same invocation, interleaved, and the
numbers to read are the ratios (mtt / metatrain). See ``benchmarks/README.md``.
"""

import argparse
import csv
import glob
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SHARED = os.path.join(os.path.dirname(ROOT), "shared", "data")
WORKER = os.path.join(HERE, "_worker.py")
KCAL_PER_MOL_IN_EV = 0.0433641043  # ase.units.kcal / ase.units.mol

ENV = dict(
    os.environ,
    OMP_NUM_THREADS="2",
    OMP_WAIT_POLICY="PASSIVE",
    MKL_NUM_THREADS="2",
    PYTHONUNBUFFERED="1",
    PYTHONWARNINGS="ignore",
)

# --- matched hypers ----------------------------------------------------------------------
# soap_bpnn. mtt: `max_radial` spherical Bessel functions for every l. metatrain (torch-spex
# Laplacian eigenstates, trimmed by eigenvalue): max_radial=6, max_angular=4 gives
# [7, 6, 6, 5, 5] radial functions for l = 0..4 (sum of n_l^2 = 171 per species pair against
# mtt's 5 * 36 = 180): the closest match of the two parametrisations.
SOAP = dict(cutoff=5.0, cutoff_width=0.5, max_radial=6, max_angular=4, hidden_layers=2, neurons=32)
# pet: metatrain's defaults; mtt's pet receives those of its hypers that have the same name.
PET = dict(
    cutoff=4.5,
    cutoff_width=0.5,
    d_pet=128,
    num_heads=8,
    num_attention_layers=2,
    num_gnn_layers=2,
    d_feedforward=256,
)
TRAINING = dict(batch_size=8, learning_rate=1e-3, seed=0, base_precision=32)

FULL = {
    "datasets": {"ethanol": 100, "carbon": 100, "si": 16},  # epochs
    "si_train_frames": 300,
    "si_val_every": 3,  # of the 3 held-out trajectories (165 frames): 55 frames
    # (frame of big_Si_1k_8k_32k.xyz, warm-up steps, timed steps per round); two warm-up
    # steps everywhere: TorchScript's profiling executor optimises a model's graph only
    # from its third call (the first two take ~2x longer, for both tools)
    "inference": [
        (0, 2, 10),
        (1, 2, 5),
        (2, 2, 3),
    ],
    # pet: metatrain needs ~2.3 GB per 1000 atoms for energy and forces, so 8000 atoms
    # would need ~17 GB, more than this shared machine (23 GB) can safely give; mtt's lean
    # gradients need ~0.3 GB per 1000 atoms, so it alone also runs 8000 (3 rounds) and
    # 32768 atoms (one round). Entries: (frame, warm-up, steps[, tools, rounds]).
    "pet_inference": [(0, 1, 4), (1, 1, 2, ("mtt",)), (2, 1, 1, ("mtt",), 1)],
    "pet": True,
    # pet training, metatrain's default sizes on both sides: epochs per data set (~1 and
    # ~4 s per epoch for mtt and metatrain on ethanol; carbon's 4-atom cells are cheaper)
    "pet_datasets": {"ethanol": 40, "carbon": 40},
    "rounds": 3,
}
QUICK = {
    "datasets": {"ethanol": 2, "carbon": 2, "si": 2},
    "si_train_frames": 40,
    "si_val_every": 16,
    "inference": [(0, 1, 3)],
    "pet_inference": [(0, 1, 2)],
    "pet": False,  # training and timing pet takes ~3 minutes more: --pet
    "pet_datasets": {"ethanol": 2},
    "rounds": 1,
}
SI_VAL_TRAJECTORIES = (
    "Si_public_md_600K_strainB",
    "Si_public_md_900K_vac",
    "Si_public_md_1200K_eq",
)
BIG_SI = os.path.join(SHARED, "big_Si_1k_8k_32k.xyz")


def _pet_datasets(given, default: Dict[str, int]) -> Dict[str, int]:
    """``--pet-datasets aspirin=20 ethanol=40`` as {name: epochs}."""
    if not given:
        return default
    return {name: int(epochs) for name, epochs in (item.split("=", 1) for item in given)}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- data ----------------------------------------------------------------------------------
def _write_labelled(path: str, frames, energies, forces, stresses) -> None:
    """Frames with their labels under neutral keys (bench_energy, bench_forces, bench_stress),
    so both tools and the common evaluator read exactly the same numbers."""
    import ase
    import ase.io

    out = []
    for k, atoms in enumerate(frames):
        copy = ase.Atoms(atoms.numbers, atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
        copy.info["bench_energy"] = float(energies[k])
        copy.arrays["bench_forces"] = np.asarray(forces[k], dtype=float)
        if stresses is not None and stresses[k] is not None:
            copy.info["bench_stress"] = np.asarray(stresses[k], dtype=float).reshape(9)
        out.append(copy)
    ase.io.write(path, out, format="extxyz")


def _write_shared_split(
    data_dir: str, name: str, frames, parts, stress: bool, source: str
) -> Dict[str, Any]:
    """``<name>_<part>.xyz`` for each ``part: indices`` (train, val) of a set of
    ``../shared/data``, whose labels are ``REF_energy``, ``REF_forces`` and ``REF_stress``
    (eV, Å); returns the set's description."""
    for part, indices in parts.items():
        chosen = [frames[i] for i in indices]
        _write_labelled(
            os.path.join(data_dir, f"{name}_{part}.xyz"),
            chosen,
            [a.info["REF_energy"] for a in chosen],
            [a.arrays["REF_forces"] for a in chosen],
            [np.asarray(a.info["REF_stress"]).reshape(3, 3) for a in chosen] if stress else None,
        )
    return {
        "unit": "eV",
        "stress": stress,
        "n_train": len(parts["train"]),
        "n_val": len(parts["val"]),
        "atoms_per_frame": len(frames[0]),
        "source": source,
    }


def prepare_data(workdir: str, config: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    """Train/validation files of each data set, the same for both tools."""
    import ase.io

    data_dir = os.path.join(workdir, "data")
    os.makedirs(data_dir, exist_ok=True)
    sets: Dict[str, Dict[str, Any]] = {}

    def small(name, path, unit, forces_of, stress_of):
        frames = ase.io.read(path, ":")
        order = np.random.default_rng(0).permutation(len(frames))
        val, train = sorted(order[:10]), sorted(order[10:])
        for part, indices in (("train", train), ("val", val)):
            chosen = [frames[i] for i in indices]
            _write_labelled(
                os.path.join(data_dir, f"{name}_{part}.xyz"),
                chosen,
                [a.get_potential_energy() for a in chosen],
                [forces_of(a) for a in chosen],
                [stress_of(a) for a in chosen] if stress_of else None,
            )
        sets[name] = {
            "unit": unit,
            "stress": stress_of is not None,
            "n_train": len(train),
            "n_val": len(val),
            "atoms_per_frame": len(frames[0]),
            "source": os.path.relpath(path, ROOT),
        }

    examples = os.path.join(ROOT, "examples", "data")
    small(
        "ethanol",
        os.path.join(examples, "ethanol_reduced_100.xyz"),
        "kcal/mol",
        lambda a: a.get_forces(),
        None,
    )
    # carbon: forces under `force`, virial (eV) in info: stress = -virial / volume
    small(
        "carbon",
        os.path.join(examples, "carbon_reduced_100.xyz"),
        "eV",
        lambda a: a.arrays["force"],
        lambda a: -np.asarray(a.info["virial"], dtype=float).reshape(3, 3) / a.get_volume(),
    )

    frames = ase.io.read(os.path.join(SHARED, "Si_chgnet_public.xyz"), ":")
    held_out = [i for i, a in enumerate(frames) if a.info["traj"] in SI_VAL_TRAJECTORIES]
    rest = [i for i, a in enumerate(frames) if a.info["traj"] not in SI_VAL_TRAJECTORIES]
    picks = np.unique(np.linspace(0, len(rest) - 1, config["si_train_frames"]).round().astype(int))
    train = [rest[i] for i in picks]
    val = held_out[:: config["si_val_every"]]
    source = "shared/data/Si_chgnet_public.xyz (validation: held-out trajectories "
    source += ", ".join(SI_VAL_TRAJECTORIES) + ")"
    parts = {"train": train, "val": val}
    sets["si"] = _write_shared_split(data_dir, "si", frames, parts, True, source)
    # for the models of the inference timings: one epoch on 16 frames is enough
    tiny = {"train": train[:: max(1, len(train) // 16)][:16], "val": val[:4]}
    sets["si_tiny"] = _write_shared_split(data_dir, "si_tiny", frames, tiny, True, source)

    # aspirin (GFN2-xTB, eV): one molecule whose atoms have 6 to 20 neighbours at pet's
    # 4.5 Å, i.e. ~35 % padding in a dense token layout. Training: 90 frames spread over
    # replicas 0 and 1; validation: 20 frames of replica 2 (frames of one replica are
    # time-correlated)
    frames = ase.io.read(os.path.join(SHARED, "mol_aspirin_gfn2xtb_500K.xyz"), ":")
    seen = [i for i, a in enumerate(frames) if int(a.info["replica"]) in (0, 1)]
    unseen = [i for i, a in enumerate(frames) if int(a.info["replica"]) == 2]
    train = [seen[i] for i in np.linspace(0, len(seen) - 1, 90).round().astype(int)]
    val = [unseen[i] for i in np.linspace(0, len(unseen) - 1, 20).round().astype(int)]
    source = "shared/data/mol_aspirin_gfn2xtb_500K.xyz (train: replicas 0-1, validation: 2)"
    parts = {"train": train, "val": val}
    sets["aspirin"] = _write_shared_split(data_dir, "aspirin", frames, parts, False, source)
    for name, info in sets.items():
        info["train"] = os.path.join(data_dir, f"{name}_train.xyz")
        info["val"] = os.path.join(data_dir, f"{name}_val.xyz")
    return sets


# --- options of each tool ------------------------------------------------------------------
def _targets(path: str, dataset: Dict[str, Any]) -> Dict[str, Any]:
    energy: Dict[str, Any] = {
        "key": "bench_energy",
        "unit": dataset["unit"],
        "forces": {"key": "bench_forces"},
    }
    energy["stress"] = {"key": "bench_stress"} if dataset["stress"] else False
    return {
        "systems": {"read_from": path, "length_unit": "angstrom"},
        "targets": {"energy": energy},
    }


def _model_hypers(tool: str, arch: str, mtt_fields: Optional[List[str]]) -> Dict[str, Any]:
    if arch == "soap_bpnn" and tool == "mtt":
        return {
            "cutoff": SOAP["cutoff"],
            "cutoff_width": SOAP["cutoff_width"],
            "max_radial": SOAP["max_radial"],
            "max_angular": SOAP["max_angular"],
            "num_hidden_layers": SOAP["hidden_layers"],
            "num_neurons_per_layer": SOAP["neurons"],
        }
    if arch == "soap_bpnn":
        return {
            "soap": {
                "cutoff": {"radius": SOAP["cutoff"], "width": SOAP["cutoff_width"]},
                "max_radial": SOAP["max_radial"],
                "max_angular": SOAP["max_angular"],
            },
            "bpnn": {
                "num_hidden_layers": SOAP["hidden_layers"],
                "num_neurons_per_layer": SOAP["neurons"],
            },
        }
    if tool == "mtt":
        return {k: v for k, v in PET.items() if mtt_fields is None or k in mtt_fields}
    return dict(PET)


def write_options(
    path: str,
    tool: str,
    arch: str,
    dataset: Dict[str, Any],
    epochs: int,
    mtt_fields: Optional[List[str]] = None,
    mtt_training: Optional[Dict[str, Any]] = None,
) -> None:
    training: Dict[str, Any] = {
        "batch_size": TRAINING["batch_size"],
        "num_epochs": epochs,
        "learning_rate": TRAINING["learning_rate"],
        "log_interval": 1,
    }
    if tool == "mtt":
        training.update(mtt_training or {})  # mtt's own options (e.g. pet's compile)
    options = {
        "seed": TRAINING["seed"],
        "base_precision": TRAINING["base_precision"],
        "architecture": {
            "name": arch,
            "model": _model_hypers(tool, arch, mtt_fields),
            "training": training,
        },
        "training_set": _targets(dataset["train"], dataset),
        "validation_set": _targets(dataset["val"], dataset),
        "test_set": 0.0,
    }
    with open(path, "w") as file:  # JSON is YAML
        json.dump(options, file, indent=2)


# --- running the tools ---------------------------------------------------------------------
EPOCH_LINE = {
    "mtt": re.compile(r"\bepoch\s+(\d+) \|"),
    "metatrain": re.compile(r"Epoch:\s+(\d+) \|"),
}
BEST_EPOCH = {
    "mtt": re.compile(r"exported the best model \(epoch (\d+)\)"),
    "metatrain": re.compile(r"Using best model from epoch (\d+)"),
}


def train(tool: str, mtt_bin: str, options: str, cwd: str, timeout: float) -> Dict[str, Any]:
    """Run ``<tool> train`` and time each epoch by when its log line arrives.

    Both tools print one line per epoch (``log_interval: 1``) and flush it; the time between
    consecutive lines is that epoch's wall time (training pass, validation pass, CSV and any
    checkpoint writing), measured here to the millisecond (the tools' own log timestamps have
    one-second resolution in metatrain).
    """
    os.makedirs(cwd, exist_ok=True)
    command = [mtt_bin, "train", os.path.basename(options), "-o", "model.pt"]
    if tool == "mtt":
        command += ["--output-dir", "outputs"]
    start = time.perf_counter()
    arrivals: List[float] = []
    lines: List[str] = []
    process = subprocess.Popen(
        command,
        cwd=cwd,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    )
    assert process.stdout is not None
    for line in process.stdout:
        now = time.perf_counter()
        lines.append(line.rstrip("\n"))
        if EPOCH_LINE[tool].search(line):
            arrivals.append(now)
        if now - start > timeout:
            process.kill()
            break
    process.wait()
    total = time.perf_counter() - start
    with open(os.path.join(cwd, "stdout.log"), "w") as file:
        file.write("\n".join(lines) + "\n")
    result: Dict[str, Any] = {
        "returncode": process.returncode,
        "wall_s": total,
        "epoch_end_s": [t - start for t in arrivals],
    }
    if process.returncode != 0 or not os.path.isfile(os.path.join(cwd, "model.pt")):
        tail = [line for line in lines if line.strip()][-8:]
        result["error"] = "\n".join(tail)
        return result
    diffs = np.diff(arrivals)
    result["epochs_logged"] = len(arrivals)
    result["s_per_epoch"] = float(np.median(diffs)) if len(diffs) else None
    result["s_per_epoch_min"] = float(np.min(diffs)) if len(diffs) else None
    result["s_per_epoch_max"] = float(np.max(diffs)) if len(diffs) else None
    result["first_epoch_s"] = arrivals[0] - start if arrivals else None
    text = "\n".join(lines)
    best = BEST_EPOCH[tool].search(text)
    result["best_epoch"] = int(best.group(1)) + (1 if tool == "metatrain" else 0) if best else None
    result["last_epoch_validation"] = _last_csv_row(tool, cwd)
    return result


def _last_csv_row(tool: str, cwd: str) -> Dict[str, float]:
    """Validation RMSEs of the last epoch from the tool's own train.csv (in the data's units:
    metatrain logs eV data in meV)."""
    paths = glob.glob(os.path.join(cwd, "outputs", "**", "train.csv"), recursive=True)
    if not paths:
        return {}
    with open(sorted(paths)[-1]) as file:
        rows = list(csv.reader(file))
    header = rows[0]
    out: Dict[str, float] = {}
    if tool == "mtt":
        last = dict(zip(header, rows[-1]))
        for key, name in (
            ("validation_energy_per_atom_rmse", "energy_per_atom"),
            ("validation_energy/forces_rmse", "forces"),
            ("validation_energy/stress_rmse", "stress"),
        ):
            if key in last:
                out[name] = float(last[key])
        return out
    units = dict(zip(header, rows[1]))
    last = dict(zip(header, rows[-1]))
    for key, name in (
        ("validation energy RMSE (per atom)", "energy_per_atom"),
        ("validation forces RMSE", "forces"),
        ("validation stress RMSE", "stress"),
    ):
        if key in last and last[key].strip():
            factor = 1e-3 if units.get(key, "").startswith("meV") else 1.0
            out[name] = float(last[key]) * factor
    return out


def worker(python: str, args: List[str], timeout: float) -> Dict[str, Any]:
    """Run ``_worker.py`` in a fresh process; its last stdout line is JSON."""
    try:
        done = subprocess.run(
            [python, WORKER, *args],
            env=ENV,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-6:]
        return {"error": f"exit code {done.returncode}: " + " | ".join(tail)}
    return json.loads(lines[-1])


def evaluate(tool: str, python: str, model: str, dataset: Dict[str, Any], extensions) -> Dict:
    args = [
        "eval",
        "--xyz",
        dataset["val"],
        "--model",
        model,
        "--energy-key",
        "bench_energy",
        "--forces-key",
        "bench_forces",
        "--unit-factor",
        str(1.0 / KCAL_PER_MOL_IN_EV if dataset["unit"] == "kcal/mol" else 1.0),
    ]
    if dataset["stress"]:
        args += ["--stress-key", "bench_stress"]
    for module in extensions:
        args += ["--extension-import", module]
    return worker(python, args, timeout=600)


# --- the benchmarks ------------------------------------------------------------------------
class Tools:
    def __init__(self, mtt_venv: str, metatrain_venv: str):
        self.venv = {"mtt": mtt_venv, "metatrain": metatrain_venv}
        self.python = {t: os.path.join(v, "bin", "python") for t, v in self.venv.items()}
        self.mtt = {t: os.path.join(v, "bin", "mtt") for t, v in self.venv.items()}

    def describe(self) -> Dict[str, Any]:
        """Versions and where each tool's code is, recorded with the results."""
        code = (
            "import json, importlib.metadata as m, torch; import {0}; "
            "print(json.dumps({{'version': m.version('{1}'), 'file': {0}.__file__, "
            "'torch': torch.__version__}}))"
        )
        out = {}
        for tool, module, dist in (("mtt", "mtt", "mtt"), ("metatrain", "metatrain", "metatrain")):
            done = subprocess.run(
                [self.python[tool], "-c", code.format(module, dist)],
                capture_output=True,
                text=True,
                env=ENV,
            )
            info = json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else {}
            out[tool] = {"venv": self.venv[tool], **info}
        git = subprocess.run(
            ["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True, text=True
        )
        dirty = subprocess.run(
            ["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
        )
        out["repository_head"] = git.stdout.strip()
        out["repository_modified_files"] = len(dirty.stdout.splitlines())
        return out

    @staticmethod
    def extensions(tool: str, arch: str) -> List[str]:
        # metatrain's exported soap_bpnn uses sphericart's compiled TorchScript extension
        return ["sphericart.torch"] if (tool == "metatrain" and arch == "soap_bpnn") else []


def mtt_pet_fields(python: str) -> Optional[List[str]]:
    """Names of mtt's pet model hypers, or None if mtt has no importable pet."""
    code = (
        "import dataclasses, json; from mtt.architectures import load; m = load('pet'); "
        "print(json.dumps([f.name for f in dataclasses.fields(m.__model__.__hypers__)]))"
    )
    done = subprocess.run([python, "-c", code], capture_output=True, text=True, env=ENV)
    if done.returncode != 0:
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_training(
    tools: Tools,
    sets,
    datasets: Dict[str, int],
    workdir: str,
    arch: str = "soap_bpnn",
    pet_fields: Optional[List[str]] = None,
    same_budget: bool = False,
    mtt_training: Optional[Dict[str, Any]] = None,
) -> Dict[str, Any]:
    """Both tools train ``arch`` on each data set for the given number of epochs; with
    ``same_budget``, mtt trains once more for as many epochs as fit in metatrain's time."""
    results: Dict[str, Any] = {}
    for name, epochs in datasets.items():
        dataset = sets[name]
        entry: Dict[str, Any] = {
            "epochs": epochs,
            **{k: v for k, v in dataset.items() if k not in ("train", "val")},
        }
        # alternate which tool goes first, so a slow phase of the machine hits both
        order = ["mtt", "metatrain"] if len(results) % 2 == 0 else ["metatrain", "mtt"]
        for tool in order:
            cwd = os.path.join(workdir, "train", arch, name, tool)
            shutil.rmtree(cwd, ignore_errors=True)
            os.makedirs(cwd)
            options = os.path.join(cwd, "options.yaml")
            write_options(options, tool, arch, dataset, epochs, pet_fields, mtt_training)
            log(f"training {arch} on {name} with {tool} ({epochs} epochs)")
            run = train(tool, tools.mtt[tool], os.path.join(cwd, "options.yaml"), cwd, 1800)
            if "error" not in run:
                run["validation"] = evaluate(
                    tool,
                    tools.python[tool],
                    os.path.join(cwd, "model.pt"),
                    dataset,
                    Tools.extensions(tool, arch),
                )
                run["model"] = os.path.join(cwd, "model.pt")
                log(f"  {run['s_per_epoch']:.3f} s/epoch, validation {run['validation']}")
            else:
                log(f"  failed: {run['error']}")
            entry[tool] = run
        a, b = entry["mtt"], entry["metatrain"]
        if same_budget and a.get("s_per_epoch") and b.get("s_per_epoch"):
            entry["mtt_same_budget"] = _train_for_budget(
                tools, dataset, workdir, arch, name, epochs * b["s_per_epoch"], a, pet_fields
            )
        if a.get("s_per_epoch") and b.get("s_per_epoch"):
            entry["ratio_s_per_epoch"] = a["s_per_epoch"] / b["s_per_epoch"]
            # the least disturbed epoch of each: a check on the median's ratio
            entry["ratio_s_per_epoch_min"] = a["s_per_epoch_min"] / b["s_per_epoch_min"]
            entry["ratio_wall"] = a["wall_s"] / b["wall_s"]
            entry["ratio_errors"] = {
                q: a["validation"][q]["rmse"] / b["validation"][q]["rmse"]
                for q in a.get("validation", {})
                if q in b.get("validation", {}) and "rmse" in a["validation"][q]
            }
        results[name] = entry
    return results


def _train_for_budget(
    tools: Tools, dataset, workdir: str, arch: str, name: str, budget_s: float, first, fields
) -> Dict[str, Any]:
    """mtt again, for as many epochs as fit in ``budget_s`` seconds of epochs at the speed of
    its first run (metatrain's epochs times its median epoch), evaluated the same way."""
    epochs = max(2, int(budget_s / first["s_per_epoch"]))
    cwd = os.path.join(workdir, "train", arch, name, "mtt_same_budget")
    shutil.rmtree(cwd, ignore_errors=True)
    os.makedirs(cwd)
    options = os.path.join(cwd, "options.yaml")
    write_options(options, "mtt", arch, dataset, epochs, fields)
    log(f"training {arch} on {name} with mtt for metatrain's time: {epochs} epochs")
    run = train("mtt", tools.mtt["mtt"], options, cwd, 3600)
    run["epochs"] = epochs
    run["budget_s"] = budget_s
    if "error" not in run:
        model = os.path.join(cwd, "model.pt")
        run["validation"] = evaluate("mtt", tools.python["mtt"], model, dataset, [])
        log(f"  validation {run['validation']}")
    return run


def tiny_models(tools: Tools, sets, workdir: str, arch: str, pet_fields) -> Dict[str, Any]:
    """Models trained for one epoch on 16 Si frames (for timing only)."""
    dataset = sets["si_tiny"]
    models: Dict[str, Any] = {}
    for tool in ("mtt", "metatrain"):
        if tool == "mtt" and arch == "pet" and pet_fields is None:
            models[tool] = {"error": "mtt has no importable 'pet' architecture"}
            continue
        cwd = os.path.join(workdir, "models", arch, tool)
        shutil.rmtree(cwd, ignore_errors=True)
        os.makedirs(cwd)
        options = os.path.join(cwd, "options.yaml")
        write_options(options, tool, arch, dataset, 1, pet_fields)
        log(f"training a 1-epoch {arch} model with {tool} for the inference timings")
        run = train(tool, tools.mtt[tool], options, cwd, 1200)
        if "error" in run:
            log(f"  failed: {run['error']}")
            models[tool] = {"error": run["error"]}
        else:
            models[tool] = {"path": os.path.join(cwd, "model.pt"), "how": "1 epoch on 16 Si frames"}
    return models


def run_inference(tools: Tools, models, arch: str, plan, rounds: int, floor_cutoff) -> Dict:
    """Interleaved: for each system size, each round runs mtt, metatrain and the
    neighbour-list floor, in alternating order; the steps of all rounds are pooled."""
    import ase.io

    sizes = [len(a) for a in ase.io.read(BIG_SI, ":")]
    results: Dict[str, Any] = {}
    for item in plan:
        index, warmup, steps = item[:3]
        tools_here = item[3] if len(item) > 3 else ("mtt", "metatrain")
        n_rounds = item[4] if len(item) > 4 else rounds
        n = sizes[index]
        entry: Dict[str, Any] = {"n_atoms": n, "steps_per_round": steps, "rounds": n_rounds}
        times: Dict[str, List[float]] = {}
        round_medians: Dict[str, List[float]] = {}
        for r in range(n_rounds):
            order = ["mtt", "metatrain", "floor"]
            if r % 2 == 1:
                order = ["floor", "metatrain", "mtt"]
            for who in order:
                if who != "floor" and who not in tools_here:
                    entry[who] = {"skipped": "not run at this size (memory), see the plan"}
                    continue
                if who == "floor":
                    if floor_cutoff is None:
                        continue
                    args = [
                        "nl",
                        "--xyz",
                        BIG_SI,
                        "--index",
                        str(index),
                        "--cutoff",
                        str(floor_cutoff),
                        "--steps",
                        str(max(steps, 5)),
                        "--warmup",
                        "1",
                    ]
                    out = worker(tools.python["mtt"], args, timeout=600)
                else:
                    model = models.get(who, {})
                    if "path" not in model:
                        entry[who] = {"error": model.get("error", "no model")}
                        continue
                    args = [
                        "calc",
                        "--xyz",
                        BIG_SI,
                        "--index",
                        str(index),
                        "--model",
                        model["path"],
                        "--steps",
                        str(steps),
                        "--warmup",
                        str(warmup),
                    ]
                    for module in Tools.extensions(who, arch):
                        args += ["--extension-import", module]
                    log(f"inference {arch} {who} {n} atoms (round {r + 1}/{n_rounds})")
                    out = worker(tools.python[who], args, timeout=900)
                if "error" in out:
                    log(f"  {who} failed: {out['error'][:300]}")
                    entry[who] = {"error": out["error"]}
                    continue
                times.setdefault(who, []).extend(out["times_s"])
                round_medians.setdefault(who, []).append(float(np.median(out["times_s"])))
                previous = entry.get(who, {})
                entry[who] = {
                    "peak_rss_mb": max(out["peak_rss_mb"], previous.get("peak_rss_mb", 0.0)),
                    "base_rss_mb": out["base_rss_mb"],
                    **({"n_pairs": out["n_pairs"]} if "n_pairs" in out else {}),
                }
        for who, values in times.items():
            if "error" in entry.get(who, {}) or "skipped" in entry.get(who, {}):
                continue
            median = float(np.median(values))
            entry[who].update(
                times_s=values,
                round_median_s=round_medians[who],
                median_s=median,
                min_s=float(np.min(values)),
                us_per_atom=median / n * 1e6,
            )
            if who != "floor":
                log(
                    f"  {who}: {median / n * 1e6:.1f} us/atom, peak RSS "
                    f"{entry[who]['peak_rss_mb']:.0f} MB"
                )
        a, b, f = entry.get("mtt", {}), entry.get("metatrain", {}), entry.get("floor", {})
        if "median_s" in a and "median_s" in b:
            # paired: the ratio of the two tools' medians within each round (minutes apart,
            # so under similar load), then the geometric mean over rounds
            pairs = [x / y for x, y in zip(a["round_median_s"], b["round_median_s"])]
            entry["ratio_time_rounds"] = pairs
            entry["ratio_time"] = float(np.exp(np.mean(np.log(pairs))))
            entry["ratio_time_pooled_median"] = a["median_s"] / b["median_s"]
            entry["ratio_time_min"] = a["min_s"] / b["min_s"]
            entry["ratio_peak_rss"] = a["peak_rss_mb"] / b["peak_rss_mb"]
        for who in ("mtt", "metatrain"):
            tool = entry.get(who, {})
            if "median_s" in tool and "median_s" in f:
                tool["over_floor"] = tool["median_s"] / f["median_s"]
        results[str(n)] = entry
    return results


def scaling(inference: Dict[str, Any]) -> Dict[str, Any]:
    """Exponent of time ~ N^k (least squares on log-log) and us/atom growth, per tool."""
    out = {}
    for who in ("mtt", "metatrain", "floor"):
        points = [
            (int(n), e[who]["median_s"])
            for n, e in inference.items()
            if "median_s" in e.get(who, {})
        ]
        if len(points) < 2:
            continue
        n, t = np.log([p[0] for p in points]), np.log([p[1] for p in points])
        slope = float(np.polyfit(n, t, 1)[0])
        per_atom = {str(p[0]): p[1] / p[0] * 1e6 for p in points}
        first, last = points[0], points[-1]
        out[who] = {
            "exponent": slope,
            "us_per_atom": per_atom,
            "us_per_atom_growth": (last[1] / last[0]) / (first[1] / first[0]),
        }
    return out


# --- output --------------------------------------------------------------------------------
def fmt(value, spec=".3g") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return format(value, spec)


def _print_training(arch: str, training: Dict[str, Any]) -> None:
    print(
        f"\nTraining {arch} (s/epoch: median over epochs after the first; errors: "
        "validation RMSE of the exported model, data units)"
    )
    print(
        f"{'data':8} {'epochs':>6} {'mtt s/ep':>9} {'mt s/ep':>9} {'ratio':>6} {'(min)':>6} | "
        f"{'E/atom mtt':>10} {'E/atom mt':>10} | {'F mtt':>8} {'F mt':>8} | "
        f"{'S mtt':>8} {'S mt':>8}"
    )
    for name, e in training.items():
        a, b = e.get("mtt", {}), e.get("metatrain", {})
        va, vb = a.get("validation", {}), b.get("validation", {})

        def rmse(v, q):
            return v.get(q, {}).get("rmse")

        print(
            f"{name:8} {e['epochs']:>6} {fmt(a.get('s_per_epoch')):>9} "
            f"{fmt(b.get('s_per_epoch')):>9} {fmt(e.get('ratio_s_per_epoch'), '.2f'):>6} "
            f"{fmt(e.get('ratio_s_per_epoch_min'), '.2f'):>6} | "
            f"{fmt(rmse(va, 'energy_per_atom')):>10} {fmt(rmse(vb, 'energy_per_atom')):>10} | "
            f"{fmt(rmse(va, 'forces')):>8} {fmt(rmse(vb, 'forces')):>8} | "
            f"{fmt(rmse(va, 'stress')):>8} {fmt(rmse(vb, 'stress')):>8}"
        )
        budget = e.get("mtt_same_budget", {})
        if "validation" in budget:
            vc = budget["validation"]
            print(
                f"  mtt in metatrain's time ({budget['epochs']} epochs): energy/atom "
                f"{fmt(rmse(vc, 'energy_per_atom'))}, forces {fmt(rmse(vc, 'forces'))}, "
                f"stress {fmt(rmse(vc, 'stress'))}"
            )


def print_table(results: Dict[str, Any]) -> None:
    for key, arch in (("training", "soap_bpnn"), ("training_pet", "pet")):
        training = results.get(key, {})
        if training:
            _print_training(arch, training)
    for arch, inference in results.get("inference", {}).items():
        if "note" in inference:
            print(f"\nInference {arch}: {inference['note']}")
        sizes = {k: v for k, v in inference.items() if k.isdigit()}
        if not sizes:
            continue
        print(
            f"\nInference {arch} (us/atom per MD step, energy+forces+stress, ASE "
            "MetatomicCalculator, neighbour list rebuilt each step)"
        )
        print(
            f"{'atoms':>6} {'mtt':>8} {'mt':>8} {'ratio':>6} {'(min)':>6} {'NL floor':>9} "
            f"{'mtt/floor':>9} {'mt/floor':>9} | {'RSS mtt MB':>10} {'RSS mt MB':>10}"
        )
        for n, e in sizes.items():
            a, b, f = e.get("mtt", {}), e.get("metatrain", {}), e.get("floor", {})
            print(
                f"{n:>6} {fmt(a.get('us_per_atom'), '.1f'):>8} "
                f"{fmt(b.get('us_per_atom'), '.1f'):>8} "
                f"{fmt(e.get('ratio_time'), '.2f'):>6} {fmt(e.get('ratio_time_min'), '.2f'):>6} "
                f"{fmt(f.get('us_per_atom'), '.2f'):>9} "
                f"{fmt(a.get('over_floor'), '.1f'):>9} {fmt(b.get('over_floor'), '.1f'):>9} | "
                f"{fmt(a.get('peak_rss_mb'), '.0f'):>10} {fmt(b.get('peak_rss_mb'), '.0f'):>10}"
            )
            for who in ("mtt", "metatrain"):
                if "error" in e.get(who, {}):
                    print(f"       {who} failed: {e[who]['error'][:200]}")
        scale = results.get("scaling", {}).get(arch, {})
        if scale:
            print(
                "scaling: time ~ N^k, k = "
                + ", ".join(f"{who} {s['exponent']:.2f}" for who, s in scale.items())
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, 2 epochs")
    parser.add_argument("--only", choices=["inference", "training"])
    parser.add_argument("-o", "--output", default=os.path.join(HERE, "results.json"))
    parser.add_argument(
        "--workdir",
        default="/tmp/mtt-benchmarks",
        help="where data splits, runs and models go (outside the repository)",
    )
    parser.add_argument("--metatrain-venv", default="/tmp/venv-metatrain")
    parser.add_argument(
        "--mtt-venv",
        default=os.path.join(ROOT, ".venv"),
        help="the environment whose mtt is measured (default: the repository's)",
    )
    parser.add_argument(
        "--pet",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="train pet next to metatrain's, time its inference (default: yes, not with --quick)",
    )
    parser.add_argument(
        "--same-budget",
        action="store_true",
        help="also train soap_bpnn with mtt for as many epochs as fit in metatrain's time",
    )
    parser.add_argument(
        "--no-soap-training",
        action="store_true",
        help="skip the soap_bpnn training runs (e.g. --only training --no-soap-training --pet "
        "trains pet alone)",
    )
    parser.add_argument(
        "--no-soap-inference",
        action="store_true",
        help="skip the soap_bpnn inference timings (e.g. to time pet alone)",
    )
    parser.add_argument(
        "--pet-datasets",
        nargs="+",
        metavar="NAME=EPOCHS",
        help="data sets (and epochs) pet trains on, e.g. aspirin=20 (default: the config's)",
    )
    parser.add_argument(
        "--pet-compile",
        action="store_true",
        help="mtt's pet trains with compile: true (torch.compile of its training step)",
    )
    args = parser.parse_args()

    config = QUICK if args.quick else FULL
    tools = Tools(os.path.abspath(args.mtt_venv), os.path.abspath(args.metatrain_venv))
    for tool, path in tools.mtt.items():
        if not os.path.isfile(path):
            sys.exit(f"{tool}'s command line is not at {path}; see the module docstring")
    os.makedirs(args.workdir, exist_ok=True)
    started = time.time()
    log(f"preparing data in {args.workdir}")
    sets = prepare_data(args.workdir, config)
    results: Dict[str, Any] = {
        "quick": args.quick,
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_average_at_start": os.getloadavg(),
            "threads": "OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE",
        },
        "tools": tools.describe(),
        "hypers": {"soap_bpnn": SOAP, "pet": PET, "training": TRAINING},
        "datasets": {
            k: {kk: vv for kk, vv in v.items() if kk not in ("train", "val")}
            for k, v in sets.items()
            if k in config["datasets"]
        },
    }

    run_pet = args.pet if args.pet is not None else config["pet"]
    if args.only != "inference":
        t0 = time.time()
        if not args.no_soap_training:
            results["training"] = run_training(
                tools, sets, config["datasets"], args.workdir, same_budget=args.same_budget
            )
        if run_pet:
            fields = mtt_pet_fields(tools.python["mtt"])
            mtt_training = {"compile": True} if args.pet_compile else {}
            results["mtt_pet_training_options"] = mtt_training
            results["training_pet"] = run_training(
                tools,
                sets,
                _pet_datasets(args.pet_datasets, config["pet_datasets"]),
                args.workdir,
                "pet",
                fields,
                False,
                mtt_training,
            )
        results["training_wall_s"] = time.time() - t0

    if args.only != "training":
        t0 = time.time()
        results["inference"] = {}
        results["scaling"] = {}
        # soap_bpnn: the models of the Si training benchmark if it ran, else 1-epoch models
        trained = results.get("training", {}).get("si", {})
        if args.no_soap_inference:
            pass
        elif all("model" in trained.get(t, {}) for t in ("mtt", "metatrain")):
            models = {
                t: {
                    "path": trained[t]["model"],
                    "how": f"the Si training benchmark's model ({trained['epochs']} epochs)",
                }
                for t in ("mtt", "metatrain")
            }
        else:
            models = tiny_models(tools, sets, args.workdir, "soap_bpnn", None)
        if not args.no_soap_inference:
            soap = run_inference(
                tools, models, "soap_bpnn", config["inference"], config["rounds"], SOAP["cutoff"]
            )
            soap["models"] = {t: m.get("how", m.get("error")) for t, m in models.items()}
            results["inference"]["soap_bpnn"] = soap
            results["scaling"]["soap_bpnn"] = scaling(
                {k: v for k, v in soap.items() if k.isdigit()}
            )
        if run_pet:
            fields = mtt_pet_fields(tools.python["mtt"])
            models = tiny_models(tools, sets, args.workdir, "pet", fields)
            pet = run_inference(
                tools, models, "pet", config["pet_inference"], config["rounds"], PET["cutoff"]
            )
            pet["models"] = {t: m.get("how", m.get("error")) for t, m in models.items()}
            pet["mtt_hypers_passed"] = (
                _model_hypers("mtt", "pet", fields) if fields is not None else None
            )
            if fields is None:
                pet["note"] = "mtt has no importable 'pet' architecture: only metatrain timed"
            results["inference"]["pet"] = pet
            results["scaling"]["pet"] = scaling({k: v for k, v in pet.items() if k.isdigit()})
        results["inference_wall_s"] = time.time() - t0

    results["total_wall_s"] = time.time() - started
    results["machine"]["load_average_at_end"] = os.getloadavg()
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as file:
        json.dump(results, file, indent=1)
    print_table(results)
    print(f"\nwrote {args.output} ({results['total_wall_s'] / 60:.1f} min)")


if __name__ == "__main__":
    main()
