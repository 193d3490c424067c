"""``tuna pipeline`` and ``tuna sweep``: their config dataclasses are the commands."""

from tuna_recipes.pipeline.config import PipelineConfig
from tuna_recipes.pipeline.run import run_pipeline
from tuna_recipes.pipeline.sweep import SweepConfig, run_sweep

COMMANDS = {"pipeline": PipelineConfig, "sweep": SweepConfig}
RUNNERS = {PipelineConfig: run_pipeline, SweepConfig: run_sweep}
