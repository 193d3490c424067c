"""``tuna pipeline`` and ``tuna sweep``: their config dataclasses are the commands; each runs here or as cluster jobs
(``launcher``: tuna_recipes.pipeline.launch)."""

from tuna_recipes.pipeline.config import PipelineConfig
from tuna_recipes.pipeline.launch import pipeline_command, sweep_command
from tuna_recipes.pipeline.sweep import SweepConfig

COMMANDS = {"pipeline": PipelineConfig, "sweep": SweepConfig}
RUNNERS = {PipelineConfig: pipeline_command, SweepConfig: sweep_command}
