"""Distributed training: two processes (gloo, CPU) follow the run of one process."""

import csv
import glob
import os
import socket
import subprocess
import sys

import ase.io
import numpy as np
import pytest
import torch
import yaml
from helpers import TINY_MODEL

from mtt.checkpoints import read_checkpoint
from mtt.training.distributed import first_host, launch_environment

if not torch.distributed.is_available():
    pytest.skip("this torch was built without torch.distributed", allow_module_level=True)

LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def options_file(tmp_path, data_dir):
    frames = ase.io.read(os.path.join(data_dir, "ethanol_reduced_100.xyz"), ":12")
    ase.io.write(tmp_path / "ethanol.xyz", frames)
    path = tmp_path / "options.yaml"
    # 9 training structures in batches of 4: the last batch has one structure, so that the
    # second process has none in it; forces, weight averaging and a checkpoint every epoch
    training = {"num_epochs": 3, "batch_size": 4, "learning_rate": 0.01, "ema_decay": 0.5}
    path.write_text(
        yaml.safe_dump(
            {
                "architecture": {
                    "name": "soap_bpnn",
                    "model": dict(TINY_MODEL, max_radial=2, max_angular=1, num_neurons_per_layer=4),
                    "training": dict(training, checkpoint_interval=1),
                },
                "training_set": {
                    "systems": "ethanol.xyz",
                    "targets": {"energy": {"unit": "kcal/mol"}},
                },
                "validation_set": 0.25,
                "base_precision": 64,
                "device": "cpu",
            }
        )
    )
    return str(path)


def environment():
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES}
    env = {k: v for k, v in env.items() if not k.startswith("SLURM_")}
    return dict(env, OMP_NUM_THREADS="1")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def train(tmp_path, options, output_dir, processes, *extra):
    command = [sys.executable, "-m", "mtt", "train", options, "--output-dir", output_dir]
    if processes > 1:
        launcher = ["-m", "torch.distributed.run", f"--nproc_per_node={processes}"]
        command[1:1] = [*launcher, f"--master_port={free_port()}"]
    command += ["-o", f"{output_dir}.pt", *extra]
    result = subprocess.run(
        command, capture_output=True, text=True, cwd=tmp_path, env=environment(), timeout=300
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result.stdout


def run_dir(tmp_path, output_dir):
    (path,) = glob.glob(str(tmp_path / output_dir / "*"))
    return path


def read_csv(path):
    with open(os.path.join(path, "train.csv"), newline="") as file:
        return list(csv.DictReader(file))


def test_two_processes_follow_one_process(tmp_path, data_dir):
    """Two processes with batches split between them give the losses, metrics and weights of
    one process with the same batches (a failure means a wrong mean over a split batch, or
    gradients/metrics not added up over the processes); only the first process writes."""
    options = options_file(tmp_path, data_dir)
    train(tmp_path, options, "one", 1)
    stdout = train(tmp_path, options, "two", 2)
    one, two = run_dir(tmp_path, "one"), run_dir(tmp_path, "two")

    rows_one, rows_two = read_csv(one), read_csv(two)
    assert len(rows_two) == 3 and rows_one[0].keys() == rows_two[0].keys()
    for row_one, row_two in zip(rows_one, rows_two):
        for key in row_one:
            np.testing.assert_allclose(float(row_two[key]), float(row_one[key]), rtol=1e-6)
    weights_one = read_checkpoint(os.path.join(one, "model.ckpt"))["model_state_dict"]
    weights_two = read_checkpoint(os.path.join(two, "model.ckpt"))["model_state_dict"]
    for name, value in weights_one.items():
        torch.testing.assert_close(weights_two[name], value, rtol=1e-6, atol=1e-12)

    assert sorted(os.listdir(two)) == sorted(os.listdir(one))  # what one process writes
    assert sorted(os.listdir(os.path.join(two, "checkpoints"))) == [
        f"epoch_{n}.ckpt" for n in (1, 2, 3)
    ]
    assert (tmp_path / "two.pt").exists()
    assert stdout.count("run directory:") == 1 and stdout.count("epoch    3 |") == 1

    # a distributed restart trains the finished run one more epoch, in a new run directory
    more = ["--restart", "auto", "-f", "-r", "architecture.training.num_epochs=4"]
    stdout = train(tmp_path, options, "two", 2, *more)
    assert "restarting from" in stdout and stdout.count("run directory:") == 1
    (further,) = set(glob.glob(str(tmp_path / "two" / "*"))) - {two}
    rows = read_csv(further)
    assert rows[:3] == rows_two and len(rows) == 4
    assert read_csv(two) == rows_two  # the finished run stays as it was


def test_batches_are_shared_without_gaps_or_overlaps(data_dir):
    """Each batch's shares over the processes are the batch one process would use, in the same
    order, also with an atom budget; a process may get none of a small last batch."""
    from mtt.data.dataset import dataset_from_atoms
    from mtt.options import EnergyTargetOptions
    from mtt.training.batches import PreparedSet

    frames = ase.io.read(os.path.join(data_dir, "ethanol_reduced_100.xyz"), ":10")
    dataset = dataset_from_atoms(frames, {"energy": EnergyTargetOptions(unit="kcal/mol")})
    model = type("M", (), {"atoms_to_data": lambda s, a: id(a), "collate_fn": lambda s, d: d})
    prepared = PreparedSet(dataset, model(), ["energy"])
    order = [3, 1, 4, 0, 5, 9, 2, 6, 8, 7]
    for batch_size, max_atoms in [(4, None), (8, 30)]:
        whole = [b for b, _ in prepared.batches(order, batch_size, max_atoms)]
        shares = [list(prepared.shares(order, batch_size, max_atoms, r, 3)) for r in range(3)]
        for step, batch in enumerate(whole):
            parts = [shares[r][step][0] or [] for r in range(3)]
            assert sorted(sum(parts, [])) == sorted(batch)
            assert all(shares[r][step][2] == len(batch) for r in range(3))
    assert shares[2][-1][0] is None  # the last batch holds one structure


def test_launch_environment_of_torchrun_and_srun():
    """torchrun's variables, and srun's (the address of task 0 from the node list, a port
    from the job id); a batch script without srun (no SLURM_STEP_NUM_TASKS) or a single
    process is not a distributed launch."""
    torchrun = {"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "a"}
    assert launch_environment(torchrun) == dict(torchrun, MASTER_PORT="29500")
    srun = {
        "SLURM_PROCID": "5",
        "SLURM_STEP_NUM_TASKS": "8",
        "SLURM_NTASKS": "8",
        "SLURM_LOCALID": "1",
        "SLURM_JOB_NODELIST": "gpu[07-09,12],cpu1",
        "SLURM_LAUNCH_NODE_IPADDR": "10.0.0.1",
        "SLURM_JOB_ID": "123456",
    }
    assert launch_environment(srun) == {
        "RANK": "5",
        "WORLD_SIZE": "8",
        "LOCAL_RANK": "1",
        "MASTER_ADDR": "gpu07",
        "MASTER_PORT": str(10_000 + 123456 % 20_000),
    }
    assert launch_environment(dict(srun, MASTER_ADDR="b", MASTER_PORT="1"))["MASTER_ADDR"] == "b"
    assert launch_environment({**srun, **torchrun})["RANK"] == "1"  # torchrun inside SLURM
    no_list = {k: v for k, v in srun.items() if k != "SLURM_JOB_NODELIST"}
    assert launch_environment(no_list)["MASTER_ADDR"] == "10.0.0.1"
    batch_script = {k: v for k, v in srun.items() if k != "SLURM_STEP_NUM_TASKS"}
    assert launch_environment(batch_script) is None
    assert launch_environment(dict(torchrun, WORLD_SIZE="1")) is None
    assert launch_environment({}) is None
    assert first_host("node1") == "node1"
    assert first_host("rack[2-3]-n[5,7],x") == "rack2-n5"


def test_a_process_whose_partner_never_starts_stops_on_sigterm(tmp_path, data_dir):
    """srun's task 0 of 2, with task 1 never started, waits in torch's rendezvous: it says
    where, and SIGTERM (a scheduler's time limit, `timeout`) ends it at once. Python's own
    handler would run only when the C++ wait returned, after the 30-minute limit."""
    import select
    import signal
    import time

    options = options_file(tmp_path, data_dir)
    slurm = {"SLURM_JOB_ID": "4243", "SLURM_PROCID": "0", "SLURM_LOCALID": "0"}
    slurm.update(SLURM_STEP_NUM_TASKS="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    command = [sys.executable, "-m", "mtt", "train", options, "-o", "lonely.pt"]
    process = subprocess.Popen(
        command,
        cwd=tmp_path,
        env=dict(environment(), **slurm),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        line = ""
        while "joining the others" not in line and time.monotonic() < deadline:
            ready, _, _ = select.select([process.stdout], [], [], 1.0)
            line = process.stdout.readline() if ready else line
        assert "process 0 of 2: joining the others at 127.0.0.1:" in line
        time.sleep(1.0)  # inside the rendezvous
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()  # (closes the pipes)
    assert process.returncode == -signal.SIGTERM
    assert not (tmp_path / "lonely.pt").exists()


def test_independent_processes_export_to_their_own_files(monkeypatch):
    """``distributed: off`` under torchrun: every process trains its own model, and all
    exported it to the same -o (the last silently replacing the others); process N now
    writes ``<name>-rankN.pt``. Without a launch, or with ``auto``, -o is as given."""
    from mtt.api import _own_output

    for key in ("RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_STEP_NUM_TASKS"):
        monkeypatch.delenv(key, raising=False)
    assert _own_output("out/model.pt", "off") == "out/model.pt"
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "2")
    assert _own_output("out/model.pt", "off") == "out/model-rank2.pt"
    assert _own_output("out/model.pt", "auto") == "out/model.pt"
    monkeypatch.setenv("RANK", "0")
    assert _own_output("model.pt", "off") == "model.pt"
