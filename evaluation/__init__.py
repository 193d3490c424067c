"""Benchmarks for the Tuna reimplementation: Super-NaturalInstructions, LMentry and Vicuna QA, plus `tuna report`.

See docs/evaluation.md. Modules import torch/transformers lazily; the metric and statistics code needs only
rouge_score, num2words and numpy."""
