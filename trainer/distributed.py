"""Process-group setup for one process (`streamcap train`) or many (`torchrun ... -m streamcap.trainer`).

    dist_info = setup("auto")        # reads torchrun's RANK / WORLD_SIZE / LOCAL_RANK
    ...
    teardown(dist_info)

Under torchrun the group is initialised even for one process (nccl on GPUs, gloo on CPU), so
`--nproc-per-node 1` runs the same code as eight; a plain process runs without a group.
"""

from __future__ import annotations

import datetime
import os
import signal
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from streamcap.common.lifetime import die_with_parent

# Ranks wait for each other at every step; the first shard of a brand-new pipeline may take a
# while to land, so the collectives wait longer than torch's default before giving up.
COLLECTIVE_TIMEOUT = datetime.timedelta(hours=2)


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    enabled: bool  # a process group exists
    # Small control messages (stop flag, metrics, checkpoint state) go over gloo on CPU, so
    # asking "did any rank get SIGTERM?" every step never waits for the GPU to drain.
    control: Any = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device: str) -> DistInfo:
    """Pick the device and, under torchrun, join the process group."""
    under_torchrun = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    rank = int(os.environ.get("RANK", 0)) if under_torchrun else 0
    world = int(os.environ.get("WORLD_SIZE", 1)) if under_torchrun else 1
    local_rank = int(os.environ.get("LOCAL_RANK", 0)) if under_torchrun else 0
    if under_torchrun:
        # A rank whose launcher died stops (SIGTERM: checkpoint and exit) instead of training on.
        # Not for a plain `streamcap train`, whose parent is a shell that may go away by design.
        die_with_parent(signal.SIGTERM)
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if under_torchrun and not dist.is_initialized():
        backend = "nccl" if use_cuda else "gloo"
        kwargs: dict[str, Any] = {"backend": backend, "timeout": COLLECTIVE_TIMEOUT}
        if use_cuda:
            kwargs["device_id"] = dev
        dist.init_process_group(**kwargs)
    control = None
    if under_torchrun:
        control = dist.new_group(backend="gloo", timeout=COLLECTIVE_TIMEOUT) if use_cuda else dist.group.WORLD
    return DistInfo(
        rank=rank, world_size=world, local_rank=local_rank, device=dev, enabled=under_torchrun, control=control
    )


def teardown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def any_rank(info: DistInfo, flag: bool) -> bool:
    """True on every rank when `flag` is true on at least one (e.g. a SIGTERM seen by one)."""
    if not info.enabled or info.world_size == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0])
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=info.control)
    return bool(t.item() > 0)


def any_rank_each(info: DistInfo, flags: list[bool]) -> list[bool]:
    """`any_rank` of several flags in one all-reduce."""
    if not info.enabled or info.world_size == 1:
        return list(flags)
    t = torch.tensor([1.0 if f else 0.0 for f in flags])
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=info.control)
    return [bool(v > 0) for v in t.tolist()]


def mean_over_ranks(info: DistInfo, values: list[float]) -> list[float]:
    if not info.enabled or info.world_size == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.SUM, group=info.control)
    return (t / info.world_size).tolist()


def broadcast(info: DistInfo, obj: Any) -> Any:
    """Rank 0's `obj` on every rank."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, group=info.control)
    return box[0]


def gather(info: DistInfo, obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order, on every rank."""
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj, group=info.control)
    return out
