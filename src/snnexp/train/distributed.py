"""Data-parallel training (trainer.strategy=ddp) over the processes that torchrun starts:

    torchrun --nproc_per_node=N -m snnexp train trainer.strategy=ddp ...

Every process builds the same run; PyTorch's DistributedDataParallel averages the gradients. The data order is
the single-process one (EpochOrder) split rank::world, each process takes trainer.batch_size / N samples a step,
so one step sees the same global batch as one process would. Only rank 0 writes: the run directory's logs,
checkpoints, metrics.json and TensorBoard events. Metrics are summed over the processes before they are divided.

The processes agree on the run's start time before Hydra names the run directory (see `start_time` in
snnexp.config), so that a run, or a Hydra multirun, has one directory shared by all of them.
"""

from __future__ import annotations

import os
import sys
import time
from datetime import timedelta
from typing import TYPE_CHECKING, List, Optional

if TYPE_CHECKING:
    import torch

# torch is imported inside the functions: the CLI asks launched() and check() before anything else, and a config
# error or --help answers in a second instead of after torch's import (3 s)


def launched() -> bool:
    """Started by torchrun (or another launcher that sets the env:// variables)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def active() -> bool:
    """A process group is up (setup() under torchrun, or a test's own init_process_group)."""
    dist = sys.modules.get("torch.distributed")  # not imported: no group can have been initialised
    return dist is not None and dist.is_available() and dist.is_initialized()


def rank() -> int:
    return _dist().get_rank() if active() else 0


def world() -> int:
    return _dist().get_world_size() if active() else 1


def _dist():
    import torch.distributed

    return torch.distributed


def is_main() -> bool:
    return rank() == 0


def local_processes() -> int:
    """Processes on this machine (torchrun's LOCAL_WORLD_SIZE), 1 outside torchrun."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", 1)) if launched() else 1


def setup(args: List[str]) -> List[str]:
    """Before Hydra starts (a torchrun launch): join the process group, agree on the start time that names the
    run directory, and keep the other ranks from writing to it (no .hydra/ copy, no train.log of their own)."""
    import torch

    from snnexp import config

    dist = _dist()
    if not active():
        # gloo for CPU tensors (and the metric sums), NCCL for CUDA ones
        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend, timeout=timedelta(minutes=30))
    started = [time.time()]
    dist.broadcast_object_list(started, src=0)
    config.START_TIME = started[0]
    if is_main():
        return args
    args = [a for a in args if not a.startswith(("hydra.output_subdir=", "hydra/job_logging=", "hydra/hydra_logging="))]
    return [*args, "hydra.output_subdir=null", "hydra/job_logging=none", "hydra/hydra_logging=none"]


def device(name: str) -> torch.device:
    """trainer.device under torchrun: each process its own GPU (LOCAL_RANK) when CUDA is asked for or auto."""
    import torch

    if name in ("auto", "cuda") and torch.cuda.is_available():
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(dev)
        return dev
    return torch.device(name if name != "auto" else "cpu")


def wrap(model: torch.nn.Module, dev: torch.device) -> torch.nn.Module:
    """DistributedDataParallel: broadcasts rank 0's weights and buffers, averages gradients in backward."""
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)


def sum_all(values: List[float]) -> List[float]:
    """The sums of `values` over all processes (float64, so that counts stay exact)."""
    if not active():
        return list(values)
    import torch

    t = torch.tensor(values, dtype=torch.float64)
    _dist().all_reduce(t)
    return t.tolist()


def max_all(value: float) -> float:
    if not active():
        return value
    import torch

    t = torch.tensor([value], dtype=torch.float64)
    _dist().all_reduce(t, op=_dist().ReduceOp.MAX)
    return t.item()


def any_true(flag: bool) -> bool:
    """True on every process if it is true on any: so that all stop, or skip a batch, at the same step."""
    return max_all(float(flag)) > 0 if active() else flag


def gather(obj) -> list:
    """Every process's `obj`, in rank order (on every process)."""
    if not active():
        return [obj]
    out: list = [None] * world()
    _dist().all_gather_object(out, obj)
    return out


def from_main(obj):
    """Rank 0's `obj` on every process."""
    if not active():
        return obj
    box = [obj]
    _dist().broadcast_object_list(box, src=0)
    return box[0]


def sync_buffers(model: torch.nn.Module) -> None:
    """Rank 0's buffers (BN running statistics) to every process. DDP sends them before each training forward,
    but each process then updates them with its own share of the batch."""
    if active():
        for buffer in model.buffers():
            _dist().broadcast(buffer, src=0)


def shutdown() -> None:
    if active():
        _dist().destroy_process_group()


def check(strategy: str, batch_size: int, launcher: str, sweeper: str) -> Optional[str]:
    """What is wrong with this combination, in words with the fix; None if it can run."""
    if strategy == "ddp" and not launched():
        return ("trainer.strategy=ddp runs in the processes torchrun starts: torchrun --nproc_per_node=N -m snnexp "
                "train trainer.strategy=ddp ...")
    if strategy != "ddp" and launched() and int(os.environ["WORLD_SIZE"]) > 1:
        return (f"started by torchrun with {os.environ['WORLD_SIZE']} processes but trainer.strategy={strategy}: "
                "every process would train the same run; add trainer.strategy=ddp")
    if strategy == "ddp" and batch_size % world():
        return (f"trainer.batch_size={batch_size} is the global batch and must divide evenly among the {world()} "
                f"processes: use a multiple of {world()}")
    if strategy == "ddp" and "BasicLauncher" not in launcher:
        return (f"trainer.strategy=ddp with the launcher {launcher.rsplit('.', 1)[-1]}: each job would be launched "
                "once per process; under torchrun use Hydra's basic launcher (sweeps then run one job after another, "
                "every job on all processes)")
    if strategy == "ddp" and "BasicSweeper" not in sweeper:
        return (f"trainer.strategy=ddp with the sweeper {sweeper.rsplit('.', 1)[-1]}: each process would run its "
                "own search; run the search without DDP, or sweep with -m and listed values")
    return None
