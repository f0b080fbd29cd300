"""Data-parallel training under `torchrun` (torch.distributed): one process per device, gradients averaged by
DistributedDataParallel, checkpoints and logs from rank 0. Without torchrun (no WORLD_SIZE in the
environment) everything here is the one-process case: rank 0 of 1, no collectives.

    torchrun --nproc_per_node=N -m cdx train ...                       one node, N processes
    torchrun --nnodes=K --node_rank=R --rdzv_endpoint=HOST:PORT ...    K nodes (same command on each)

The backend is NCCL on CUDA devices and gloo on CPUs.
"""
from __future__ import annotations

import datetime
import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as tdist

from ..errors import CdxError

# Rank 0 alone prepares a data set before the others may read it: allow a long wait at that barrier.
TIMEOUT = datetime.timedelta(hours=6)


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0


def launched() -> bool:
    """Whether this process was started by torchrun (or another launcher that sets WORLD_SIZE) for >1 process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device_type: str = "cpu") -> Dist:
    """Join the process group torchrun set up (once per process); the one-process case needs nothing."""
    if launched() and not tdist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        try:
            tdist.init_process_group(backend=backend, timeout=TIMEOUT)
        except (RuntimeError, ValueError) as e:
            raise CdxError(f"torch.distributed: cannot join the process group ({str(e).splitlines()[0]})") from None
    return current()


def current() -> Dist:
    if not (tdist.is_available() and tdist.is_initialized()):
        return Dist()
    return Dist(tdist.get_rank(), tdist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def is_main() -> bool:
    return current().rank == 0


def barrier() -> None:
    if current().world > 1:
        tdist.barrier()


def _on_backend(t: torch.Tensor) -> torch.Tensor:
    """`t` where the backend can reduce it: NCCL reduces CUDA tensors only, gloo CPU ones."""
    if tdist.get_backend() == "nccl":
        return t.to(torch.device("cuda", torch.cuda.current_device()))
    return t


def all_sum(t: torch.Tensor) -> torch.Tensor:
    """The sum of CPU tensor `t` over the processes, on the CPU (`t` itself in the one-process case)."""
    if current().world == 1:
        return t
    on = _on_backend(t)
    tdist.all_reduce(on, op=tdist.ReduceOp.SUM)
    return on.cpu()


def broadcast_int(value: int) -> int:
    """Rank 0's `value` on every process."""
    if current().world == 1:
        return value
    t = _on_backend(torch.tensor([value], dtype=torch.int64))
    tdist.broadcast(t, src=0)
    return int(t[0].cpu())


def log(msg: str) -> None:
    """Print on rank 0 only."""
    if is_main():
        print(msg, flush=True, file=sys.stdout)


def wrap(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """`module` under DistributedDataParallel when there are several processes (itself otherwise)."""
    if current().world == 1:
        return module
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    return DDP(module, device_ids=ids)


def device_for(name: str | None) -> str | None:
    """Under several processes on CUDA, each process takes the device of its local rank."""
    d = current()
    if d.world > 1 and (name is None or name == "cuda") and torch.cuda.is_available():
        return f"cuda:{d.local_rank}"
    return name
