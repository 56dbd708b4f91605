"""Training across processes with PyTorch's DistributedDataParallel, launched by ``torchrun``.

``torchrun`` starts one process per rank and tells each, through the environment (RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), who it is and where to meet. Every rank
holds the whole dataset in memory, walks the same seeded permutation each epoch and takes its
own slice of every global batch; DDP averages the gradients, so each step is the step a single
process would take on the whole batch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from .defaults import DIST_BACKENDS as BACKENDS
from .defaults import DIST_TIMEOUT as DEFAULT_TIMEOUT
from .defaults import DIST_TIMEOUT_RANGE
from .errors import ConfigError, MnistCnnError


@dataclass(frozen=True)
class Ranks:
    """This process's place among the training processes."""

    rank: int
    world_size: int
    local_rank: int
    backend: str

    @property
    def main(self) -> bool:
        return self.rank == 0

    def shard(self, rows: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous slice of a global batch (slices differ by at most one row)."""
        n = len(rows)
        start, stop = n * self.rank // self.world_size, n * (self.rank + 1) // self.world_size
        return rows[start:stop]


def launched() -> bool:
    """True when torchrun (or any launcher setting WORLD_SIZE > 1) started this process."""
    return world_size() > 1


def _env_int(name: str, default: int | None = None) -> int:
    value = os.environ.get(name)
    if value is None and default is not None:
        return default
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise MnistCnnError(
            f"launched for distributed training, but {name}={value!r}: start it with torchrun"
        ) from None


def world_size() -> int:
    return _env_int("WORLD_SIZE", 1)


def check_batch(batch_size: int) -> None:
    """The global batch must split evenly across the ranks."""
    n = world_size()
    if batch_size % n:
        raise ConfigError(
            "batch_size",
            f"{batch_size} does not split across {n} processes: use a multiple of "
            f"{n} (the batch size is the global one, shared by all processes)",
        )


def start(
    device: torch.device, backend: str = "auto", timeout: float = DEFAULT_TIMEOUT
) -> tuple[Ranks, torch.device]:
    """Join the process group torchrun set up; returns this rank and the device it uses."""
    rank = _env_int("RANK")
    size = world_size()
    local = _env_int("LOCAL_RANK", rank)
    if backend not in BACKENDS:
        raise ConfigError("dist_backend", f"must be one of {', '.join(BACKENDS)}")
    if backend == "auto":
        backend = "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl":
        if device.type != "cuda":
            raise ConfigError(
                "dist_backend",
                f"nccl needs CUDA devices, and this run is on {device.type}: "
                "use gloo (the default off CUDA)",
            )
        if not dist.is_nccl_available():
            raise ConfigError("dist_backend", "nccl: this PyTorch build has no NCCL")
    if device.type == "cuda":
        if local >= torch.cuda.device_count():
            raise MnistCnnError(
                f"local rank {local} has no GPU: this machine has {torch.cuda.device_count()}; "
                "start at most that many processes per node (--nproc_per_node)"
            )
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise MnistCnnError(f"distributed training runs on cpu or cuda, not {device.type}")
    if timeout not in DIST_TIMEOUT_RANGE:
        raise ConfigError("dist_timeout", DIST_TIMEOUT_RANGE.refusal)
    dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout))
    return Ranks(rank, size, local, backend), device


def stop() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_sum(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sums of ``values`` over all ranks."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def barrier() -> None:
    dist.barrier()


def gather(obj) -> list:
    """Every rank's ``obj``, in rank order (on every rank)."""
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
