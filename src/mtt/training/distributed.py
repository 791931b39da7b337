"""Training on several processes, one per GPU, launched by ``torchrun`` or SLURM's ``srun``.

Every process reads the whole data set and runs the same loop. Each optimisation step's batch
(the ``batch_size`` structures one process would use) is split between the processes; their
gradients, losses and metrics are added up, so that N processes follow the trajectory of one
process with the same batches, up to rounding. Process 0, the *main* one, writes everything
(run directory, logs, checkpoints, the exported model); the others write nothing.

``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT``. Under ``srun`` the process's rank, the number of processes and the rank on its
node come from ``SLURM_PROCID``, ``SLURM_STEP_NUM_TASKS`` (set by ``srun`` only, so a batch
script that runs ``mtt train`` without ``srun`` trains alone instead of waiting for processes
that never come) and ``SLURM_LOCALID``. The address of process 0 is ``MASTER_ADDR`` if set,
else the first host of ``SLURM_JOB_NODELIST`` (where ``srun`` places task 0), else
``SLURM_LAUNCH_NODE_IPADDR``; the port is ``MASTER_PORT`` if set, else derived from the job id.
"""

import logging
import os
import re
import signal
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, TypeVar

import torch
import torch.distributed as dist

from ..errors import MttError

T = TypeVar("T")

# how long the other processes wait at the end for the main one to finish its work
FINAL_WAIT = timedelta(days=2)


@dataclass(frozen=True)
class World:
    """This process's place among the processes training together (one process: the default)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Whether this process writes files and logs."""
        return self.rank == 0


def launch_environment(env: Mapping[str, str]) -> Optional[Dict[str, str]]:
    """``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` of a launch
    by ``torchrun`` or ``srun`` with several processes, read from ``env``; None otherwise."""
    if "RANK" in env and "WORLD_SIZE" in env:  # torchrun (also when run inside SLURM)
        found = {
            "RANK": env["RANK"],
            "WORLD_SIZE": env["WORLD_SIZE"],
            "LOCAL_RANK": env.get("LOCAL_RANK", "0"),
            "MASTER_ADDR": env.get("MASTER_ADDR", "127.0.0.1"),
            "MASTER_PORT": env.get("MASTER_PORT", "29500"),
        }
    elif "SLURM_PROCID" in env and "SLURM_STEP_NUM_TASKS" in env:  # srun
        found = {
            "RANK": env["SLURM_PROCID"],
            "WORLD_SIZE": env["SLURM_STEP_NUM_TASKS"],
            "LOCAL_RANK": env.get("SLURM_LOCALID", "0"),
            "MASTER_ADDR": env.get("MASTER_ADDR") or _slurm_master(env),
            "MASTER_PORT": env.get("MASTER_PORT")
            or str(10_000 + int(env.get("SLURM_JOB_ID", "0")) % 20_000),
        }
    else:
        return None
    return found if int(found["WORLD_SIZE"]) > 1 else None


def _slurm_master(env: Mapping[str, str]) -> str:
    nodes = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    if nodes:
        return first_host(nodes)
    return env.get("SLURM_LAUNCH_NODE_IPADDR", "127.0.0.1")


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list: ``gpu[07-09,12],cpu1`` gives ``gpu07``."""
    first = re.split(r",(?![^\[]*\])", nodelist)[0]
    return re.sub(r"\[([^\]]*)\]", lambda m: re.split(r"[,-]", m.group(1))[0], first)


def current() -> World:
    """The processes training together now (one, unless inside :func:`session`)."""
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    local_rank = int(os.environ.get("LOCAL_RANK", os.environ.get("SLURM_LOCALID", "0")))
    return World(dist.get_rank(), dist.get_world_size(), local_rank)


@contextmanager
def session(mode: str = "auto", cuda: bool = False) -> Iterator[World]:
    """Join the other processes of a ``torchrun``/``srun`` launch for the block (with ``mode``
    ``auto``; nothing happens in a plain run or with ``off``), over NCCL with ``cuda``, else
    gloo. Processes other than the main one log errors only. At a normal end every process
    waits until all are done (the main one exports after training); the process group is
    destroyed at the end, also on errors. A group that already exists (made by the caller) is
    used as is."""
    launch = launch_environment(os.environ) if mode == "auto" else None
    if launch is None or not dist.is_available() or dist.is_initialized():
        yield current()
        return
    for key in ("MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK"):
        os.environ.setdefault(key, launch[key])
    world = World(int(launch["RANK"]), int(launch["WORLD_SIZE"]), int(launch["LOCAL_RANK"]))
    if cuda:
        torch.cuda.set_device(gpu_index(world))
    logger = logging.getLogger("mtt")
    level = logger.level
    _join(world, cuda, logger)
    # for the final wait below: the main process's evaluation and export after training can
    # outlast the default group's time limit (10 minutes with NCCL)
    finish = dist.new_group(backend="gloo", timeout=FINAL_WAIT)
    try:
        if not world.main:
            logger.setLevel(logging.ERROR)
        yield world
        # all processes leave together: one that tears down its connections and exits while
        # the main process still works can abort at exit (seen with gloo: "terminate called
        # without an active exception"), and the launcher then kills the main process
        dist.barrier(group=finish)
    finally:
        logger.setLevel(level)
        dist.destroy_process_group()


def _join(world: World, cuda: bool, logger: logging.Logger) -> None:
    """Form the process group, saying what this process waits for. Until the others join,
    SIGTERM and Ctrl-C act at once (Python's handlers wait for torch's C++ rendezvous to
    return, which with a task that never started is the group's 30-minute time limit)."""
    address = f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
    logger.info("process %d of %d: joining the others at %s", world.rank, world.size, address)
    previous = _default_signals()
    try:
        dist.init_process_group(
            "nccl" if cuda else "gloo", init_method="env://", rank=world.rank, world_size=world.size
        )
    except (RuntimeError, ValueError) as error:  # torch's DistStoreError and time-outs
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise MttError(
            f"process {world.rank} of {world.size} could not join the others at {address} "
            f"({first[:160]}); check that every task started (torchrun --nproc_per_node, srun "
            "-n) and that MASTER_ADDR/MASTER_PORT are reachable"
        ) from None
    finally:
        _restore_signals(previous)


def _default_signals():
    """SIGTERM and SIGINT back to the operating system's default (terminate), as they were."""
    if threading.current_thread() is not threading.main_thread():
        return None
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    for sig in previous:
        signal.signal(sig, signal.SIG_DFL)
    return previous


def _restore_signals(previous) -> None:
    for sig, handler in (previous or {}).items():
        signal.signal(sig, handler)


def gpu_index(world: World) -> int:
    """This process's GPU: its rank on the node, or the only GPU it sees (SLURM's
    ``--gpus-per-task=1`` shows each task one)."""
    count = torch.cuda.device_count()
    if count == 1:
        return 0
    if world.local_rank >= count:
        raise MttError(
            f"process {world.rank} is number {world.local_rank} on its node, which has "
            f"{count} GPUs; start at most one process per GPU (torchrun --nproc_per_node, "
            "SLURM --ntasks-per-node)"
        )
    return world.local_rank


def local_device(device: torch.device, world: World) -> torch.device:
    """Each process its own GPU when training on several (see :func:`gpu_index`)."""
    if world.size > 1 and device.type == "cuda":
        return torch.device("cuda", gpu_index(world))
    return device


def _device() -> torch.device:
    """Where collective operations' tensors must live (NCCL: the GPU)."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def sum_over_processes(values: List[float], world: World) -> List[float]:
    """Each value added up over the processes of ``world`` (unchanged in one process)."""
    if world.size == 1 or not values:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=_device())
    dist.all_reduce(tensor)
    return tensor.tolist()


def sum_gradients(parameters: List[torch.nn.Parameter], loss: torch.Tensor, world: World) -> float:
    """Add up over the processes of ``world`` the gradients of ``parameters`` and the ``loss`` (this
    process's part of the step's loss), in one communication; return the step's loss. A
    parameter without a gradient on every process keeps none, so that the optimizer skips it
    as it would in one process."""
    if world.size == 1:
        return float(loss.detach())
    device = _device()
    flags = [p.grad is not None for p in parameters]
    pieces = [loss.detach().reshape(1), torch.tensor(flags, dtype=torch.float64)]
    pieces += [
        (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in parameters
    ]
    buffer = torch.cat([piece.to(device, torch.float64) for piece in pieces])
    dist.all_reduce(buffer)
    offset = 1 + len(parameters)
    for parameter, flag in zip(parameters, buffer[1:offset].tolist()):
        size = parameter.numel()
        gradient = buffer[offset : offset + size].reshape(parameter.shape)
        parameter.grad = gradient.to(parameter.device, parameter.dtype) if flag > 0 else None
        offset += size
    return float(buffer[0])


def broadcast_state(module: torch.nn.Module, world: World) -> None:
    """Give every process the main process's weights and buffers (whatever they computed)."""
    if world.size == 1:
        return
    device = _device()
    with torch.no_grad():
        for tensor in module.state_dict().values():
            copy = tensor.to(device)
            dist.broadcast(copy, src=0)
            tensor.copy_(copy)


def from_main(function: Callable[[], T]) -> T:
    """``function()`` run by the main process only; every process gets its result, or raises
    its error (so that all stop together instead of waiting for each other)."""
    if current().size == 1:
        return function()
    result: List[Any] = [None]
    if dist.get_rank() == 0:
        try:
            result[0] = (True, function())
        except Exception as error:
            result[0] = (False, error)
    dist.broadcast_object_list(result, src=0, device=_device())
    succeeded, value = result[0]
    if not succeeded:
        raise value
    return value
