"""The three training stages: one LightningModule base; a stage sets only which data it reads (`data_mode`)."""

from tuna.stages.base import TunaModule


class SFTModule(TunaModule):
    """Stage 0: supervised fine-tuning (MLE on the gold or top-ranked response; no ranking term)."""

    data_mode = "sft"


class ProbRankModule(TunaModule):
    """Stage 1, probabilistic ranking: candidates ranked by a teacher's log-likelihood (paper LR 1e-5)."""

    data_mode = "rank"


class ContextRankModule(TunaModule):
    """Stage 2, contextual ranking: the student's own samples ranked by an LLM judge (paper LR 1e-6)."""

    data_mode = "rank"


STAGES = {"sft": SFTModule, "prob-rank": ProbRankModule, "context-rank": ContextRankModule}

__all__ = ["STAGES", "ContextRankModule", "ProbRankModule", "SFTModule", "TunaModule"]
