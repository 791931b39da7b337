"""The shipped example runs as the README and the docs show it (shortened)."""

import os
import shutil
import subprocess
import sys

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "examples")


def test_ethanol_example_trains_exports_and_runs_md(tmp_path):
    """examples/ethanol/options.yaml trains and exports (1 epoch here), and md.py runs NVE
    with the exported model in a process that uses only ASE and metatomic."""
    # what a fresh clone has: not the outputs of an earlier quickstart run
    leftovers = shutil.ignore_patterns("model.pt", "model.ckpt", "outputs", "predictions*")
    shutil.copytree(os.path.join(EXAMPLES, "ethanol"), tmp_path / "ethanol", ignore=leftovers)
    shutil.copytree(os.path.join(EXAMPLES, "data"), tmp_path / "data")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cwd = tmp_path / "ethanol"

    def run(*argv):
        done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return done.stdout

    one_epoch = ["-r", "architecture.training.num_epochs=1"]
    run(sys.executable, "-m", "mtt", "train", "options.yaml", *one_epoch)
    assert (cwd / "model.pt").exists()
    evaluated = run(sys.executable, "-m", "mtt", "eval", "model.pt", "eval.yaml", "-o", "p.xyz")
    assert "energy_per_atom: RMSE" in evaluated and "forces: RMSE" in evaluated
    md = run(sys.executable, "md.py", "model.pt", "20")
    assert "ran 20 steps" in md and "drift" in md
