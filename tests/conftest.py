"""Shared fixtures. Real data comes from ../shared/data (or $TUNA_SHARED_DATA); it is never copied here."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TUNA_PROGRESS", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# `make test` runs 2 workers on 2 cores: one thread each for torch and llama.cpp (in the processes they start too),
# or the workers' thread pools contend (llama.cpp's threads spin) and the run takes longer than with one worker
TEST_THREADS = 1 if os.environ.get("PYTEST_XDIST_WORKER") else 2
if TEST_THREADS == 1:
    os.environ.setdefault("OMP_NUM_THREADS", "1")

# The files that take longest (minutes, measured on 2 cores) go first, so that the workers (--dist loadfile: a file
# on one worker) finish together instead of one waiting on the last long file.
LONGEST_FIRST = ("test_launch.py", "test_pipeline.py", "test_reliability.py", "test_cli.py", "test_train.py",
                 "test_feedback_server.py", "test_verifiable.py", "test_objective_training.py", "test_attention.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONGEST_FIRST)))  # stable: file order kept otherwise

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("TUNA_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.exists():  # a failure, not a skip: most of the suite reads real data
        pytest.fail(f"real data not found at {SHARED_DATA} (set TUNA_SHARED_DATA to the data folder)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def smol_dir() -> str:
    """The embedded SmolLM2-135M-Instruct, converted once to a cached HF folder (~20 s the first time)."""
    from tuna.models import resolve

    return resolve("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def smol_tokenizer(smol_dir):
    from tuna.models import load_tokenizer

    return load_tokenizer(smol_dir)


@pytest.fixture()
def tiny_model(smol_tokenizer):
    from tuna.models import tiny_model

    return tiny_model(smol_tokenizer, seed=0)


def write_vicuna_ranked(shared_data: Path, path: Path, *, questions: int, answers: int) -> Path:
    """The first real Vicuna questions, each with its first real answers (different models), in file order as a
    ranking (a stand-in ranking for mechanics tests; `tuna score`/`tuna judge` make real ones)."""
    from tuna.importers import import_vicuna_answers
    from tuna.records import Ranking, write_records

    recs = import_vicuna_answers(shared_data / "vicuna_qa/old_eval_answers.jsonl.gz", shared_data / "vicuna_qa/question.jsonl")
    out = []
    for r in recs[:questions]:
        r.candidates = r.candidates[:answers]
        for k, c in enumerate(r.candidates):
            c.score = -float(k)
        r.ranking = Ranking(by="import", method="file order")
        out.append(r)
    write_records(path, out)
    return path


@pytest.fixture(scope="session")
def vicuna_ranked(shared_data, tmp_path_factory) -> Path:
    """16 real Vicuna questions, each with 4 real answers, in file order as a ranking."""
    return write_vicuna_ranked(shared_data, tmp_path_factory.mktemp("data") / "vicuna_ranked.jsonl", questions=16, answers=4)
