"""mtt's architectures side by side (issue #4): training speed, test errors, evaluation cost.

For each of ``soap_bpnn``, ``pet`` and ``painn`` with their default hypers, and each data set
(the shipped ethanol and carbon, and Si, SiGe and aspirin from ``../shared/data``):

1. training through ``mtt.train`` (options as a dict), each run in a fresh process, with a fixed
   split and seed and a fixed wall-clock budget for the epochs: a 2-epoch probe measures the
   seconds of one epoch (its second epoch), then the real run gets ``num_epochs = budget /
   (s/epoch)`` (at least 2), so the cosine schedule ends where the budget does. Recorded: the
   epochs run, their seconds (median and sum), the test errors of the exported model (metatomic's
   ASE calculator, ``_worker.py eval``) in the data's units and in meV, and the error of the
   per-element composition baseline alone (least squares on the training set), for scale;
2. evaluation cost per atom of each architecture's Si model on the 1000-, 8000- and 32768-atom
   periodic cells of ``big_Si_1k_8k_32k.xyz``: energy, forces and stress through metatomic's
   ``MetatomicCalculator`` with the neighbour list rebuilt at every step (``_worker.py calc``, a
   fresh process per measurement, its peak RSS included), and vesin's neighbour list alone as a
   floor. A size is skipped when the previous one predicts more than ``--max-call-s`` seconds per
   call or more than ``--max-rss-gb`` of memory (the reason is recorded).

Run from the repository root with mtt's environment::

    .venv/bin/python benchmarks/architectures.py                 # ~25 min on 2 loaded cores
    .venv/bin/python benchmarks/architectures.py --quick         # ~8 min: checks that it runs
    .venv/bin/python benchmarks/architectures.py --budget 120 --only soap_bpnn painn

Every process runs with ``OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE`` (``run.ENV``). Results go
to ``benchmarks/results_architectures.json``; a Markdown table is printed at the end.
"""

import argparse
import json
import logging
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as common  # noqa: E402  (benchmarks/run.py: helpers shared with the metatrain runner)

HERE = common.HERE
ROOT = common.ROOT
SHARED = common.SHARED
MEV_PER_UNIT = {"eV": 1000.0, "kcal/mol": 1000.0 * common.KCAL_PER_MOL_IN_EV}
ARCHITECTURES = ("soap_bpnn", "pet", "painn")
CUTOFFS = {"soap_bpnn": 5.0, "pet": 4.5, "painn": 5.0}  # the defaults of each hypers.py

# data sets: (train, validation, test) frames; the large ones are subsampled (see `prepare`)
FULL = {"small_split": (80, 10, 10), "large_train": 160, "large_val": 20, "large_test_every": 3}
QUICK = {"small_split": (20, 5, 10), "large_train": 16, "large_val": 4, "large_test_every": 11}
SIGE_TEST_TRAJECTORIES = ("SiGe_public_md_x0.25_700K_strain", "SiGe_public_md_x0.5_1100K_eq")


def log(message: str) -> None:
    common.log(message)


# --- data ----------------------------------------------------------------------------------
def prepare(workdir: str, config: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    """Train/validation/test files of every data set, labels under neutral keys
    (``bench_energy``, ``bench_forces``, ``bench_stress``) in the data's own units."""
    import ase.io

    out_dir = os.path.join(workdir, "data")
    os.makedirs(out_dir, exist_ok=True)
    sets: Dict[str, Dict[str, Any]] = {}

    def write(name, frames, parts, unit, energy, forces, stress, source, split):
        info: Dict[str, Any] = {"unit": unit, "stress": stress is not None, "source": source}
        for part, indices in parts.items():
            chosen = [frames[i] for i in indices]
            path = os.path.join(out_dir, f"{name}_{part}.xyz")
            common._write_labelled(
                path,
                chosen,
                [energy(a) for a in chosen],
                [forces(a) for a in chosen],
                [stress(a) for a in chosen] if stress else None,
            )
            info[part] = path
            info[f"n_{part}"] = len(chosen)
        info["atoms_per_frame"] = sorted({len(a) for a in frames})
        info["split"] = split
        sets[name] = info

    n_train, n_val, n_test = config["small_split"]
    examples = os.path.join(ROOT, "examples", "data")
    for name, path, unit, forces, stress in (
        # ethanol: kcal/mol and kcal/mol/Å (rMD17-style; E ~ -97080), not eV
        ("ethanol", "ethanol_reduced_100.xyz", "kcal/mol", lambda a: a.get_forces(), None),
        # carbon: eV; forces under `force`, virial (eV) in info: stress = -virial / volume
        (
            "carbon",
            "carbon_reduced_100.xyz",
            "eV",
            lambda a: a.arrays["force"],
            lambda a: -np.asarray(a.info["virial"], float).reshape(3, 3) / a.get_volume(),
        ),
    ):
        frames = ase.io.read(os.path.join(examples, path), ":")
        order = np.random.default_rng(0).permutation(len(frames))
        parts = {
            "train": sorted(order[:n_train]),
            "val": sorted(order[n_train : n_train + n_val]),
            "test": sorted(order[n_train + n_val : n_train + n_val + n_test]),
        }
        write(
            name,
            frames,
            parts,
            unit,
            lambda a: a.get_potential_energy(),
            forces,
            stress,
            f"examples/data/{path}",
            f"random permutation (seed 0): {n_train}/{n_val}/{n_test} frames",
        )

    def large(name, path, key, held_out, unit, stress):
        """Test: whole held-out trajectories (every k-th frame), not time-correlated with the
        training frames; train and validation evenly spread over the other frames."""
        frames = ase.io.read(os.path.join(SHARED, path), ":")
        test_pool = [i for i, a in enumerate(frames) if a.info[key] in held_out]
        rest = [i for i, a in enumerate(frames) if a.info[key] not in held_out]
        n = config["large_train"] + config["large_val"]
        picks = [rest[i] for i in np.linspace(0, len(rest) - 1, n).round().astype(int)]
        parts = {
            "train": [p for k, p in enumerate(picks) if k % (n // config["large_val"]) != 1],
            "val": [p for k, p in enumerate(picks) if k % (n // config["large_val"]) == 1],
            "test": test_pool[:: config["large_test_every"]],
        }
        write(
            name,
            frames,
            parts,
            unit,
            lambda a: a.info["REF_energy"],
            lambda a: a.arrays["REF_forces"],
            (lambda a: np.asarray(a.info["REF_stress"], float).reshape(3, 3)) if stress else None,
            f"shared/data/{path}",
            f"test: {key} in {list(held_out)} (every {config['large_test_every']}th frame); "
            f"train/validation: {n} frames evenly spread over the other {len(rest)}",
        )

    large("Si", "Si_chgnet_public.xyz", "traj", common.SI_VAL_TRAJECTORIES, "eV", True)
    large("SiGe", "SiGe_chgnet_public.xyz", "traj", SIGE_TEST_TRAJECTORIES, "eV", True)
    large("aspirin", "mol_aspirin_gfn2xtb_500K.xyz", "replica", (2,), "eV", False)
    return sets


def baseline_rmse(dataset: Dict[str, Any]) -> float:
    """Test RMSE per atom (data's units) of per-element reference energies fitted by least
    squares on the training set: what a model has to beat."""
    import ase.io

    def matrix(path):
        frames = ase.io.read(path, ":")
        return frames, np.array([a.info["bench_energy"] for a in frames])

    train, e_train = matrix(dataset["train"])
    test, e_test = matrix(dataset["test"])
    elements = sorted({z for a in train for z in a.numbers})

    def counts(frames):
        return np.array([[np.sum(a.numbers == z) for z in elements] for a in frames], float)

    weights = np.linalg.lstsq(counts(train), e_train, rcond=None)[0]
    n_atoms = np.array([len(a) for a in test])
    return float(np.sqrt(np.mean(((counts(test) @ weights - e_test) / n_atoms) ** 2)))


# --- training (in a child process: `architectures.py _train SPEC.json`) ---------------------
def options_for(arch: str, dataset: Dict[str, Any], epochs: int) -> Dict[str, Any]:
    training = {
        "num_epochs": epochs,
        "log_interval": 1,
        "progress_bar": False,
        "checkpoint_interval": 100000,  # only the final checkpoint
    }
    return {
        "seed": 0,
        "architecture": {"name": arch, "training": training},  # default model hypers
        "training_set": common._targets(dataset["train"], dataset),
        "validation_set": common._targets(dataset["val"], dataset),
        "test_set": common._targets(dataset["test"], dataset),
    }


class _EpochClock(logging.Handler):
    """Notes when each per-epoch log line of ``mtt.train`` is emitted."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.arrivals: List[float] = []
        self.messages: List[str] = []

    def emit(self, record):
        message = record.getMessage()
        if message.startswith("epoch "):
            self.arrivals.append(time.perf_counter())
        self.messages.append(message)


def train_child(spec_path: str) -> None:
    import torch

    import mtt

    with open(spec_path) as file:
        spec = json.load(file)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    clock = _EpochClock()
    logger = logging.getLogger("mtt")
    logger.addHandler(clock)
    logger.setLevel(logging.INFO)
    os.chdir(spec["cwd"])
    start = time.perf_counter()
    mtt.train(spec["options"], output="model.pt", output_dir="outputs", force=True)
    wall = time.perf_counter() - start
    times = np.diff([start] + clock.arrivals)
    result = {
        "wall_s": wall,
        "epochs_run": len(clock.arrivals),
        "epoch_s": times.tolist(),  # the first one includes the set-up (data, statistics)
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "final_report": [m for m in clock.messages if m.startswith("test_set:")],
    }
    with open(spec["result"], "w") as file:
        json.dump(result, file)


def train_run(arch: str, dataset: Dict[str, Any], epochs: int, cwd: str, timeout: float):
    shutil.rmtree(cwd, ignore_errors=True)
    os.makedirs(cwd)
    spec = {
        "cwd": cwd,
        "options": options_for(arch, dataset, epochs),
        "result": os.path.join(cwd, "result.json"),
    }
    with open(os.path.join(cwd, "spec.json"), "w") as file:
        json.dump(spec, file, indent=1)
    command = [sys.executable, os.path.abspath(__file__), "_train", os.path.join(cwd, "spec.json")]
    try:
        with open(os.path.join(cwd, "stdout.log"), "w") as out:
            done = subprocess.run(
                command, env=common.ENV, stdout=out, stderr=subprocess.STDOUT, timeout=timeout
            )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if done.returncode != 0 or not os.path.isfile(spec["result"]):
        with open(os.path.join(cwd, "stdout.log")) as file:
            tail = [line.rstrip() for line in file if line.strip()][-6:]
        return {"error": f"exit code {done.returncode}: " + " | ".join(tail)}
    with open(spec["result"]) as file:
        result = json.load(file)
    result["model"] = os.path.join(cwd, "model.pt")
    return result


def run_training(sets, archs, budget: float, workdir: str) -> Dict[str, Any]:
    results: Dict[str, Any] = {}
    for name, dataset in sets.items():
        base = baseline_rmse(dataset)
        factor = MEV_PER_UNIT[dataset["unit"]]
        results[name] = {
            **{k: v for k, v in dataset.items() if k not in ("train", "val", "test")},
            "baseline_energy_per_atom_rmse": base,
            "baseline_energy_per_atom_rmse_mev": base * factor,
        }
        for arch in archs:
            root = os.path.join(workdir, "train", name, arch)
            log(f"{arch} on {name}: 2-epoch probe")
            probe = train_run(arch, dataset, 2, os.path.join(root, "probe"), 600 + 10 * budget)
            entry: Dict[str, Any] = {"probe": probe}
            results[name][arch] = entry
            if "error" in probe:
                log(f"  probe failed: {probe['error']}")
                continue
            s_per_epoch = probe["epoch_s"][-1]
            epochs = max(2, int(budget // s_per_epoch))
            log(f"  {s_per_epoch:.2f} s/epoch in the probe: {epochs} epochs for {budget:.0f} s")
            run = train_run(arch, dataset, epochs, os.path.join(root, "run"), 600 + 10 * budget)
            entry.update(
                probe_s_per_epoch=s_per_epoch, epochs_planned=epochs, run=run, budget_s=budget
            )
            if "error" in run:
                log(f"  failed: {run['error']}")
                continue
            epoch_s = run["epoch_s"][1:]  # the first includes the set-up
            entry["s_per_epoch"] = float(np.median(epoch_s))
            entry["s_per_epoch_min"] = float(np.min(epoch_s))
            entry["epochs_s_total"] = float(np.sum(run["epoch_s"]))
            test = common.evaluate(
                "mtt", sys.executable, run["model"], dict(dataset, val=dataset["test"]), []
            )
            entry["test"] = test
            if "error" not in test:
                for quantity in ("energy_per_atom", "forces", "stress"):
                    if quantity in test:
                        # stress: meV/Å³
                        test[quantity]["rmse_mev"] = test[quantity]["rmse"] * factor
                ratio = test["energy_per_atom"]["rmse"] / base if base > 0 else None
                entry["energy_rmse_over_baseline"] = ratio
            log(
                f"  {run['epochs_run']} epochs, {entry['s_per_epoch']:.2f} s/epoch; test "
                + ", ".join(
                    f"{q} {v.get('rmse_mev', float('nan')):.3g} meV"
                    for q, v in test.items()
                    if isinstance(v, dict)
                )
            )
    return results


# --- inference -----------------------------------------------------------------------------
INFERENCE_STEPS = {1000: (2, 5), 8000: (1, 3), 32768: (1, 2)}  # warm-up, timed steps


def run_inference(models: Dict[str, str], sizes, max_call_s, max_rss_gb) -> Dict[str, Any]:
    import ase.io

    n_atoms = [len(a) for a in ase.io.read(common.BIG_SI, ":")]
    results: Dict[str, Any] = {"floor": {}, **{arch: {} for arch in models}}
    for cutoff in sorted(set(CUTOFFS[a] for a in models)):
        for index in sizes:
            warmup, steps = INFERENCE_STEPS.get(n_atoms[index], (1, 3))
            args = ["nl", "--xyz", common.BIG_SI, "--index", str(index), "--cutoff", str(cutoff)]
            args += ["--warmup", str(warmup), "--steps", str(steps)]
            results["floor"][f"{cutoff}/{n_atoms[index]}"] = common.worker(
                sys.executable, args, 300
            )
    for arch, model in models.items():
        previous = None
        for index in sizes:
            n = n_atoms[index]
            warmup, steps = INFERENCE_STEPS.get(n, (1, 3))
            if previous is not None and "error" not in previous:
                grow = n / previous["n_atoms"]
                call_s = previous["median_s"] * grow
                rss_gb = (
                    previous["base_rss_mb"]
                    + (previous["peak_rss_mb"] - previous["base_rss_mb"]) * grow
                ) / 1024
                if call_s > max_call_s or rss_gb > max_rss_gb:
                    reason = (
                        f"skipped: {previous['n_atoms']} atoms took {previous['median_s']:.1f} s "
                        f"and {previous['peak_rss_mb']:.0f} MB per call, so {n} atoms would take "
                        f"~{call_s:.0f} s and ~{rss_gb:.1f} GB (limits {max_call_s:.0f} s, "
                        f"{max_rss_gb:.0f} GB)"
                    )
                    results[arch][str(n)] = {"skipped": reason}
                    log(f"{arch}, {n} atoms: {reason}")
                    previous = {"error": "skipped"}
                    continue
            elif previous is not None:
                results[arch][str(n)] = {"skipped": "the smaller size failed or was skipped"}
                continue
            log(f"{arch}: evaluating {n} atoms ({warmup} + {steps} calls)")
            args = ["calc", "--xyz", common.BIG_SI, "--index", str(index), "--model", model]
            args += ["--warmup", str(warmup), "--steps", str(steps)]
            result = common.worker(sys.executable, args, 600)
            floor = results["floor"].get(f"{CUTOFFS[arch]}/{n}", {})
            if "error" not in result:
                result["rss_above_base_kb_per_atom"] = (
                    (result["peak_rss_mb"] - result["base_rss_mb"]) * 1024 / n
                )
                if "us_per_atom" in floor:
                    result["over_floor"] = result["us_per_atom"] / floor["us_per_atom"]
                peak = result["peak_rss_mb"]
                log(f"  {result['us_per_atom']:.1f} µs/atom, peak RSS {peak:.0f} MB")
            else:
                log(f"  failed: {result['error']}")
            results[arch][str(n)] = result
            previous = result
    return results


# --- report --------------------------------------------------------------------------------
def _fmt(value: Optional[float], digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}g}"


def table(results: Dict[str, Any]) -> str:
    lines = [
        "| data (units) | arch | s/epoch | epochs in budget | test energy meV/atom (baseline) | "
        "test forces meV/Å |",
        "|---|---|---|---|---|---|",
    ]
    for name, entry in results.get("training", {}).items():
        for arch in ARCHITECTURES:
            row = entry.get(arch)
            if row is None:
                continue
            test = row.get("test", {})
            energy = test.get("energy_per_atom", {}).get("rmse_mev")
            forces = test.get("forces", {}).get("rmse_mev")
            lines.append(
                f"| {name} ({entry['unit']}) | {arch} | {_fmt(row.get('s_per_epoch'))} | "
                f"{row.get('run', {}).get('epochs_run', '–')} | {_fmt(energy)} "
                f"({_fmt(entry['baseline_energy_per_atom_rmse_mev'])}) | {_fmt(forces)} |"
            )
    inference = results.get("inference", {})
    if inference:
        sizes = sorted({int(k.split("/")[1]) for k in inference.get("floor", {})})
        lines += ["", "| arch | " + " | ".join(f"µs/atom at {n}" for n in sizes) + " |"]
        lines.append("|---|" + "---|" * len(sizes))
        for arch in [a for a in ARCHITECTURES if a in inference]:
            cells = []
            for n in sizes:
                value = inference[arch].get(str(n), {})
                if "us_per_atom" in value:
                    cells.append(
                        f"{value['us_per_atom']:.3g} ({value['peak_rss_mb'] / 1024:.2g} GB)"
                    )
                else:
                    cells.append("skipped" if "skipped" in value else "failed")
            lines.append(f"| {arch} | " + " | ".join(cells) + " |")
        floors = []
        for n in sizes:
            values = [
                f"{v['us_per_atom']:.2g} ({k.split('/')[0]} Å)"
                for k, v in inference["floor"].items()
                if k.endswith(f"/{n}") and "us_per_atom" in v
            ]
            floors.append(", ".join(values) or "–")
        lines.append("| vesin NL floor | " + " | ".join(floors) + " |")
    return "\n".join(lines)


def machine() -> Dict[str, Any]:
    import torch

    head = subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(
        ["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
    )
    with open("/proc/meminfo") as file:
        total = int(file.readline().split()[1]) / 1024**2
    return {
        "platform": platform.platform(),
        "processor": platform.processor(),
        "cpus": os.cpu_count(),
        "memory_gb": round(total, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "omp_num_threads": common.ENV["OMP_NUM_THREADS"],
        "repository_head": head.stdout.strip(),
        "repository_modified_files": len(dirty.stdout.splitlines()),
    }


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "_train":
        train_child(sys.argv[2])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=50.0, help="seconds of epochs per run")
    parser.add_argument("--quick", action="store_true", help="tiny sets, 6 s budget, 1000 atoms")
    parser.add_argument("--only", nargs="+", choices=ARCHITECTURES, default=list(ARCHITECTURES))
    parser.add_argument("--datasets", nargs="+", default=None, help="a subset of the data sets")
    parser.add_argument("--no-inference", action="store_true")
    parser.add_argument("--max-call-s", type=float, default=60.0)
    parser.add_argument("--max-rss-gb", type=float, default=8.0)
    parser.add_argument("--workdir", default="/tmp/mtt-benchmarks-architectures")
    parser.add_argument("-o", "--output", default=os.path.join(HERE, "results_architectures.json"))
    args = parser.parse_args()

    config = QUICK if args.quick else FULL
    budget = 6.0 if args.quick else args.budget
    started = time.time()
    results: Dict[str, Any] = {
        "issue": 4,
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "load_average_start": os.getloadavg(),
        "machine": machine(),
        "settings": {
            "quick": args.quick,
            "budget_s": budget,
            "architectures": args.only,
            "data": config,
            "hypers": "each architecture's defaults (hypers.py); seed 0; batch size 8",
            "inference_steps": INFERENCE_STEPS,
            "max_call_s": args.max_call_s,
            "max_rss_gb": args.max_rss_gb,
        },
    }
    log(f"load average {results['load_average_start']}; budget {budget:.0f} s per run")
    sets = prepare(args.workdir, config)
    if args.datasets:
        sets = {k: v for k, v in sets.items() if k in args.datasets}
    results["training"] = run_training(sets, args.only, budget, args.workdir)
    if not args.no_inference and "Si" in results["training"]:
        models = {
            arch: results["training"]["Si"][arch]["run"]["model"]
            for arch in args.only
            if "model" in results["training"]["Si"].get(arch, {}).get("run", {})
        }
        sizes = [0] if args.quick else [0, 1, 2]
        results["inference"] = run_inference(models, sizes, args.max_call_s, args.max_rss_gb)
        results["inference"]["how"] = (
            "MetatomicCalculator (metatomic_ase) on the exported Si model of each architecture; "
            "energy, forces and stress per call, neighbour list rebuilt every call (skin 0), "
            "atoms displaced by 0.005 Å between calls; median over the timed calls; "
            "floor: vesin.NeighborList(full_list=True).compute(ijSD) at the model's cutoff"
        )
    results["load_average_end"] = os.getloadavg()
    results["wall_s"] = time.time() - started
    with open(args.output, "w") as file:
        json.dump(results, file, indent=1)
    log(f"wrote {args.output} ({results['wall_s'] / 60:.1f} min)")
    print(table(results))


if __name__ == "__main__":
    main()
