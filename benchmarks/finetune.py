"""Fine-tuning methods compared: new-task errors, forgetting of the old task, wall time.

Pretrains ``soap_bpnn`` on GFN2-xTB ethanol (eV), then adapts it to a few DFT structures of
ethanol (``examples/data/ethanol_reduced_100.xyz``, kcal/mol) with each fine-tuning method, and
trains the same model from scratch on the same DFT structures for as many epochs::

    .venv/bin/python benchmarks/finetune.py                      # ~10 min of CPU time (2 threads)
    .venv/bin/python benchmarks/finetune.py --quick              # ~1 minute: checks it runs

Data: the old task is ``examples/data/ethanol_xtb_200.xyz`` (200 frames of three Langevin
trajectories at 500 K): trajectories 0 and 1 (131 frames) for pretraining (60 epochs),
trajectory 2 (69 frames, never seen) to measure forgetting. New task: the first 20 DFT frames
(16 train, 4 validation), the last 50 as the test set.

For every run, ``benchmarks/results_finetune.json`` records the new task's test errors (energy
per atom, forces, in eV), the old task's errors before and after (from the run's
``forgetting.json``: energies per atom once per-element reference energies are refitted, since
the level of theory changed, and forces) and the wall time. Every run uses
``OMP_NUM_THREADS=2``.
"""

import argparse
import glob
import json
import os
import platform
import shutil
import subprocess
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "2")

import ase.io  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SHIPPED = os.path.join(ROOT, "examples", "data")
KCAL_PER_MOL_IN_EV = 0.0433641043

MODEL = {"cutoff": 4.0, "max_radial": 4, "max_angular": 3, "num_neurons_per_layer": 16}
METHODS = {
    "scratch": None,
    "heads": {"method": "heads"},
    "lora": {"method": "lora", "config": {"rank": 4, "alpha": 8.0}},
    "freeze": {"method": "freeze", "config": {"patterns": ["networks.*.0.*"]}},
    "full": {"method": "full"},
    "full + L2-SP": {"method": "full", "l2sp_weight": 1000.0},
    "full + distillation": {"method": "full", "distillation": {"weight": 10.0}},
}


def write_data(workdir: str, quick: bool) -> dict:
    xtb = ase.io.read(os.path.join(SHIPPED, "ethanol_xtb_200.xyz"), ":")
    pretrain = [a for a in xtb if a.info["replica"] != 2]
    old_task = [a for a in xtb if a.info["replica"] == 2]
    dft = ase.io.read(os.path.join(SHIPPED, "ethanol_reduced_100.xyz"), ":")
    if quick:
        pretrain, old_task = pretrain[:60], old_task[:20]
    files = {
        "pretrain": pretrain,
        "old_task": old_task,
        "dft_train": dft[:20],
        "dft_test": dft[50:],
    }
    paths = {}
    for name, frames in files.items():
        paths[name] = os.path.join(workdir, f"{name}.xyz")
        ase.io.write(paths[name], frames)
    paths["source"] = "examples/data/ethanol_xtb_200.xyz"
    paths["counts"] = {name: len(frames) for name, frames in files.items()}
    return paths


def options(training: dict, train_file: str, unit: str, model: bool, seed: int) -> dict:
    raw = {
        "architecture": {"name": "soap_bpnn", "training": dict(training, progress_bar=False)},
        "training_set": {"systems": train_file, "targets": {"energy": {"unit": unit}}},
        "validation_set": 0.2,
        "seed": seed,
    }
    if model:
        raw["architecture"]["model"] = MODEL
    return raw


def run(raw: dict, directory: str) -> tuple:
    """Train in ``directory``; the run directory and the wall time."""
    import mtt

    shutil.rmtree(directory, ignore_errors=True)
    start = time.perf_counter()
    mtt.train(raw, output=os.path.join(directory, "model.pt"), output_dir=directory, force=True)
    wall = time.perf_counter() - start
    (run_dir,) = glob.glob(os.path.join(directory, "2*"))
    return run_dir, wall


def new_task_errors(model_path: str, test_file: str) -> dict:
    """Energy per atom and force RMSE on the DFT test set, in eV (the DFT labels are
    converted from kcal/mol)."""
    from mtt.evaluate import load_model, predict

    frames = ase.io.read(test_file, ":")
    predicted = predict(load_model(model_path), frames, "energy", "angstrom", "eV")
    energies = (
        np.array(
            [
                p["energy"] - a.get_potential_energy() * KCAL_PER_MOL_IN_EV
                for p, a in zip(predicted, frames)
            ]
        )
        / 9
    )
    forces = np.concatenate(
        [p["forces"] - a.get_forces() * KCAL_PER_MOL_IN_EV for p, a in zip(predicted, frames)]
    )
    return {
        "energy_per_atom_rmse_eV": float(np.sqrt(np.mean(energies**2))),
        "forces_rmse_eV_per_A": float(np.sqrt(np.mean(forces**2))),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few frames and epochs")
    parser.add_argument("--workdir", default="/tmp/mtt-benchmarks-finetune")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-o", default=os.path.join(HERE, "results_finetune.json"))
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    os.makedirs(args.workdir, exist_ok=True)
    data = write_data(args.workdir, args.quick)
    epochs = {"pretrain": 4 if args.quick else 60, "finetune": 4 if args.quick else 100}
    pre_raw = options(
        {"num_epochs": epochs["pretrain"], "batch_size": 8, "learning_rate": 0.003},
        data["pretrain"],
        "eV",
        True,
        args.seed,
    )
    pre_dir, pre_wall = run(pre_raw, os.path.join(args.workdir, "pretrain"))
    print(f"pretrained in {pre_wall:.0f} s", flush=True)
    checkpoint = os.path.join(pre_dir, "model.ckpt")
    zero_shot = new_task_errors(os.path.join(pre_dir, "model.pt"), data["dft_test"])
    # its energies are xTB's, hundreds of eV away from DFT's: only its forces compare
    results = {"pretrained, not fine-tuned": {"wall_s": 0.0, **zero_shot}}
    results["pretrained, not fine-tuned"]["energy_per_atom_rmse_eV"] = None
    for name, finetune in METHODS.items():
        training = {"num_epochs": epochs["finetune"], "batch_size": 4, "learning_rate": 0.002}
        if finetune is not None:
            training["finetune"] = dict(
                finetune, read_from=checkpoint, old_task_set=data["old_task"]
            )
        raw = options(training, data["dft_train"], "kcal/mol", finetune is None, args.seed)
        raw["test_set"] = data["dft_test"]
        directory = os.path.join(args.workdir, name.replace(" ", "").replace("+", "_"))
        run_dir, wall = run(raw, directory)
        row = {
            "wall_s": wall,
            **new_task_errors(os.path.join(run_dir, "model.pt"), data["dft_test"]),
        }
        report = os.path.join(run_dir, "forgetting.json")
        if os.path.exists(report):
            with open(report) as file:
                forgetting = json.load(file)
            row["old_task"] = forgetting["old_task"]
            row["drift"] = forgetting["drift"]
        results[name] = row
        print(
            name,
            json.dumps({k: v for k, v in row.items() if k not in ("old_task", "drift")}),
            flush=True,
        )
    write(args, data, pre_wall, epochs, results)
    print_table(results)


def write(args, data, pre_wall, epochs, results) -> None:
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    document = {
        "what": "soap_bpnn pretrained on GFN2-xTB ethanol, fine-tuned on 16 DFT frames",
        "commit": commit.stdout.strip(),
        "machine": platform.platform(),
        "threads": int(os.environ["OMP_NUM_THREADS"]),
        "torch": torch.__version__,
        "quick": args.quick,
        "seed": args.seed,
        "data": {"old_task_source": data["source"], "frames": data["counts"]},
        "model": MODEL,
        "epochs": epochs,
        "methods": {k: v for k, v in METHODS.items()},
        "pretrain_wall_s": pre_wall,
        "results": results,
    }
    with open(args.o, "w") as file:
        json.dump(document, file, indent=2)
    print(f"wrote {args.o}")


def print_table(results: dict) -> None:
    print(
        "| method | new task: forces (meV/Å) | new task: energy (meV/atom) "
        "| old task: forces before → after (meV/Å) "
        "| old task: energy* before → after (meV/atom) | wall (s) |"
    )
    print("|---|---|---|---|---|---|")
    for name, row in results.items():
        old = row.get("old_task")
        forces = energy = "–"
        if old:
            f = old["energy/forces_rmse"]
            e = old["energy_per_atom_rmse_refitted_references"]
            forces = f"{1000 * f['before']:.0f} → {1000 * f['after']:.0f} (×{f['factor']:.2f})"
            energy = f"{1000 * e['before']:.1f} → {1000 * e['after']:.1f} (×{e['factor']:.2f})"
        energy_new = row["energy_per_atom_rmse_eV"]
        energy_new = "–" if energy_new is None else f"{1000 * energy_new:.1f}"
        print(
            f"| {name} | {1000 * row['forces_rmse_eV_per_A']:.0f} | {energy_new} | {forces} "
            f"| {energy} | {row['wall_s']:.0f} |"
        )


if __name__ == "__main__":
    sys.exit(main())
