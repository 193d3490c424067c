"""The training metrics (tuna.metrics) against the pure function, a per-pair loop, accumulation and a real
2-process DDP synchronisation."""

from __future__ import annotations

import math
import os
import socket

import pytest
import torch

from tuna.losses import LossConfig, objective_loss, pair_accuracy, preference_pairs, tie_groups
from tuna.metrics import PairAccuracy, RankMeans, TieShare, counted_pairs


def random_batch(seed: int, b: int = 5, n: int = 4) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Student scores with some exact ties, left-aligned candidate masks (1..n real), ranker scores best-first with
    some ties and some unknown (NaN) scores."""
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(b, n, generator=g).round(decimals=1)  # rounding makes equal student scores likely
    counts = torch.randint(1, n + 1, (b,), generator=g)
    counts[0] = n
    mask = torch.arange(n)[None, :] < counts[:, None]
    rank = -torch.randint(0, 3, (b, n), generator=g).float().cumsum(1)  # non-increasing: neighbours tie often
    rank[torch.rand(b, n, generator=g) < 0.1] = float("nan")
    rank[~mask] = float("nan")
    return scores, mask, rank


def loop_pair_accuracy(scores, pairs) -> tuple[int, int]:
    right = total = 0
    b, n = scores.shape
    for r in range(b):
        for i in range(n):
            for j in range(n):
                if pairs[r, i, j]:
                    total += 1
                    right += int(scores[r, i].item() > scores[r, j].item())
    return right, total


def loop_counted_pairs(mask, rank) -> torch.Tensor:
    """Independent of tie_groups: i above j, both real, i < j, and not a run of equal known ranker scores."""
    b, n = mask.shape
    out = torch.zeros(b, n, n, dtype=torch.bool)
    for r in range(b):
        for i in range(n):
            for j in range(i + 1, n):
                if mask[r, i] and mask[r, j]:
                    run = all(not math.isnan(rank[r, k].item()) and rank[r, k].item() == rank[r, k + 1].item()
                              for k in range(i, j))
                    out[r, i, j] = not run
    return out


def test_pair_accuracy_metric_equals_the_pure_function_and_a_loop():
    checked = 0
    for seed in range(20):
        scores, mask, rank = random_batch(seed)
        pairs = preference_pairs(mask, tie_groups(rank, mask, "skip"))
        assert torch.equal(pairs, loop_counted_pairs(mask, rank))
        if not pairs.any():
            continue
        metric = PairAccuracy()
        metric.update(scores, pairs)
        got = metric.compute()
        assert got.item() == pair_accuracy(scores, mask, pairs).item()
        right, total = loop_pair_accuracy(scores, pairs)
        assert got.item() == pytest.approx(right / total, rel=1e-7)
        checked += 1
    assert checked >= 18


def test_every_metric_accumulates_like_one_update_on_the_concatenation():
    batches = [random_batch(seed, b=3) for seed in range(4)]
    acc, tie, means = PairAccuracy(), TieShare(), RankMeans()
    for scores, mask, rank in batches:
        acc.update(scores, preference_pairs(mask, tie_groups(rank, mask, "skip")))
        tie.update(rank, mask)
        means.update(scores, mask)
    scores, mask, rank = (torch.cat(x) for x in zip(*batches))
    pairs = preference_pairs(mask, tie_groups(rank, mask, "skip"))
    one_acc, one_tie, one_means = PairAccuracy(), TieShare(), RankMeans()
    one_acc.update(scores, pairs)
    one_tie.update(rank, mask)
    one_means.update(scores, mask)
    assert acc.compute().item() == one_acc.compute().item()
    assert tie.compute().item() == one_tie.compute().item()
    torch.testing.assert_close(means.compute(), one_means.compute())
    # and against loops over the concatenation
    right, total = loop_pair_accuracy(scores, pairs)
    assert acc.compute().item() == pytest.approx(right / total, rel=1e-7)
    expected = [scores[mask[:, k], k].double().mean().item() for k in range(scores.shape[1])]
    assert means.compute().tolist() == pytest.approx(expected, rel=1e-6)
    real = torch.triu(mask[:, :, None] & mask[:, None, :], diagonal=1)
    assert tie.compute().item() == pytest.approx(1 - pairs.sum().item() / real.sum().item(), rel=1e-7)


def test_forward_returns_the_batch_value_and_keeps_the_running_one():
    (s1, m1, _), (s2, m2, _) = random_batch(1), random_batch(2)
    metric = RankMeans()
    first = metric(s1, m1)
    second = metric(s2, m2)
    torch.testing.assert_close(first, torch.stack([s1[m1[:, k], k].mean() for k in range(4)]))
    torch.testing.assert_close(second, torch.stack([s2[m2[:, k], k].mean() for k in range(int(m2.sum(1).max()))]))
    both = torch.cat([s1, s2]), torch.cat([m1, m2])
    torch.testing.assert_close(metric.compute(), torch.stack([both[0][both[1][:, k], k].mean() for k in range(4)]))


def test_no_pair_is_nan_and_too_many_positions_is_one_line():
    metric = PairAccuracy()
    metric.update(torch.zeros(2, 3), torch.zeros(2, 3, 3, dtype=torch.bool))
    assert math.isnan(metric.compute().item())
    with pytest.raises(ValueError, match="max_ranks=2"):
        RankMeans(max_ranks=2).update(torch.zeros(1, 3), torch.ones(1, 3, dtype=torch.bool))


@pytest.mark.parametrize("ties", ["ordered", "skip"])
def test_regulariser_copies_and_padding_never_count(ties):
    """A ``data.regularizer: copies`` row (one gold response 4 times, equal scores) adds no pair under either
    ``loss.ties``; the padded slots of a shorter record add none either."""
    scores = torch.tensor([[-1.0, -1.0, -1.0, -1.0], [-0.5, -0.9, -0.7, 0.0], [-2.0, -1.0, 0.0, 0.0]])
    mask = torch.tensor([[True] * 4, [True] * 4, [True, True, False, False]])
    rank = torch.tensor([[0.0] * 4, [3.0, 2.0, 2.0, 1.0], [1.0, 0.0, float("nan"), float("nan")]])
    token_logps = scores[:, :, None].expand(3, 4, 2).contiguous()  # 2 tokens each: the length-normalised score is s
    out = objective_loss(token_logps, torch.ones(3, 4, 2, dtype=torch.bool), mask, None, LossConfig(ties=ties), rank_scores=rank)
    torch.testing.assert_close(out.scores, scores)
    pairs = counted_pairs(out, rank)
    assert pairs[0].sum() == 0  # the regulariser row
    assert pairs[1].sum() == 5 and not pairs[1, 1, 2]  # the tied pair (1, 2) is out
    assert pairs[2].sum() == 1 and pairs[2, 0, 1]  # only the real pair
    metric = PairAccuracy()
    metric.update(out.scores, pairs)
    # record 1: (0,1) right, (0,2) right, (0,3) wrong, (1,3) wrong, (2,3) wrong; record 2: (0,1) wrong
    assert metric.compute().item() == pytest.approx(2 / 6)
    assert out.pairs[0].sum() == (6 if ties == "ordered" else 0)  # the loss's own pairs are unchanged


def _ddp_worker(rank: int, world: int, port: int, results) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        acc, tie, means = PairAccuracy(), TieShare(), RankMeans()
        for seed in range(rank, 6, world):  # rank 0: batches 0, 2, 4; rank 1: 1, 3, 5
            scores, mask, rank_scores = random_batch(seed, b=3)
            acc(scores, preference_pairs(mask, tie_groups(rank_scores, mask, "skip")))
            tie(rank_scores, mask)
            means(scores, mask)
        results[rank] = (acc.compute().item(), tie.compute().item(), means.compute().tolist())
    finally:
        dist.destroy_process_group()


def test_two_ddp_ranks_compute_the_value_of_all_batches():
    """Real processes, gloo on CPU: each rank updates with half the batches; compute() gives every rank the value
    of all six, and it differs from what either rank saw alone."""
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    results = mp.Manager().dict()
    mp.spawn(_ddp_worker, args=(2, port, results), nprocs=2, join=True)
    batches = [random_batch(seed, b=3) for seed in range(6)]
    scores, mask, rank_scores = (torch.cat(x) for x in zip(*batches))
    acc, tie, means = PairAccuracy(), TieShare(), RankMeans()
    acc.update(scores, preference_pairs(mask, tie_groups(rank_scores, mask, "skip")))
    tie.update(rank_scores, mask)
    means.update(scores, mask)
    alone = PairAccuracy()
    for seed in (0, 2, 4):
        s, m, r = batches[seed]
        alone.update(s, preference_pairs(m, tie_groups(r, m, "skip")))
    assert sorted(results.keys()) == [0, 1]
    for rank in (0, 1):
        got_acc, got_tie, got_means = results[rank]
        assert got_acc == pytest.approx(acc.compute().item(), rel=1e-7)
        assert got_tie == pytest.approx(tie.compute().item(), rel=1e-7)
        assert got_means == pytest.approx(means.compute().tolist(), rel=1e-6)
    assert alone.compute().item() != pytest.approx(acc.compute().item())
