"""The three training stages: one LightningModule (:class:`TunaModule`) and one table of what differs between them.

Each stage's defaults live in its :class:`StageSpec` and nowhere else; ``tuna train <stage>``, the pipeline and
sweeps read them from :data:`STAGES`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from tuna.config import LossConfig, OptimConfig, StageConfig, TrainConfig, TrainerConfig


@dataclass(frozen=True)
class StageSpec:
    """What makes a stage: the data it reads, whether it ranks, and the paper's learning rate and epochs."""

    name: str
    summary: str
    """One line for `tuna train <stage> --help`."""
    data_mode: Literal["sft", "rank"]
    """sft: one target response per record (the gold, or the top-ranked candidate); rank: ranked candidate sets."""
    lr: float
    max_epochs: int

    def loss(self, loss: LossConfig) -> LossConfig:
        """The loss this stage trains with: SFT keeps only the MLE term (over its one response per record)."""
        if self.data_mode == "sft":
            return replace(loss, objective="tuna", ties="ordered", rank_weight=0.0, mle_target="all")
        return loss

    def stage_config(self, **sections: object) -> StageConfig:
        """The stage's defaults as a pipeline section (``sections`` replace whole sections, e.g. ``data=...``)."""
        base = StageConfig(optim=OptimConfig(lr=self.lr), trainer=TrainerConfig(max_epochs=self.max_epochs))
        if self.data_mode == "sft":
            base.loss = LossConfig(rank_weight=0.0)
        return replace(base, **sections)  # type: ignore[arg-type]

    def train_config(self) -> TrainConfig:
        """The defaults of `tuna train <stage>`."""
        s = self.stage_config()
        return TrainConfig(model=s.model, data=s.data, loss=s.loss, optim=s.optim, trainer=s.trainer,
                           out_dir=f"runs/{self.name.replace('-', '_')}")


STAGES: dict[str, StageSpec] = {
    spec.name: spec
    for spec in (
        # Llama-X's Alpaca recipe, which the paper's README points to for SFT (docs/fidelity.md)
        StageSpec("sft", "Stage 0: supervised fine-tuning on gold (or top-ranked) responses.", "sft", lr=2e-5, max_epochs=3),
        # train_tuna.sh: LR $2 = 1e-5 in the README's probabilistic-ranking command, 1 epoch
        StageSpec("prob-rank", "Stage 1, probabilistic ranking (Tuna_p): learn a teacher's log-likelihood ranking.", "rank",
                  lr=1e-5, max_epochs=1),
        # train_tuna.sh with LR 1e-6 in the README's contextual-ranking command, 1 epoch
        StageSpec("context-rank", "Stage 2, contextual ranking (Tuna from Tuna_p, Tuna_c from SFT): learn an LLM judge's "
                  "ranking.", "rank", lr=1e-6, max_epochs=1),
    )
}


def stage_spec(name: str) -> StageSpec:
    from tuna.errors import TunaError

    if name not in STAGES:
        raise TunaError(f"unknown stage {name!r} ({' | '.join(STAGES)})", field="stage")
    return STAGES[name]


__all__ = ["STAGES", "StageSpec", "stage_spec"]
