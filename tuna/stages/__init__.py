"""The three training stages: one LightningModule base, three sets of defaults."""

from tuna.stages.base import TunaModule


class SFTModule(TunaModule):
    """Stage 0: supervised fine-tuning (MLE on the gold or top-ranked response; no ranking term)."""

    data_mode = "sft"
    default_lr = 2e-5


class ProbRankModule(TunaModule):
    """Stage 1, probabilistic ranking: candidates ranked by a teacher's log-likelihood (paper LR 1e-5)."""

    data_mode = "rank"
    default_lr = 1e-5


class ContextRankModule(TunaModule):
    """Stage 2, contextual ranking: the student's own samples ranked by an LLM judge (paper LR 1e-6)."""

    data_mode = "rank"
    default_lr = 1e-6


STAGES = {"sft": SFTModule, "prob-rank": ProbRankModule, "context-rank": ContextRankModule}

__all__ = ["STAGES", "ContextRankModule", "ProbRankModule", "SFTModule", "TunaModule"]
