"""Data-parallel training under torchrun (DDP): who am I, and the few collectives we need.

`torchrun --nproc-per-node N -m alexnet train ...` sets RANK, WORLD_SIZE and LOCAL_RANK;
without them everything here is the single-process case and no process group exists.
NCCL on CUDA, gloo on CPU (which the tests use). Multi-node runs take torchrun's usual
rendezvous flags (--nnodes, --node-rank, --rdzv-endpoint ...): nothing here changes.
"""

from __future__ import annotations

import datetime
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from .errors import UserError

# How long a collective waits for the slowest process: longer than torch's 10 minutes, since
# a process may first read a whole split (the mean image's pass over ImageNet is a share
# of 1.28M JPEGs per process, and one slow disk holds every process at the next collective).
TIMEOUT = datetime.timedelta(minutes=60)


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        """Only the main process writes logs, metrics and checkpoints."""
        return self.rank == 0


def init(device_name: str) -> tuple[Dist, str]:
    """Join torchrun's process group if launched by it; returns (Dist, device name to use)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(), device_name
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device_name.startswith("cuda:"):  # every process would use that one GPU, over gloo
        raise UserError(
            f"--device {device_name}: under torchrun each process takes the GPU of its LOCAL_RANK; "
            "pass --device cuda (or auto), and choose the GPUs with CUDA_VISIBLE_DEVICES"
        )
    use_cuda = device_name in ("auto", "cuda") and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device_name = f"cuda:{local_rank}"
    elif device_name == "auto":
        device_name = "cpu"
    hazard = restart_hazard()
    if rank == 0 and hazard:  # on stderr: a --json result on stdout stays JSON
        print(f"alexnet: warning: {hazard}", file=sys.stderr, flush=True)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=TIMEOUT)
    return Dist(rank, world, local_rank), device_name


def restart_hazard(environ: Mapping[str, str] = os.environ) -> str | None:
    """A warning for a torchrun job that may restart its workers (--max-restarts) while it
    shares its rendezvous store with them (the default since torch 2.5): the store keeps what
    the killed workers published, and a restarted worker can read its predecessor's address
    and fail to connect (seen here with gloo on torch 2.14: the restart failed in
    init_process_group; the same symptom with NCCL is pytorch/pytorch#167288). torch's own
    switch avoids it. None when it does not apply."""
    shared = environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    if not shared or int(environ.get("TORCHELASTIC_MAX_RESTARTS", "0")) < 1:
        return None
    return (
        "torchrun --max-restarts with its rendezvous store shared with the workers: a restart can "
        "fail to connect (docs/SCALING.md, Restarts); export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 before torchrun"
    )


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_sum(values: list[float], device: torch.device, d: Dist) -> list[float]:
    """Sum each value over all processes (float64, so counts stay exact)."""
    if not d.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def sum_tensor(t: torch.Tensor, device: torch.device, d: Dist) -> torch.Tensor:
    """The element-wise sum of `t` over all processes (reduced on `device`: NCCL needs CUDA)."""
    if not d.enabled:
        return t
    on = t.to(device)
    dist.all_reduce(on, op=dist.ReduceOp.SUM)
    return on.to(t.device)


def broadcast_tensor(t: torch.Tensor | None, shape: tuple[int, ...], device: torch.device, d: Dist) -> torch.Tensor:
    """The main process's float32 tensor `t` (of `shape`) on every process."""
    if not d.enabled:
        assert t is not None
        return t
    on = t.to(device, torch.float32) if d.main and t is not None else torch.empty(shape, device=device)
    dist.broadcast(on, src=0)
    return on.cpu()


def same_everywhere(values: list[float], device: torch.device, d: Dist) -> bool:
    """Whether every process holds the same `values` (one all-reduce: the maximum of each
    value and of its negative, the minimum, must meet)."""
    if not d.enabled:
        return True
    t = torch.tensor(values + [-v for v in values], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    highest, lowest = t[: len(values)], -t[len(values) :]
    return bool(torch.equal(highest, lowest))


def broadcast_object(obj: Any, device: torch.device, d: Dist) -> Any:
    """The main process's picklable `obj` on every process (torch.distributed's
    broadcast_object_list; NCCL moves it through `device`)."""
    if not d.enabled:
        return obj
    box = [obj if d.main else None]
    dist.broadcast_object_list(box, src=0, device=device if device.type == "cuda" else None)
    return box[0]


def any_flag(flag: bool, device: torch.device, d: Dist) -> bool:
    """True on every process if it is true on any (e.g. a stop signal reached one of them)."""
    if not d.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()


def check_batch(global_batch: int, d: Dist) -> int:
    """The per-process batch: --batch-size is the global batch (the paper's 128), split."""
    if global_batch % d.world:
        raise UserError(f"--batch-size {global_batch} does not divide over {d.world} processes")
    return global_batch // d.world
