"""The ranking metrics logged during training, as ``torchmetrics.Metric``s.

Every state is a sum (``dist_reduce_fx="sum"``), so torchmetrics adds them up over DDP ranks: a validation
epoch's value is over every rank's batches, weighted by pairs (or candidates), not a mean of batch means. During
training each step logs its own batch's value (``Metric.forward``), as before.

Which pairs count: the pairs the objective compares (``LossOutput.pairs``: i ranked above j, both real, only
neighbouring tie groups under ``pairs: adjacent``), less the pairs the ranker scored equal (a tie group of
:func:`tuna.losses.tie_groups`, whatever ``loss.ties`` says: under ``ties: ordered`` the loss still orders them by
position, but there is no right order to count). So a regulariser row (``data.regularizer: copies``, one gold
response repeated with equal scores) adds no pair, instead of K(K-1)/2 pairs its identical copies always get
"wrong" (equal student scores are not ``s_i > s_j``).
"""

from __future__ import annotations

import torch
from torch import nn
from torchmetrics import Metric

from tuna.losses import LossOutput, preference_pairs, tie_groups


def counted_pairs(out: LossOutput, rank_scores: torch.Tensor | None) -> torch.Tensor:
    """[B, N, N] the pairs the pair accuracy counts: ``out.pairs`` without the pairs the ranker scored equal."""
    mask = out.rank_mask
    n = mask.shape[1]
    groups = tie_groups(rank_scores[:, :n] if rank_scores is not None else None, mask, "skip")
    apart = preference_pairs(mask, groups)
    return apart if out.pairs is None else out.pairs & apart


def ratio(part: torch.Tensor, whole: torch.Tensor) -> torch.Tensor:
    """``part / whole`` as a float, NaN where ``whole`` is 0 (no host sync: this runs every step)."""
    return torch.where(whole > 0, part.float() / whole.clamp_min(1).float(), torch.full_like(part, float("nan"), dtype=torch.float32))


class PairAccuracy(Metric):
    """Share of the given pairs (i ranked above j) that ``scores`` order the same way: ``s_i > s_j`` (a tie in
    ``scores`` is wrong). NaN while no pair was seen. Equals :func:`tuna.losses.pair_accuracy` on one batch."""

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("right", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("pairs", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, scores: torch.Tensor, pairs: torch.Tensor) -> None:
        """``scores [B, N]``, ``pairs [B, N, N]`` (bool, True where i is ranked above j and the pair counts)."""
        scores = scores.detach()
        self.right += ((scores[:, :, None] > scores[:, None, :]) & pairs).sum()
        self.pairs += pairs.sum()

    def compute(self) -> torch.Tensor:
        return ratio(self.right, self.pairs)


class TieShare(Metric):
    """Share of the pairs of real candidates that the ranker scored equal (one tie group). NaN while none was seen."""

    full_state_update = False
    is_differentiable = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("tied", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("pairs", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, rank_scores: torch.Tensor, candidate_mask: torch.Tensor) -> None:
        """``rank_scores [B, N]`` the ranker's scores (NaN: unknown, tied with nothing), ``candidate_mask [B, N]``."""
        groups = tie_groups(rank_scores, candidate_mask, "skip")
        real = torch.triu(candidate_mask[:, :, None] & candidate_mask[:, None, :], diagonal=1)
        self.tied += (real & (groups[:, :, None] == groups[:, None, :])).sum()
        self.pairs += real.sum()

    def compute(self) -> torch.Tensor:
        return ratio(self.tied, self.pairs)


class RankMeans(Metric):
    """The mean of ``values [B, N]`` at each rank position k over the real candidates (``mask [B, N]``).

    ``compute()`` returns one mean per position seen, ``[K]``: candidates are left-aligned, so the positions seen
    are 0..K-1 (torchmetrics squeezes ``[1]`` to a scalar: ``.reshape(-1)`` it). The states hold ``max_ranks`` positions (a fixed size, so that ranks can sum them)."""

    full_state_update = False
    is_differentiable = False

    def __init__(self, max_ranks: int = 256, **kwargs) -> None:
        super().__init__(**kwargs)
        self.max_ranks = max_ranks
        self.add_state("total", torch.zeros(max_ranks, dtype=torch.float32), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros(max_ranks, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, values: torch.Tensor, mask: torch.Tensor) -> None:
        n = values.shape[1]
        if n > self.max_ranks:
            raise ValueError(f"{n} ranked candidates per record: RankMeans holds at most max_ranks={self.max_ranks}")
        values = values.detach().float()
        # where(), not a product: a non-finite score in a padded slot must not leak into the sum
        self.total[:n] += torch.where(mask, values, torch.zeros_like(values)).sum(0)
        self.count[:n] += mask.sum(0)

    def compute(self) -> torch.Tensor:
        seen = int((self.count > 0).sum())
        return self.total[:seen] / self.count[:seen]


class ObjectiveMetrics(nn.Module):
    """What every objective logs alike, for one split: ``pair_acc`` (share of the counted pairs, see
    :func:`counted_pairs`, that the student's length-normalised log-likelihood orders like the ranking),
    ``score_rank{k}`` (its mean at rank k), ``tie_share`` (share of candidate pairs the ranker scored equal), and
    for objectives with their own reward (DPO, IPO) ``reward_acc`` and ``reward_rank{k}``."""

    def __init__(self) -> None:
        super().__init__()
        self.pair_acc = PairAccuracy()
        self.reward_acc = PairAccuracy()
        self.tie_share = TieShare()
        self.score_rank = RankMeans()
        self.reward_rank = RankMeans()
