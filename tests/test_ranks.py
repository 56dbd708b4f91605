"""Ranks: training's view of its processes. Alone, a world of one whose collectives are identities;
under torchrun, the process group's. Both answer the same methods with the same meaning."""

from __future__ import annotations

import inspect
import math
from functools import partial

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from mnist_cnn.distributed import DistributedRanks, Ranks
from mnist_cnn.errors import MnistCnnError
from mnist_cnn.training import PAIR_WEIGHT, batch_loss

CPU = torch.device("cpu")


def methods(cls) -> dict[str, inspect.Signature]:
    return {
        name: inspect.signature(getattr(cls, name))
        for name in dir(cls)
        if not name.startswith("_") and callable(getattr(cls, name))
    }


def test_alone_a_process_is_rank_0_of_a_world_of_one():
    ranks = Ranks()
    assert (ranks.rank, ranks.world_size, ranks.local_rank, ranks.main) == (0, 1, 0, True)
    rows = torch.arange(7)
    assert ranks.shard(rows) is rows
    assert ranks.sum([1.5, -2.0]) == [1.5, -2.0]
    assert ranks.gather({"a": 1}) == [{"a": 1}]
    assert ranks.pool(0.25, 1.125, 8) == (0.25, 1.125)
    ranks.barrier()
    with ranks.local_first():
        pass
    model = torch.nn.Linear(2, 2)
    assert ranks.wrap(model) is model


def test_alone_the_random_stream_goes_on_unseeded():
    """One process keeps the stream that initialized the model: seed_streams leaves it alone."""
    torch.manual_seed(3)
    expected = torch.rand(4)
    torch.manual_seed(3)
    Ranks().seed_streams(777)
    assert torch.equal(torch.rand(4), expected)


def test_alone_the_writer_is_this_process_and_its_errors_pass_through():
    ranks = Ranks()
    assert ranks.on_main(lambda a, b: a + b, 2, b=3) == 5
    with pytest.raises(FileNotFoundError):  # as it is, not reworded as a distributed failure
        ranks.on_main(open, "/nonexistent/file")


def test_alone_the_batch_loss_is_the_mean():
    logits, y = torch.randn(10, 4, generator=torch.Generator().manual_seed(0)), torch.arange(10) % 4
    loss = Ranks().batch_loss(partial(F.cross_entropy, logits, y, label_smoothing=0.1), 10)
    assert torch.equal(loss, F.cross_entropy(logits, y, label_smoothing=0.1))


def test_both_kinds_of_ranks_answer_the_same_methods():
    """The same names and signatures; and the distributed ranks define each collective
    themselves, so none falls back to a world of one's identity by inheritance."""
    alone, distributed = methods(Ranks), methods(DistributedRanks)
    assert alone == distributed
    built_on_others = {"local_first"}  # barrier() decides what it does
    own = set(vars(DistributedRanks))
    assert set(alone) - built_on_others <= own, set(alone) - built_on_others - own


@pytest.mark.parametrize("world", [2, 3, 4])
@pytest.mark.parametrize("n", [0, 1, 7, 100])
def test_the_ranks_shards_partition_a_batch(world, n):
    rows = torch.arange(n)
    shards = [DistributedRanks(r, world, r, "gloo", CPU).shard(rows) for r in range(world)]
    assert torch.equal(torch.cat(shards), rows)
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


@pytest.mark.parametrize("world", [2, 4])
def test_the_ranks_gradients_average_to_the_whole_batchs(world):
    """What DDP does with each rank's batch_loss (averages the gradients) gives the gradient of
    the whole batch's mean loss, as one process takes it."""
    logits = torch.randn(12, 5, generator=torch.Generator().manual_seed(1))
    y = torch.arange(12) % 5

    def gradient(ranks, rows) -> torch.Tensor:
        x = logits[rows].clone().requires_grad_()
        ranks.batch_loss(partial(F.cross_entropy, x, y[rows], label_smoothing=0.1), 12).backward()
        assert x.grad is not None
        return x.grad

    whole = gradient(Ranks(), slice(None))
    each = []
    for r in range(world):
        ranks = DistributedRanks(r, world, r, "gloo", CPU)
        each.append(gradient(ranks, ranks.shard(torch.arange(12))) / world)  # DDP's average
    torch.testing.assert_close(torch.cat(each), whole)


def test_a_batch_without_pairs_is_scored_by_cross_entropy_alone():
    logits, y = torch.randn(10, 4, generator=torch.Generator().manual_seed(0)), torch.arange(10) % 4
    for reduction in ("mean", "sum"):
        assert torch.equal(
            batch_loss(logits, y, 0.1, reduction),
            F.cross_entropy(logits, y, label_smoothing=0.1, reduction=reduction),
        )


def test_touching_pairs_cost_their_distance_from_no_digit():
    """Pairs (the rows after the digits) are scored by their divergence from every class
    equally likely: a pair read as uniform costs nothing, one read as a sure digit costs
    PAIR_WEIGHT times its cross-entropy against uniform less log(classes). "sum" is the mean
    times the digits' count, as Ranks expects."""
    digits, y = torch.randn(6, 10, generator=torch.Generator().manual_seed(2)), torch.arange(6)
    alone = F.cross_entropy(digits, y, label_smoothing=0.1)
    unsure = torch.cat([digits, torch.zeros(3, 10)])
    torch.testing.assert_close(batch_loss(unsure, y, 0.1), alone)
    sure = torch.cat([digits, 8 * torch.eye(10)[:3]])
    against_uniform = -torch.log_softmax(8 * torch.eye(10)[0], dim=0).mean()
    torch.testing.assert_close(
        batch_loss(sure, y, 0.1), alone + PAIR_WEIGHT * (against_uniform - math.log(10))
    )
    torch.testing.assert_close(batch_loss(sure, y, 0.1, "sum"), 6 * batch_loss(sure, y, 0.1))


@pytest.mark.parametrize("world", [2, 3])
def test_with_pairs_the_ranks_gradients_still_average_to_the_whole_batchs(world):
    """Each rank adds pairs to its own shard, in proportion: DDP's average of their gradients
    is the gradient of the whole batch (all digits, then all pairs) as one process takes it."""
    logits = torch.randn(12 + 6, 10, generator=torch.Generator().manual_seed(3))
    y = torch.arange(12) % 10

    def gradient(ranks, digits, pairs) -> torch.Tensor:
        x = torch.cat([logits[digits], logits[12:][pairs]]).clone().requires_grad_()
        ranks.batch_loss(partial(batch_loss, x, y[digits], 0.1), 12).backward()
        assert x.grad is not None
        return x.grad

    whole = gradient(Ranks(), torch.arange(12), torch.arange(6))
    digit_grads, pair_grads = [], []
    for r in range(world):
        ranks = DistributedRanks(r, world, r, "gloo", CPU)
        digits, pairs = ranks.shard(torch.arange(12)), ranks.shard(torch.arange(6))
        g = gradient(ranks, digits, pairs) / world  # DDP's average
        digit_grads.append(g[: len(digits)])
        pair_grads.append(g[len(digits) :])
    torch.testing.assert_close(torch.cat(digit_grads + pair_grads), whole)


@pytest.fixture
def group_of_one(tmp_path):
    """A real gloo process group with one rank, joined in this process."""
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        yield DistributedRanks(0, 1, 0, "gloo", CPU)
    finally:
        dist.destroy_process_group()


def test_a_process_group_of_one_gives_what_a_process_alone_does(group_of_one):
    alone, group = Ranks(), group_of_one
    rows = torch.arange(9)
    assert torch.equal(group.shard(rows), alone.shard(rows))
    assert group.sum([1.5, -2.0, 3.0]) == alone.sum([1.5, -2.0, 3.0])
    assert group.gather({"a": [1, 2]}) == alone.gather({"a": [1, 2]})
    assert group.pool(0.75, 0.5, 8) == alone.pool(0.75, 0.5, 8)
    assert group.on_main(max, 3, 4) == alone.on_main(max, 3, 4)
    group.barrier()
    logits, y = torch.randn(6, 3, generator=torch.Generator().manual_seed(2)), torch.arange(6) % 3
    losses = partial(F.cross_entropy, logits, y)
    torch.testing.assert_close(group.batch_loss(losses, 6), alone.batch_loss(losses, 6))
    model = torch.nn.Linear(3, 2)
    wrapped = group.wrap(model)
    assert isinstance(wrapped, torch.nn.parallel.DistributedDataParallel)
    assert torch.equal(wrapped(logits), model(logits))


def test_a_failure_on_rank_0_reaches_every_rank_as_one_line(group_of_one):
    with pytest.raises(MnistCnnError, match="^/nonexistent/file: No such file or directory$"):
        group_of_one.on_main(open, "/nonexistent/file")
