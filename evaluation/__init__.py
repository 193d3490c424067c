"""Benchmarks for the Tuna reimplementation: Super-NaturalInstructions, LMentry and Vicuna QA, plus `tuna report`.

See docs/evaluation.md. Modules import torch/transformers lazily; the metric code needs only rouge_score and
num2words."""
