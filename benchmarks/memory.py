"""Memory of training and of ``mtt eval`` against the size of a packed data set.

Builds packed data sets of 1k, 10k and 100k structures by repeating the 100 shipped ethanol
frames (written by the streaming packer, ``mtt.data.packed.pack_atoms``, one structure in memory
at a time), then measures in fresh processes:

* ``mtt train``: one epoch of a small soap_bpnn (batch 64) on the pack, everything included
  (statistics and composition fits, validation, the final evaluation of every set, export);
  for comparison, the same run on the xyz file for the sizes up to ``--xyz-up-to``;
* ``mtt eval``: the exported model on every structure of the pack, with labels (errors and a
  parity plot) and predictions written to an extxyz file.

Each process is sampled every 0.2 s from ``/proc/<pid>/status``: ``VmRSS`` (what ``top``
shows), split into ``RssAnon`` (the process's own memory: Python objects, tensors) and
``RssFile`` (pages of mapped files, here mostly the memory-mapped pack: page cache that the
kernel reclaims when memory is short). The peak of each, and ``ru_maxrss`` from ``wait4``, go
into the JSON. Run from the repository root::

    .venv/bin/python benchmarks/memory.py -o benchmarks/results_memory.json    # ~6-9 min
    .venv/bin/python benchmarks/memory.py --sizes 1000 2000 --xyz-up-to 2000   # quick check
"""

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from typing import Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
ETHANOL = os.path.join(ROOT, "examples", "data", "ethanol_reduced_100.xyz")
MTT = [sys.executable, "-m", "mtt"]
ENV = dict(
    os.environ,
    OMP_NUM_THREADS="2",
    OMP_WAIT_POLICY="PASSIVE",
    PYTHONWARNINGS="ignore",
)
MODEL = {
    "cutoff": 3.5,
    "max_radial": 2,
    "max_angular": 1,
    "num_hidden_layers": 1,
    "num_neurons_per_layer": 8,
}
TRAINING = {"num_epochs": 1, "batch_size": 64, "progress_bar": False, "scheduler": "constant"}


def repeated_frames(count: int):
    """The shipped ethanol frames, repeated to ``count`` structures (a generator)."""
    import ase.io

    frames = ase.io.read(ETHANOL, ":")
    for index in range(count):
        yield frames[index % len(frames)]


def build(workdir: str, sizes: List[int], xyz_up_to: int) -> Dict[int, float]:
    """A pack per size (and an xyz file for the small ones); seconds spent packing."""
    import ase.io

    from mtt.data.packed import pack_atoms

    seconds = {}
    for size in sizes:
        start = time.perf_counter()
        pack_atoms(repeated_frames(size), os.path.join(workdir, f"pack_{size}"))
        seconds[size] = time.perf_counter() - start
        if size <= xyz_up_to:
            ase.io.write(os.path.join(workdir, f"data_{size}.xyz"), list(repeated_frames(size)))
    return seconds


def _status(pid: int) -> Dict[str, int]:
    """``VmRSS``, ``RssAnon`` and ``RssFile`` of a process, in kB (empty once it ended)."""
    values = {}
    try:
        with open(f"/proc/{pid}/status") as file:
            for line in file:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "RssAnon", "RssFile"):
                    values[key] = int(rest.split()[0])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return values


def measure(command: List[str], cwd: str, log: str) -> dict:
    """Run ``command``, sampling its memory; peaks in MiB, the run's seconds and samples."""
    samples: List[Dict[str, float]] = []
    start = time.perf_counter()
    with open(log, "w") as output:
        process = subprocess.Popen(command, cwd=cwd, env=ENV, stdout=output, stderr=output)
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                values = _status(process.pid)
                if values:
                    values = {k: v / 1024 for k, v in values.items()}
                    samples.append({"t": round(time.perf_counter() - start, 2), **values})
                done.wait(0.2)

        thread = threading.Thread(target=sample)
        thread.start()
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        done.set()
        thread.join()
    if process.returncode != 0:
        with open(log) as file:
            tail = file.read()[-2000:]
        raise RuntimeError(f"{' '.join(command)} failed ({process.returncode}):\n{tail}")
    peak = {key: max((s.get(key, 0.0) for s in samples), default=0.0) for key in _KEYS}
    return {
        "seconds": round(time.perf_counter() - start, 1),
        "peak_rss_mib": round(peak["VmRSS"], 1),
        "peak_rss_anon_mib": round(peak["RssAnon"], 1),
        "peak_rss_file_mib": round(peak["RssFile"], 1),
        "ru_maxrss_mib": round(usage.ru_maxrss / 1024, 1),
        "samples": samples[:: max(1, len(samples) // 60)],
    }


_KEYS = ("VmRSS", "RssAnon", "RssFile")


def write_options(path: str, systems: str) -> str:
    import yaml

    options = {
        "architecture": {"name": "soap_bpnn", "model": MODEL, "training": TRAINING},
        "training_set": {"systems": systems, "targets": {"energy": {"unit": "kcal/mol"}}},
        "validation_set": 0.1,
        "seed": 0,
    }
    with open(path, "w") as file:
        yaml.safe_dump(options, file)
    return path


def train(workdir: str, name: str, systems: str) -> dict:
    run = os.path.join(workdir, f"train_{name}")
    os.makedirs(run)
    options = write_options(os.path.join(run, "options.yaml"), systems)
    command = MTT + ["train", options, "-o", "model.pt", "--output-dir", "outputs"]
    return measure(command, run, os.path.join(run, "log.txt"))


def evaluate(workdir: str, name: str, systems: str, model: str) -> dict:
    import yaml

    run = os.path.join(workdir, f"eval_{name}")
    os.makedirs(run)
    with open(os.path.join(run, "eval.yaml"), "w") as file:
        yaml.safe_dump({"systems": systems, "targets": {"energy": {"unit": "kcal/mol"}}}, file)
    command = MTT + ["eval", model, "eval.yaml", "-o", "predictions.xyz", "-b", "64"]
    return measure(command, run, os.path.join(run, "log.txt"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--xyz-up-to", type=int, default=10000, help="largest xyz run")
    parser.add_argument("-o", "--output", default=os.path.join(HERE, "results_memory.json"))
    parser.add_argument("--workdir", default=None, help="default: a temporary directory")
    args = parser.parse_args()
    workdir = args.workdir or tempfile.mkdtemp(prefix="mtt-memory-")
    os.makedirs(workdir, exist_ok=True)
    try:
        results = run_all(workdir, args.sizes, args.xyz_up_to)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir)
    with open(args.output, "w") as file:
        json.dump(results, file, indent=1)
    print(table(results))


def run_all(workdir: str, sizes: List[int], xyz_up_to: int) -> dict:
    packing = build(workdir, sizes, xyz_up_to)
    results = {
        "commit": _commit(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "model": MODEL,
        "training": TRAINING,
        "packing_seconds": packing,
        "runs": [],
    }
    model = None
    for size in sizes:
        pack = os.path.join(workdir, f"pack_{size}")
        print(f"training on {size} packed structures", flush=True)
        result = train(workdir, f"pack_{size}", pack)
        results["runs"].append({"command": "train", "data": "pack", "structures": size, **result})
        model = model or os.path.join(workdir, f"train_pack_{size}", "model.pt")
        if size <= xyz_up_to:
            print(f"training on {size} structures from xyz", flush=True)
            result = train(workdir, f"xyz_{size}", os.path.join(workdir, f"data_{size}.xyz"))
            results["runs"].append(
                {"command": "train", "data": "xyz", "structures": size, **result}
            )
    for size in sizes:
        print(f"evaluating {size} packed structures", flush=True)
        result = evaluate(workdir, f"pack_{size}", os.path.join(workdir, f"pack_{size}"), model)
        results["runs"].append({"command": "eval", "data": "pack", "structures": size, **result})
    return results


def _commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        return "unknown"


def table(results: dict) -> str:
    lines = [
        "| command | data | structures | seconds | peak RSS | anonymous | mapped files |",
        "|---|---|---|---|---|---|---|",
    ]
    for run in results["runs"]:
        lines.append(
            f"| {run['command']} | {run['data']} | {run['structures']} | {run['seconds']} | "
            f"{run['peak_rss_mib']} MiB | {run['peak_rss_anon_mib']} MiB | "
            f"{run['peak_rss_file_mib']} MiB |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
