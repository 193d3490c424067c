# The two quick-start commands: `make demo` (the whole Tuna pipeline on the embedded default) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test lint bench
setup:
	bash scripts/setup.sh

demo: setup
	$(VENV)/bin/tuna demo

# 2 workers, each running one test file at a time (TEST_WORKERS=0: one process; each worker needs about 3 GiB)
TEST_WORKERS ?= 2
test: setup
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=15

lint: setup
	$(VENV)/bin/ruff check tuna tuna_recipes evaluation tests benchmarks

bench: setup
	$(PY) benchmarks/precision_and_sampler.py && $(PY) benchmarks/ranking_step.py && $(PY) benchmarks/sampling.py && $(PY) benchmarks/superni_metric.py && $(PY) benchmarks/judge.py
