"""SevenNet-0 zero-shot, SevenNet-0 fine-tuned, and soap_bpnn from scratch on 50 frames.

The new task is GFN2-xTB ethanol (``examples/data/ethanol_xtb_200.xyz``, eV, eV/Å; three
Langevin trajectories at 500 K, ``replica`` in ``info``). SevenNet-0 was trained on PBE(+U)
crystals (MPtrj), so xTB molecules are a new level of theory and a new kind of system::

    .venv/bin/python benchmarks/sevenn_finetune.py               # ~10 minutes on 2 cores
    .venv/bin/python benchmarks/sevenn_finetune.py --quick       # ~2 minutes: checks it runs

Split (by trajectory, so that the test frames are not time-correlated with the training
frames): 50 training and 10 validation frames drawn from replicas 0 and 1, every frame of
replica 2 as the test set. The three models see exactly the same frames:

* zero-shot: ``mtt export sevennet-0``, as shipped (its energies are PBE-referenced, so only
  its forces are comparable);
* fine-tuned: ``architecture: {name: sevenn}`` (SevenNet-0's weights, ``method: full``,
  reference energies refitted on the 50 frames);
* from scratch: ``soap_bpnn`` with the defaults of ``examples/ethanol/options.yaml``.

``benchmarks/results_sevenn.json`` records the test force RMSE (and energy-per-atom RMSE
where meaningful) of the three, the epochs and wall times. Needs ``pip install 'mtt[sevenn]'``.
"""

import argparse
import glob
import json
import os
import platform
import shutil
import subprocess
import time

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # no spinning threads on a shared machine

import ase.io  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DATA = os.path.join(ROOT, "examples", "data", "ethanol_xtb_200.xyz")


def write_data(workdir: str, quick: bool) -> dict:
    frames = ase.io.read(DATA, ":")
    pool = [a for a in frames if a.info["replica"] != 2]
    order = np.random.default_rng(0).permutation(len(pool))
    train = [pool[i] for i in order[:50]]
    val = [pool[i] for i in order[50:60]]
    test = [a for a in frames if a.info["replica"] == 2]
    if quick:
        train, val, test = train[:10], val[:4], test[:10]
    paths = {}
    for name, subset in (("train", train), ("val", val), ("test", test)):
        paths[name] = os.path.join(workdir, f"{name}.xyz")
        ase.io.write(paths[name], subset)
    paths["counts"] = {"train": len(train), "val": len(val), "test": len(test)}
    return paths


def options(architecture: dict, data: dict, training: dict) -> dict:
    architecture = dict(architecture)
    architecture["training"] = dict(training, progress_bar=False, log_interval=10)
    targets = {"energy": {"unit": "eV"}}
    return {
        "architecture": architecture,
        "training_set": {"systems": data["train"], "targets": targets},
        "validation_set": {"systems": data["val"], "targets": targets},
        "test_set": {"systems": data["test"], "targets": targets},
        "seed": 0,
    }


def train(raw: dict, directory: str) -> tuple:
    """Train in ``directory``; the exported model and the wall time."""
    import mtt

    shutil.rmtree(directory, ignore_errors=True)
    start = time.perf_counter()
    mtt.train(raw, output=os.path.join(directory, "model.pt"), output_dir=directory, force=True)
    wall = time.perf_counter() - start
    (run_dir,) = glob.glob(os.path.join(directory, "2*"))
    return os.path.join(run_dir, "model.pt"), wall


def test_errors(model_path: str, test_file: str) -> dict:
    """Force RMSE (eV/Å) and energy-per-atom RMSE (eV) on the test frames."""
    from mtt.evaluate import load_model, predict

    frames = ase.io.read(test_file, ":")
    predicted = predict(load_model(model_path), frames, "energy", "angstrom", "eV")
    energies = [
        (p["energy"] - a.get_potential_energy()) / len(a) for p, a in zip(predicted, frames)
    ]
    forces = np.concatenate([p["forces"] - a.get_forces() for p, a in zip(predicted, frames)])
    return {
        "forces_rmse_eV_per_A": float(np.sqrt(np.mean(forces**2))),
        "energy_per_atom_rmse_eV": float(np.sqrt(np.mean(np.square(energies)))),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few frames and epochs")
    parser.add_argument("--workdir", default="/tmp/mtt-benchmarks-sevenn")
    parser.add_argument("-o", default=os.path.join(HERE, "results_sevenn.json"))
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    os.makedirs(args.workdir, exist_ok=True)
    data = write_data(args.workdir, args.quick)
    epochs = {"sevenn": 2 if args.quick else 40, "soap_bpnn": 4 if args.quick else 300}
    results = {}

    from mtt import pretrained

    start = time.perf_counter()
    zero_shot = pretrained.export("sevennet-0", os.path.join(args.workdir, "sevennet-0.pt"), True)
    row = {"wall_s": time.perf_counter() - start, **test_errors(zero_shot, data["test"])}
    row["note"] = "energies are PBE-referenced (MPtrj): only forces are comparable"
    results["sevennet-0 zero-shot"] = row
    print("zero-shot", json.dumps(row), flush=True)

    sevenn = {"num_epochs": epochs["sevenn"], "batch_size": 5, "learning_rate": 5e-4}
    raw = options({"name": "sevenn"}, data, sevenn)
    model, wall = train(raw, os.path.join(args.workdir, "sevenn"))
    results["sevennet-0 fine-tuned"] = {"wall_s": wall, **test_errors(model, data["test"])}
    print("fine-tuned", json.dumps(results["sevennet-0 fine-tuned"]), flush=True)

    soap = {"num_epochs": epochs["soap_bpnn"], "batch_size": 4, "learning_rate": 0.003}
    model_hypers = {"cutoff": 4.0, "num_neurons_per_layer": 16}
    raw = options({"name": "soap_bpnn", "model": model_hypers}, data, soap)
    model, wall = train(raw, os.path.join(args.workdir, "soap_bpnn"))
    results["soap_bpnn from scratch"] = {"wall_s": wall, **test_errors(model, data["test"])}
    print("soap_bpnn", json.dumps(results["soap_bpnn from scratch"]), flush=True)

    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    document = {
        "what": "SevenNet-0 zero-shot / fine-tuned vs soap_bpnn from scratch, xTB ethanol",
        "commit": commit.stdout.strip(),
        "machine": platform.platform(),
        "threads": int(os.environ["OMP_NUM_THREADS"]),
        "torch": torch.__version__,
        "quick": args.quick,
        "data": {"source": "examples/data/ethanol_xtb_200.xyz", "frames": data["counts"]},
        "split": "train/val: 60 random frames of replicas 0 and 1; test: replica 2",
        "epochs": epochs,
        "training": {"sevenn": sevenn, "soap_bpnn": soap, "soap_bpnn_model": model_hypers},
        "results": results,
    }
    with open(args.o, "w") as file:
        json.dump(document, file, indent=2)
    for name, row in results.items():
        print(
            f"{name:24s} forces {row['forces_rmse_eV_per_A']:.4f} eV/Å  "
            f"energy {row['energy_per_atom_rmse_eV']:.4f} eV/atom  {row['wall_s']:.0f} s"
        )


if __name__ == "__main__":
    main()
