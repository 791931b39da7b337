"""Where mtt's soap_bpnn spends its time: one training epoch and one MD step per system size.

    OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/profile_mtt.py
    .venv/bin/python benchmarks/profile_mtt.py --only inference --frames 0 1 --model model.pt

Training: ``mtt.api.train`` on the Si training frames of ``run.py`` (300 frames of 64 atoms,
batch size 8, same hypers as the benchmark); the second epoch is profiled with torch.profiler
(operators, self CPU time) and cProfile (Python functions). Inference: the exported model in
metatomic's ASE calculator on frames of ``big_Si_1k_8k_32k.xyz`` (``--frames``, default 1: 8000
atoms), one step after two warm-up steps, neighbour list rebuilt (skin 0), also grouped by input
shape (which tells e.g. a slow small-batch ``bmm`` from a large one). Tables go to stdout and to
``--output``.
"""

import argparse
import cProfile
import io
import os
import pstats
import sys
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import run as bench  # noqa: E402


def _tables(torch_profile, cprofile, title: str, rows: int, shapes: bool = False) -> str:
    out = [f"==== {title}: torch.profiler, operators by self CPU time ===="]
    out.append(torch_profile.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))
    if shapes:
        out.append(f"==== {title}: torch.profiler, by operator and input shapes ====")
        averages = torch_profile.key_averages(group_by_input_shape=True)
        out.append(averages.table(sort_by="self_cpu_time_total", row_limit=rows))
    out.append(f"==== {title}: torch.profiler, by total CPU time (incl. children) ====")
    out.append(torch_profile.key_averages().table(sort_by="cpu_time_total", row_limit=rows))
    for sort in ("tottime", "cumulative"):
        stream = io.StringIO()
        pstats.Stats(cprofile, stream=stream).sort_stats(sort).print_stats(rows)
        out.append(f"==== {title}: cProfile by {sort} ====")
        out.append(stream.getvalue())
    return "\n".join(out)


def train_instrumented(options: str, cwd: str, owner: Any, name: str, replacement: Any) -> None:
    """``mtt train options`` in ``cwd``, with ``owner.name`` replaced by ``replacement`` (a
    measuring wrapper) for the run only."""
    from mtt.api import train

    original = getattr(owner, name)
    setattr(owner, name, replacement)
    here = os.getcwd()
    os.chdir(cwd)
    try:
        train(options, output="model.pt", output_dir="outputs", force=True)
    finally:
        os.chdir(here)
        setattr(owner, name, original)


def profile_training(workdir: str, rows: int) -> str:
    import torch

    from mtt.training import trainer as trainer_module

    sets = bench.prepare_data(workdir, bench.FULL)
    cwd = os.path.join(workdir, "profile", "train")
    os.makedirs(cwd, exist_ok=True)
    options = os.path.join(cwd, "options.yaml")
    bench.write_options(options, "mtt", "soap_bpnn", sets["si"], 2)

    original = trainer_module.Trainer._epoch
    captured = {}

    def profiled_epoch(self, model, loss, train_set, val, optimizer, scheduler, epoch, device):
        if epoch != 1:
            return original(self, model, loss, train_set, val, optimizer, scheduler, epoch, device)
        profiler = cProfile.Profile()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            start = time.perf_counter()
            profiler.enable()
            row = original(self, model, loss, train_set, val, optimizer, scheduler, epoch, device)
            profiler.disable()
            captured["seconds"] = time.perf_counter() - start
        captured["torch"], captured["cprofile"] = prof, profiler
        return row

    train_instrumented(options, cwd, trainer_module.Trainer, "_epoch", profiled_epoch)
    title = f"training epoch 2 of soap_bpnn on {sets['si']['n_train']} Si frames"
    header = f"{title}: {captured['seconds']:.2f} s under the profilers"
    return header + "\n" + _tables(captured["torch"], captured["cprofile"], title, rows)


def profile_inference(model: str, frame: int, rows: int) -> str:
    import ase.io
    import numpy as np
    import torch
    from metatomic_ase import MetatomicCalculator

    atoms = ase.io.read(bench.BIG_SI, index=frame)
    atoms.calc = MetatomicCalculator(model, device="cpu", neighbor_skin=0.0)
    rng = np.random.default_rng(0)
    atoms.positions += rng.normal(0, 0.005, atoms.positions.shape)
    atoms.get_forces()  # warm-up (TorchScript profiling runs)
    atoms.positions += rng.normal(0, 0.005, atoms.positions.shape)
    atoms.get_forces()
    atoms.positions += rng.normal(0, 0.005, atoms.positions.shape)
    profiler = cProfile.Profile()
    activities = [torch.profiler.ProfilerActivity.CPU]
    with torch.profiler.profile(activities=activities, record_shapes=True) as prof:
        start = time.perf_counter()
        profiler.enable()
        atoms.get_forces()
        profiler.disable()
        seconds = time.perf_counter() - start
    title = f"one MD step of soap_bpnn, {len(atoms)} atoms"
    header = f"{title}: {seconds:.2f} s under the profilers\n"
    return header + _tables(prof, profiler, title, rows, shapes=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/mtt-benchmarks")
    parser.add_argument("--output", default="/tmp/mtt-benchmarks/profile.txt")
    parser.add_argument("--rows", type=int, default=25)
    parser.add_argument("--only", choices=["training", "inference"])
    parser.add_argument(
        "--frames", type=int, nargs="+", default=[1], help="frames of big_Si_1k_8k_32k.xyz"
    )
    parser.add_argument("--model", help="exported model (default: the profiled training's)")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    texts = []
    if args.only != "inference":
        texts.append(profile_training(args.workdir, args.rows))
    if args.only != "training":
        model = args.model or os.path.join(args.workdir, "profile", "train", "model.pt")
        texts += [profile_inference(model, frame, args.rows) for frame in args.frames]
    text = "\n\n".join(texts)
    with open(args.output, "w") as file:
        file.write(text)
    print(text)


if __name__ == "__main__":
    main()
