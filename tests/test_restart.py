"""A run killed at any moment resumes, with ``--restart auto``, to bitwise the same end."""

import glob
import os
import shutil
import signal
import subprocess
import sys
import time

import ase.io
import torch
import yaml
from helpers import TINY_MODEL

from mtt.checkpoints import read_checkpoint, save_checkpoint
from mtt.runs import find_auto_restart, new_run_dir


def options_file(tmp_path, data_dir):
    frames = ase.io.read(os.path.join(data_dir, "ethanol_reduced_100.xyz"), ":24")
    ase.io.write(tmp_path / "small.xyz", frames)
    path = tmp_path / "options.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "architecture": {
                    "name": "soap_bpnn",
                    "model": dict(TINY_MODEL, max_radial=2, max_angular=1, num_neurons_per_layer=4),
                    "training": {"num_epochs": 12, "batch_size": 4, "checkpoint_interval": 1},
                },
                "training_set": {
                    "systems": "small.xyz",
                    "targets": {"energy": {"unit": "kcal/mol"}},
                },
                "validation_set": 0.25,
            }
        )
    )
    return str(path)


def mtt(*args, cwd):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return [sys.executable, "-m", "mtt", *args], {"cwd": cwd, "env": env}


def wait_for(process, pattern, seconds: float = 300) -> None:
    """Until a file matching ``pattern`` exists (a checkpoint), while ``process`` trains."""
    deadline = time.time() + seconds
    while not glob.glob(str(pattern)):
        assert process.poll() is None, "training ended before it could be interrupted"
        assert time.time() < deadline
        time.sleep(0.05)


def final(run_root):
    (run_dir,) = glob.glob(os.path.join(run_root, "*"))
    checkpoint = read_checkpoint(os.path.join(run_dir, "model.ckpt"))
    return checkpoint["model_state_dict"], checkpoint["trainer_state"]["history"]


def test_sigkill_then_restart_auto_is_exact(tmp_path, data_dir):
    """SIGKILL during training leaves no model.pt and only complete checkpoints; ``--restart
    auto`` continues the same run from the newest one and ends bitwise like a run that was
    never interrupted (weights and every metric of every epoch)."""
    options = options_file(tmp_path, data_dir)
    command, kwargs = mtt("train", options, "--output-dir", "ref", "-o", "ref.pt", cwd=tmp_path)
    subprocess.run(command, check=True, capture_output=True, **kwargs)

    command, kwargs = mtt("train", options, "--output-dir", "runs", "-o", "killed.pt", cwd=tmp_path)
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kwargs
    )
    wait_for(process, tmp_path / "runs" / "*" / "checkpoints" / "epoch_4.ckpt")
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (tmp_path / "killed.pt").exists()

    command, kwargs = mtt(
        "train",
        options,
        "--output-dir",
        "runs",
        "-o",
        "killed.pt",
        "--restart",
        "auto",
        cwd=tmp_path,
    )
    result = subprocess.run(command, capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, result.stderr
    assert "restarting from" in result.stdout
    reference_state, reference_history = final(tmp_path / "ref")
    state, history = final(tmp_path / "runs")
    assert history == reference_history
    for key, value in reference_state.items():
        assert torch.equal(value, state[key]), key


def test_sigterm_reports_where_to_continue_from(tmp_path, data_dir):
    """A scheduler's SIGTERM (a time limit) ends the run as Ctrl-C does, naming the last
    checkpoint and the command that continues from it; no model is written."""
    options = options_file(tmp_path, data_dir)
    longer = "architecture.training.num_epochs=100000"
    command, kwargs = mtt("train", options, "-o", "stopped.pt", "-r", longer, cwd=tmp_path)
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs
    )
    wait_for(process, tmp_path / "outputs" / "*" / "checkpoints" / "epoch_2.ckpt")
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 143, err  # 128 + SIGTERM
    assert "mtt: interrupted" in err
    assert "interrupted; the last checkpoint is " in out
    # with the run's -r: without it, the restart below would be another run
    assert f"continue with 'mtt train <options> --restart auto -r {longer}'" in out
    assert not (tmp_path / "stopped.pt").exists()
    # restarted with fewer epochs than it has (without that -r, say), nothing is done (the
    # run was taken as finished and exported)
    fewer = "architecture.training.num_epochs=1"
    command, kwargs = mtt(
        "train", options, "-o", "stopped.pt", "--restart", "auto", "-r", fewer, cwd=tmp_path
    )
    restarted = subprocess.run(command, capture_output=True, text=True, **kwargs)
    assert restarted.returncode == 1
    assert "and 'architecture.training.num_epochs' is 1: nothing to train" in restarted.stderr
    assert not (tmp_path / "stopped.pt").exists()


def test_output_made_while_training_is_kept(tmp_path, data_dir):
    """``-o`` is checked free before training; a file that appears there meanwhile (another
    run with the same ``-o``) is not replaced at the end: the run says where its model is."""
    options = options_file(tmp_path, data_dir)
    command, kwargs = mtt("train", options, "-o", "model.pt", cwd=tmp_path)
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs
    )
    wait_for(process, tmp_path / "outputs" / "*" / "checkpoints" / "epoch_1.ckpt")
    (tmp_path / "model.pt").write_text("the other run's model")
    output, _ = process.communicate(timeout=300)
    assert process.returncode != 0
    assert (tmp_path / "model.pt").read_text() == "the other run's model"
    (run_dir,) = glob.glob(str(tmp_path / "outputs" / "*"))
    assert os.path.isfile(os.path.join(run_dir, "model.pt"))
    assert (
        "'model.pt' appeared while this run trained (another run writing the same -o?) and is "
        f"left as it is; this run's model is {os.path.relpath(run_dir, tmp_path)}/model.pt"
    ) in output


def test_a_run_interrupted_after_its_last_epoch_finishes_with_restart_auto(tmp_path, data_dir):
    """Interrupted in its final report or export (no model.pt yet), a run's ``--restart
    auto`` said 'nothing to train' for ever; it now finishes that run, in its directory."""
    options = options_file(tmp_path, data_dir)
    command, kwargs = mtt("train", options, "-o", "model.pt", cwd=tmp_path)
    subprocess.run(command, check=True, capture_output=True, **kwargs)
    (run_dir,) = glob.glob(str(tmp_path / "outputs" / "*"))
    weights, history = final(tmp_path / "outputs")
    os.remove(os.path.join(run_dir, "model.pt"))
    os.remove(tmp_path / "model.pt")

    command, kwargs = mtt("train", options, "-o", "model.pt", "--restart", "auto", cwd=tmp_path)
    subprocess.run(command, check=True, capture_output=True, **kwargs)
    assert glob.glob(str(tmp_path / "outputs" / "*")) == [run_dir]
    assert os.path.isfile(os.path.join(run_dir, "model.pt")) and (tmp_path / "model.pt").is_file()
    finished_weights, finished_history = final(tmp_path / "outputs")
    assert finished_history == history
    assert all(torch.equal(weights[name], finished_weights[name]) for name in weights)


def test_a_run_that_stopped_early_only_finishes_on_restart(tmp_path, data_dir):
    """Stopped early, then interrupted in its final report: ``--restart auto`` trained on
    past the stop (the best epoch and the model changed); it now only finishes the run."""
    options = options_file(tmp_path, data_dir)
    stop = ["-r", "architecture.training.early_stopping_patience=1"]
    stop += ["-r", "architecture.training.learning_rate=1e-12"]
    command, kwargs = mtt("train", options, "-o", "model.pt", *stop, cwd=tmp_path)
    done = subprocess.run(command, check=True, capture_output=True, text=True, **kwargs)
    assert "early stopping" in done.stdout
    (run_dir,) = glob.glob(str(tmp_path / "outputs" / "*"))
    weights, history = final(tmp_path / "outputs")
    assert len(history) < 12
    os.remove(os.path.join(run_dir, "model.pt"))
    os.remove(tmp_path / "model.pt")

    command, kwargs = mtt(
        "train", options, "-o", "model.pt", "--restart", "auto", *stop, cwd=tmp_path
    )
    restarted = subprocess.run(command, check=True, capture_output=True, text=True, **kwargs)
    assert "the run stopped early after epoch" in restarted.stdout
    finished_weights, finished_history = final(tmp_path / "outputs")
    assert finished_history == history
    assert all(torch.equal(weights[name], finished_weights[name]) for name in weights)
    assert (tmp_path / "model.pt").is_file()


def test_restart_auto_does_not_join_a_run_that_still_trains(tmp_path, data_dir):
    """A second job's ``--restart auto`` continued the run beside the first (both writing
    its log, checkpoints and model); it is refused while the first process lives, and a
    killed process's lock is taken over (see the SIGKILL test)."""
    options = options_file(tmp_path, data_dir)
    long = "architecture.training.num_epochs=100000"  # still training when the second starts
    command, kwargs = mtt("train", options, "-o", "first.pt", "-r", long, cwd=tmp_path)
    first = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kwargs
    )
    try:
        wait_for(first, tmp_path / "outputs" / "*" / "checkpoints" / "epoch_1.ckpt")
        (run_dir,) = glob.glob(str(tmp_path / "outputs" / "*"))
        command, kwargs = mtt(
            "train", options, "-o", "second.pt", "-r", long, "--restart", "auto", cwd=tmp_path
        )
        # (joining the run, it would train for ever)
        second = subprocess.run(command, capture_output=True, text=True, timeout=120, **kwargs)
    finally:
        first.kill()
        first.wait()
    assert second.returncode == 1
    assert (
        f"{os.path.relpath(run_dir, tmp_path)} is being trained by process {first.pid} on this "
        "machine; wait for it to "
        "finish or stop it before continuing the run"
    ) in second.stderr
    assert not (tmp_path / "second.pt").exists()


def test_runs_starting_in_the_same_second_get_their_own_directories(tmp_path, monkeypatch):
    """Another run makes the directory named for this second between this run's look and
    its own mkdir: this run takes the next name (it was refused as unwritable, or with
    a check-then-make, two runs wrote into one directory)."""
    real_mkdir = os.mkdir
    taken = []

    def mkdir_after_another_run(path, *args, **kwargs):
        if os.path.dirname(path) == str(tmp_path) and not taken:
            real_mkdir(path)  # the other run, first
            taken.append(path)
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", mkdir_after_another_run)
    path = new_run_dir(str(tmp_path))
    assert path == f"{taken[0]}-2"
    assert sorted(os.listdir(tmp_path)) == [os.path.basename(p) for p in (taken[0], path)]


def test_restart_auto_takes_the_newest_run_by_the_time_in_its_name(tmp_path):
    """Run directories were taken in reverse alphabetical order: a run the user renamed to
    keep it ('archived_pet_run') won over every timestamped run, and the tenth run of a
    second ('-10') lost to the ninth."""
    names = ["2026-01-02_09-00-00-9", "archived_pet_run", "2026-01-02_09-00-00-10"]
    for age, name in enumerate(names + ["2026-01-01_23-00-00", "older_archive"]):
        os.makedirs(tmp_path / name / "checkpoints")
        checkpoint = str(tmp_path / name / "checkpoints" / "epoch_2.ckpt")
        save_checkpoint({}, checkpoint)
        os.utime(checkpoint, (1e9 - age, 1e9 - age))  # written in order, newest first

    def found():
        return os.path.relpath(find_auto_restart(str(tmp_path)), tmp_path).split(os.sep)[0]

    for expected in ["2026-01-02_09-00-00-10", "2026-01-02_09-00-00-9", "2026-01-01_23-00-00"]:
        assert found() == expected
        shutil.rmtree(tmp_path / expected)
    assert found() == "archived_pet_run"  # then the others, by their checkpoints' times
    shutil.rmtree(tmp_path / "archived_pet_run")
    assert found() == "older_archive"
    # the newest run stopped before its first checkpoint: a new run, not an older one's
    # continuation (it trained the older run on with the new run's options)
    os.makedirs(tmp_path / "2026-01-03_08-00-00")
    (tmp_path / "2026-01-03_08-00-00" / "train.log").write_text("")
    assert find_auto_restart(str(tmp_path)) is None


def test_an_interruption_keeps_the_last_complete_epoch(tmp_path, data_dir):
    """With checkpoints every 100 epochs (the default), Ctrl-C or a scheduler's SIGTERM left
    nothing to continue from, or lost up to 99 epochs; the last complete epoch is now saved
    on the way out, and the run continues from it to the end an uninterrupted run reaches."""
    options = options_file(tmp_path, data_dir)

    def train(output_dir, *extra):
        rare = "architecture.training.checkpoint_interval=100"
        return mtt("train", options, "-r", rare, "--output-dir", output_dir, *extra, cwd=tmp_path)

    command, kwargs = train("ref", "-o", "ref.pt")
    subprocess.run(command, check=True, capture_output=True, **kwargs)
    command, kwargs = train("runs", "-o", "stopped.pt")
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs
    )
    deadline = time.time() + 300
    while _epochs_written(tmp_path / "runs") < 3:
        assert process.poll() is None and time.time() < deadline
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=60)
    assert "saved the last complete epoch" in out, out + err
    (saved,) = glob.glob(str(tmp_path / "runs" / "*" / "checkpoints" / "epoch_*.ckpt"))
    assert 2 <= read_checkpoint(saved)["trainer_state"]["epoch"] < 12

    command, kwargs = train("runs", "-o", "stopped.pt", "--restart", "auto")
    result = subprocess.run(command, capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, result.stderr
    reference_state, reference_history = final(tmp_path / "ref")
    state, history = final(tmp_path / "runs")
    assert history == reference_history
    for key, value in reference_state.items():
        assert torch.equal(value, state[key]), key


def _epochs_written(root) -> int:
    """Epochs in the train.csv of the run under ``root`` (0 before it exists)."""
    found = glob.glob(str(root / "*" / "train.csv"))
    if not found:
        return 0
    with open(found[0]) as file:
        return max(len(file.readlines()) - 1, 0)


def test_a_lock_left_by_a_killed_run_is_taken_over(tmp_path):
    """A run killed with -9 leaves <run>/.lock; once its process number belongs to another
    program (after a reboot), the run was refused for ever as 'being trained'."""
    import socket

    from mtt import runlock

    other = subprocess.Popen(["sleep", "60"])  # not mtt, alive, with some number
    try:
        (tmp_path / ".lock").write_text(f"{other.pid} {socket.gethostname()}")
        path = runlock.acquire(str(tmp_path))
        assert (tmp_path / ".lock").read_text() == f"{os.getpid()} {socket.gethostname()}"
        runlock.release(path)
        assert not (tmp_path / ".lock").exists()
    finally:
        other.kill()
        other.wait()


def test_an_interruption_after_the_export_points_at_the_model(tmp_path, monkeypatch, caplog):
    """Stopped between the run's model.pt and its copy to -o, the hint said to continue with
    --restart auto, which then had nothing to train."""
    from mtt import api

    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "epoch_3.ckpt").write_bytes(b"")
    (tmp_path / "model.pt").write_bytes(b"")
    with caplog.at_level("WARNING", logger="mtt"):
        api._report_interruption(str(tmp_path), "outputs")
    assert caplog.messages == [
        f"interrupted after the export: the model is {tmp_path / 'model.pt'}; copy it"
    ]
