"""The objectives registry: an objective is one entry of :data:`OBJECTIVES`.

An entry names the objective's function (in :mod:`tuna.losses`), its own MLE term, the candidate fields it reads
from the data and whether ``loss.pairs`` selects its pairs. Everything else derives from the keys: the choices of
``loss.objective`` (:data:`tuna.config.Objective`, shown by ``--help``), its validation, the loss dispatch
(:func:`tuna.losses.objective_loss`), the fields training requires and the pipeline's reference step
(:func:`tuna.losses.required_candidate_fields`), the objective sweep (``experiments/ablations/objective.yaml``) and
the tests that run every objective.

Kept free of torch, like :mod:`tuna.config` which imports it (``tuna --help`` stays fast): functions are named
``"module:function"`` and imported when a loss is first computed (:meth:`ObjectiveSpec.function`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

MleTarget = Literal["all", "best", "gold"]


def no_fields(loss_cfg: Any) -> list[str]:
    """Reads nothing beyond the ranking."""
    return []


def reference_fields(loss_cfg: Any) -> list[str]:
    """The frozen reference model's summed log-probs of each candidate (made by ``tuna reference``)."""
    return ["ref_logprob"]


def pro_fields(loss_cfg: Any) -> list[str]:
    """PRO's dynamic temperature reads the ranker's scores."""
    return ["score"] if loss_cfg.pro_temperature == "dynamic" else []


@dataclass(frozen=True)
class ObjectiveSpec:
    """One objective: its function, its own MLE term (used where ``loss.mle_weight``/``mle_target`` are None) and
    what it reads from the data."""

    paper: str
    loss: str
    """``"module:function"``: ``f(x: tuna.losses.ObjectiveInputs, cfg: LossConfig) -> (term, rewards | None)``, the
    objective's term and, when it has them, its own per-candidate rewards ``[B, N]`` (logged like DPO's)."""
    mle_weight: float
    mle_target: MleTarget
    candidate_fields: Callable[[Any], list[str]] = no_fields
    """``f(loss_cfg)``: the candidate fields every training record must carry (``ref_logprob`` makes the pipeline
    score the reference model first)."""
    reads_pairs: bool = False
    """Whether ``loss.pairs`` (all | adjacent) selects the pairs it compares; otherwise every pair the ranking implies."""
    mle_loss: str | None = None
    """``"module:function"`` of its own MLE term, ``f(token_logps, token_mask, slots, n_candidates) -> (trained,
    logged)``; None: the token-mean NLL of ``tuna.losses.mle_loss``."""

    def function(self) -> Callable[..., Any]:
        """The objective's function (imported on first use)."""
        return resolve(self.loss)

    def mle_function(self) -> Callable[..., Any] | None:
        return resolve(self.mle_loss) if self.mle_loss else None


def resolve(ref: str) -> Callable[..., Any]:
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


OBJECTIVES: dict[str, ObjectiveSpec] = {
    # the released code: L = 1.0 · MLE(all candidates) + hinge (custom.py, `mle_weight * output.loss + loss`)
    "tuna": ObjectiveSpec("Li et al. 2023, Tuna", "tuna.losses:tuna_objective", 1.0, "all"),
    # RRHF train.sh `--rrhf_weight 1`: L = L_rank + L_ft, L_ft on the best-rewarded response
    "rrhf": ObjectiveSpec("Yuan et al. 2023, RRHF", "tuna.losses:rrhf_objective", 1.0, "best"),
    # PRO train_hh.sh `--sft_weight 0.05`, scaled by (N-1)² on the summed NLL (pro_sft_loss)
    "pro": ObjectiveSpec("Song et al. 2023, PRO", "tuna.losses:pro_objective", 0.05, "best", candidate_fields=pro_fields,
                         mle_loss="tuna.losses:pro_sft_loss"),
    "listmle": ObjectiveSpec("Xia et al. 2008, ListMLE", "tuna.losses:listmle_objective", 0.0, "best"),
    "dpo": ObjectiveSpec("Rafailov et al. 2023, DPO", "tuna.losses:dpo_objective", 0.0, "best",
                         candidate_fields=reference_fields, reads_pairs=True),
    "ipo": ObjectiveSpec("Azar et al. 2023, IPO", "tuna.losses:ipo_objective", 0.0, "best",
                         candidate_fields=reference_fields, reads_pairs=True),
    "simpo": ObjectiveSpec("Meng et al. 2024, SimPO", "tuna.losses:simpo_objective", 0.0, "best", reads_pairs=True),
    # LiPO-λ's loss has no SFT term (as DPO's)
    "lipo": ObjectiveSpec("Liu et al. 2024, LiPO-λ", "tuna.losses:lipo_objective", 0.0, "best",
                          candidate_fields=reference_fields),
}
