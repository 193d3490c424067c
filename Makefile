# The two quick-start commands: `make demo` (the whole Tuna pipeline on the embedded default) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test lint bench
setup:
	bash scripts/setup.sh

demo: setup
	$(VENV)/bin/tuna demo

test: setup
	$(PY) -m pytest -q --durations=15

lint: setup
	$(VENV)/bin/ruff check tuna tuna_recipes evaluation tests benchmarks

bench: setup
	$(PY) benchmarks/precision_and_sampler.py && $(PY) benchmarks/ranking_step.py && $(PY) benchmarks/sampling.py && $(PY) benchmarks/superni_metric.py && $(PY) benchmarks/judge.py
