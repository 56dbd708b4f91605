"""Training across processes with PyTorch's DistributedDataParallel, launched by ``torchrun``.

``torchrun`` starts one process per rank and tells each, through the environment (RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), who it is and where to meet. Every rank
holds the whole dataset in memory, walks the same seeded permutation each epoch and takes its
own slice of every global batch; DDP averages the gradients, so each step is the step a single
process would take on the whole batch.

The trainer sees the processes as data, a ``Ranks``: a plain ``Ranks()`` is a world of one
(the process training alone), ``DistributedRanks`` the world torchrun started. Both answer the
same methods, so training reads the same either way.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from .defaults import DIST_BACKENDS as BACKENDS
from .defaults import DIST_TIMEOUT as DEFAULT_TIMEOUT
from .defaults import DIST_TIMEOUT_RANGE
from .errors import ConfigError, MnistCnnError

STREAM_STRIDE = 1_000_003  # rank r's random stream is seeded with seed + STREAM_STRIDE * (r + 1)


class Ranks:
    """The training processes, seen from one of them. This base is a world of one (rank 0 of 1):
    its shard of anything is all of it, sums and gathers are identities, barriers are no-ops."""

    rank = 0
    world_size = 1
    local_rank = 0
    backend = "none"

    @property
    def main(self) -> bool:
        """This process writes the run and logs."""
        return self.rank == 0

    def shard(self, rows: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous slice of a global batch: all of it."""
        return rows

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sums of ``values`` over all ranks."""
        return list(values)

    def gather(self, obj: Any) -> list:
        """Every rank's ``obj``, in rank order (on every rank)."""
        return [obj]

    def barrier(self) -> None:
        """Wait until every rank is here."""

    def on_main(self, action: Callable, *args, **kwargs):
        """``action(*args, **kwargs)`` in the process that writes the run; its result for every
        rank. Alone, that is this process, and its errors are raised as they are."""
        return action(*args, **kwargs)

    def pool(self, accuracy: float, loss: float, count: int) -> tuple[float, float]:
        """A split's accuracy and mean loss over every rank's rows, from this rank's over its
        ``count`` rows."""
        return accuracy, loss

    def batch_loss(self, loss: Callable[..., torch.Tensor], size: int) -> torch.Tensor:
        """The loss to step on for this rank's share of a global batch of ``size`` rows, from
        ``loss(reduction=...)``, the loss of those rows: alone, their mean."""
        return loss(reduction="mean")

    def seed_streams(self, seed: int) -> None:
        """Give each rank its own random stream (dropout, augmentation) from ``seed``. Alone,
        the stream that initialized the model goes on."""

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module that takes the training steps, sharing ``model``'s weights."""
        return model

    @contextlib.contextmanager
    def local_first(self) -> Iterator[None]:
        """Local rank 0 runs the block first, the others once it is done (they wait at a barrier):
        one process per machine finds or downloads the data."""
        if self.local_rank != 0:
            self.barrier()
        yield
        if self.local_rank == 0:
            self.barrier()


@dataclass(frozen=True)
class DistributedRanks(Ranks):
    """This process's place among the ranks torchrun started, joined in a process group."""

    # field(): required here, rather than defaulting to the base's world of one. ``device``
    # holds the collectives' tensors (NCCL's must be on this rank's GPU).
    rank: int = field()
    world_size: int = field()
    local_rank: int = field()
    backend: str = field()
    device: torch.device = field()

    def shard(self, rows: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous slice of a global batch (slices differ by at most one row)."""
        n = len(rows)
        start, stop = n * self.rank // self.world_size, n * (self.rank + 1) // self.world_size
        return rows[start:stop]

    def sum(self, values: list[float]) -> list[float]:
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.tolist()

    def gather(self, obj: Any) -> list:
        out: list = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        dist.barrier()

    def on_main(self, action: Callable, *args, **kwargs):
        """Under torchrun a failure on rank 0 (a taken --name, a full disk) stops every rank
        with its message, rather than leaving them waiting for rank 0."""
        result, error = None, None
        if self.main:
            try:
                result = action(*args, **kwargs)
            except (MnistCnnError, OSError) as e:
                error = str(e) if isinstance(e, MnistCnnError) else f"{e.filename}: {e.strerror}"
        result, error = self.gather((result, error))[0]  # rank 0's, for every rank
        if error:
            raise MnistCnnError(error)
        return result

    def pool(self, accuracy: float, loss: float, count: int) -> tuple[float, float]:
        right, loss_sum, total = self.sum(
            [round(accuracy * count), loss * count, float(count)]  # whole images right
        )
        return right / total, loss_sum / total

    def batch_loss(self, loss: Callable[..., torch.Tensor], size: int) -> torch.Tensor:
        """DDP averages the ranks' gradients: each rank's sum is scaled so that the average is
        the gradient of the global batch's mean."""
        return loss(reduction="sum") * (self.world_size / size)

    def seed_streams(self, seed: int) -> None:
        torch.manual_seed(seed + STREAM_STRIDE * (self.rank + 1))

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """DistributedDataParallel: averages the gradients across ranks."""
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)


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


def join(
    device: torch.device, batch_size: int, backend: str = "auto", timeout: float = DEFAULT_TIMEOUT
) -> tuple[Ranks, torch.device]:
    """This process's ranks and the device it trains on: the process group when torchrun
    started several processes, else a world of one on ``device``."""
    if not launched():
        return Ranks(), device
    check_batch(batch_size)
    return start(device, backend, timeout)


def start(
    device: torch.device, backend: str = "auto", timeout: float = DEFAULT_TIMEOUT
) -> tuple[DistributedRanks, torch.device]:
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
    return DistributedRanks(rank, size, local, backend, device), device


def stop(together: bool = False) -> None:
    """Leave the process group. ``together`` (a run that ended well on every rank): first wait
    until every rank is here, so that none closes its connections while another still writes
    the run or finishes a collective (gloo aborts a process whose peer hangs up mid-operation)."""
    if dist.is_initialized():
        if together:
            dist.barrier()
        dist.destroy_process_group()
