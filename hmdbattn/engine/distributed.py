"""One process or many (torchrun): device choice, rank bookkeeping and gathering results."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from hmdbattn.errors import UserError


@dataclass
class Runtime:
    """Where this process runs and which rank it is (rank 0 alone logs and writes)."""

    device: torch.device
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(name: str | None = None) -> torch.device:
    """`name` (``cpu``, ``cuda:1``...), else GPU LOCAL_RANK when CUDA is present, else the CPU."""
    if name:
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def setup() -> Runtime:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1), else run alone.

    Each rank takes GPU LOCAL_RANK when CUDA is present (backend NCCL), else the CPU (gloo).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    device = pick_device()
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    return Runtime(device, rank, world_size)


def teardown() -> None:
    """Leave the process group, if any."""
    if dist.is_initialized():
        dist.destroy_process_group()


def gather(obj: Any, runtime: Runtime) -> list[Any]:
    """Every rank's `obj`, in rank order (just ``[obj]`` in a single process)."""
    if not runtime.distributed:
        return [obj]
    out: list[Any] = [None] * runtime.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast(obj: Any, runtime: Runtime) -> Any:
    """Rank 0's `obj` on every rank."""
    if not runtime.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def on_main(write: Callable[[], None], runtime: Runtime, what: str) -> None:
    """Run `write` (the run's files: rank 0 alone writes) on rank 0; if it fails, every rank stops.

    Rank 0's outcome goes to the others in one tiny broadcast right after. Without it they
    would go on to the next collective and wait there for the process-group timeout (30
    minutes by default) while rank 0 stops on its error (a full disk, a read-only folder).
    Rank 0 raises its own error; the others a UserError saying rank 0 could not `what`.
    """
    error: Exception | None = None
    if runtime.is_main:
        try:
            write()
        except Exception as exc:  # whatever stops rank 0 must stop the others too
            error = exc
    failed = broadcast(error is not None, runtime)
    if error is not None:
        raise error
    if failed:
        raise UserError(
            f"rank {runtime.rank}: stopped because rank 0 could not {what}: see rank 0's error"
        )


def mean_across(value: float, count: int, runtime: Runtime) -> float:
    """The count-weighted mean of a per-rank average."""
    pairs = gather((value * count, count), runtime)
    total = sum(c for _, c in pairs)
    return sum(v for v, _ in pairs) / max(1, total)


def sync_buffers(module: torch.nn.Module, runtime: Runtime) -> None:
    """Give every rank rank 0's buffers (BatchNorm statistics drift apart between ranks)."""
    if runtime.distributed:
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


def checksum(module: torch.nn.Module) -> float:
    """A cheap fingerprint of the parameters, to check that ranks hold the same model."""
    with torch.no_grad():
        return float(sum(p.double().sum().item() for p in module.parameters()))


@contextlib.contextmanager
def session() -> Iterator[Runtime]:
    """``with session() as runtime:``: `setup`, then `teardown` however the block ends."""
    runtime = setup()
    try:
        yield runtime
    finally:
        teardown()
