"""tuna: instruction tuning with feedback from large language models (Li et al., EMNLP 2023 Findings)."""

__version__ = "0.1.0"
