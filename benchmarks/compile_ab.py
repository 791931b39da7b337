"""What pet's ``compile: true`` saves per training step, measured on the same batches.

    OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/compile_ab.py

Epoch times of runs minutes apart differ by 1.5-3x on this shared machine, more than the
effect of compiling, so comparing a compiled run with an eager one says little. Here one
``mtt train`` with ``compile: true`` (``run.py``'s pet options: ethanol and carbon, batch 8)
times every training batch after the first twice, back to back: the model's part of the step
(energies, forces, stress) and its backward, once through the compiled step and once eagerly,
alternating which goes first. Reported per data set: the median of the per-batch ratios
(compiled / eager) with quartiles, the median times, and the first compiled step (tracing
and compiling; set ``TORCHINDUCTOR_CACHE_DIR`` to an empty folder to time it cold). The
backward is that of a sum of squares of the predictions, not the loss: its cost is the
model's either way. The optimizer, validation and checkpoints are not timed (they do not
depend on compiling).
"""

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any, Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import run as bench  # noqa: E402
from profile_mtt import train_instrumented  # noqa: E402


def measure(options: str, cwd: str) -> Dict[str, Any]:
    import torch

    from mtt.architectures.pet import trainer as pet_trainer

    eager_times: List[float] = []
    compiled_times: List[float] = []
    first: Dict[str, float] = {}
    original = pet_trainer.Trainer.predict

    def timed(step) -> float:
        start = time.perf_counter()
        predictions = step()
        sum((value.double() ** 2).sum() for value in predictions.values()).backward()
        return time.perf_counter() - start

    def predict(self, model, batch, quantities, training):
        if not training:
            return original(self, model, batch, quantities, training)
        if not self._compiled_once:
            start = time.perf_counter()
            predictions = original(self, model, batch, quantities, training)
            first["seconds"] = time.perf_counter() - start
            return predictions

        def eager():
            return model.predict(batch, quantities, training=True)

        def compiled():
            with pet_trainer._without_recompiling():
                return self._compiled_predict(model, batch, quantities)

        if len(eager_times) % 2:
            eager_times.append(timed(eager))
            compiled_times.append(timed(compiled))
        else:
            compiled_times.append(timed(compiled))
            eager_times.append(timed(eager))
        model.zero_grad(set_to_none=True)
        return original(self, model, batch, quantities, training)

    train_instrumented(options, cwd, pet_trainer.Trainer, "predict", predict)
    ratios = [c / e for c, e in zip(compiled_times, eager_times)]
    quartiles = statistics.quantiles(ratios, n=4)
    return {
        "first_compiled_step_s": first.get("seconds"),
        "steps": len(ratios),
        "eager_median_s": statistics.median(eager_times),
        "compiled_median_s": statistics.median(compiled_times),
        "ratio_median": statistics.median(ratios),
        "ratio_quartiles": [quartiles[0], quartiles[2]],
        "eager_s": eager_times,
        "compiled_s": compiled_times,
        "torch": torch.__version__,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", default=["ethanol", "carbon"])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--workdir", default="/tmp/mtt-benchmarks")
    parser.add_argument("-o", "--output", default="benchmarks/results_compile_ab.json")
    args = parser.parse_args()

    from mtt.architectures import load

    # run.py's pet sizes, those of them that mtt's pet has
    pet_fields = [field.name for field in dataclasses.fields(load("pet").__model__.__hypers__)]
    sets = bench.prepare_data(args.workdir, bench.FULL)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True
    ).stdout.strip()
    results: Dict[str, Any] = {"commit": commit, "epochs": args.epochs, "data": {}}
    for name in args.data:
        cwd = os.path.join(args.workdir, "compile_ab", name)
        os.makedirs(cwd, exist_ok=True)
        options = os.path.join(cwd, "options.yaml")
        bench.write_options(
            options,
            "mtt",
            "pet",
            sets[name],
            args.epochs,
            pet_fields,
            {"compile": True},
        )
        found = measure(options, cwd)
        results["data"][name] = found
        print(
            f"{name}: {found['steps']} batches, compiled / eager per step: median "
            f"{found['ratio_median']:.3f} (quartiles {found['ratio_quartiles'][0]:.3f}-"
            f"{found['ratio_quartiles'][1]:.3f}), eager {found['eager_median_s']:.3f} s, "
            f"compiled {found['compiled_median_s']:.3f} s; first compiled step "
            f"{found['first_compiled_step_s']:.0f} s",
            flush=True,
        )
    with open(args.output, "w") as file:
        json.dump(results, file, indent=2)


if __name__ == "__main__":
    main()
