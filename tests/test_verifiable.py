"""Verifiable feedback: disjoint splits from real benchmark items, verifier scores, ranked sets, held-out pair accuracy."""

from __future__ import annotations

import json

import pytest
import torch

from evaluation.verifiable import (
    count_pairs,
    make_splits,
    model_pair_outcomes,
    rank_by_verifier,
    summarise_pairs,
    verifier_scores,
)
from tuna.records import Candidate, read_records


@pytest.fixture(scope="module")
def splits(shared_data):
    return make_splits(superni_data=shared_data / "superni/superni_test_slice.jsonl.gz",
                       lmentry_data=shared_data / "lmentry/lmentry_tasks.json.gz", seed=0)


def test_splits_are_disjoint_and_sized(splits, shared_data):
    from evaluation import lmentry

    ids = {k: [r.id for r in v] for k, v in splits.items()}
    assert {k: len(v) for k, v in ids.items()} == {"train": 25 * 8 + 8 * 25, "val": 25 * 2 + 8 * 5, "heldout": 25 * 12 + 8 * 25}
    for k, v in ids.items():
        assert len(set(v)) == len(v), k
    assert not set(ids["train"]) & set(ids["heldout"]) and not set(ids["val"]) & set(ids["heldout"])
    assert not set(ids["train"]) & set(ids["val"])
    # the LMentry held-out part is exactly the slice `tuna eval lmentry --limit 12` evaluates
    tasks = lmentry.load_tasks(shared_data / "lmentry/lmentry_tasks.json.gz")
    checked = 0
    for t in ("first_letter", "bigger_number", "sentence_containing"):
        want = {f"lmentry/{t}/{eid}" for eid, _ in lmentry.select_examples(tasks[t], 12)}
        got = {i for i in ids["heldout"] if i.startswith(f"lmentry/{t}/")}
        assert got == want
        checked += 1
    assert checked == 3
    # Super-NI: no instance of the held-out half is ever trained on (halves by position in each task)
    sni_train = {i for i in ids["train"] + ids["val"] if i.startswith("superni/")}
    sni_held = {i for i in ids["heldout"] if i.startswith("superni/")}
    assert len(sni_train) == 8 * 30 and len(sni_held) == 8 * 25 and not sni_train & sni_held


def test_task_verifier_uses_the_benchmarks_own_scorers(splits):
    lm = next(r for r in splits["heldout"] if r.id.startswith("lmentry/first_letter/"))
    word = lm.provenance["verifier"]["example"]["metadata"]["word"]
    right, wrong = f"The first letter is {word[0]}.", "The first letter is #."
    assert verifier_scores(lm.model_copy(update={"candidates": [Candidate(text=right), Candidate(text=wrong)]})) == [1.0, 0.0]
    sni = next(r for r in splits["heldout"] if r.id.startswith("superni/"))
    ref = sni.provenance["verifier"]["references"][0]
    scores = verifier_scores(sni.model_copy(update={"candidates": [Candidate(text=ref), Candidate(text="zzz qqq")]}))
    assert scores == [1.0, 0.0]
    # rouge_l on a plain record uses its gold
    plain = sni.model_copy(update={"provenance": {}, "gold": "the cat sat on the mat",
                                   "candidates": [Candidate(text="the cat sat"), Candidate(text="a dog")]})
    s = verifier_scores(plain, "rouge_l")
    assert s[0] == pytest.approx(2 * 1.0 * 0.5 / 1.5) and s[1] == 0.0


def test_rank_by_verifier_is_best_first_and_stable(splits):
    lm = next(r for r in splits["train"] if r.id.startswith("lmentry/first_letter/"))
    word = lm.provenance["verifier"]["example"]["metadata"]["word"]
    texts = ["no idea", f"{word[0]}", "nope", f"The first letter is {word[0]}"]
    ranked = rank_by_verifier(lm.model_copy(update={"candidates": [Candidate(text=t) for t in texts]}))
    assert [c.text for c in ranked.candidates] == [texts[1], texts[3], texts[0], texts[2]]  # ties keep sampling order
    assert [c.score for c in ranked.candidates] == [1.0, 1.0, 0.0, 0.0]
    assert ranked.ranking.by == "verifier" and ranked.ranking.method == "task"
    assert count_pairs([1.0, 1.0, 0.0, 0.0]) == (4, 2)


def test_pair_outcomes_match_per_candidate_forward(tiny_model, smol_tokenizer, vicuna_ranked):
    """Counted against log-likelihoods computed one candidate at a time with the plain full-vocabulary path."""
    from tuna.prompts import alpaca_prompt

    recs = read_records(vicuna_ranked)[:5]
    recs[1].candidates[2].score = recs[1].candidates[1].score  # a tie: never scored
    rows = model_pair_outcomes(tiny_model, smol_tokenizer, recs, max_length=256, batch_size=2)
    checked = 0
    for rec, row in zip(recs, rows):
        p_ids = smol_tokenizer(alpaca_prompt(rec.instruction, rec.input))["input_ids"]
        s = []
        for c in rec.candidates:
            r_ids = (smol_tokenizer(c.text, add_special_tokens=False)["input_ids"] + [smol_tokenizer.eos_token_id])
            ids = (p_ids + r_ids)[:256]
            n_resp = len(ids) - len(p_ids)
            with torch.no_grad():
                lp = torch.log_softmax(tiny_model(torch.tensor([ids])).logits[0, :-1].float(), -1)
            tok_lp = lp.gather(-1, torch.tensor(ids[1:])[:, None]).squeeze(-1)[-n_resp:]
            s.append(float(tok_lp.mean()))
        right = pairs = tied = 0
        for i in range(len(s)):
            for j in range(i + 1, len(s)):
                a, b = rec.candidates[i].score, rec.candidates[j].score
                if a == b:
                    tied += 1
                    continue
                pairs += 1
                right += int(s[i] > s[j]) if a > b else int(s[j] > s[i])
        assert (row["right"], row["pairs"], row["tied"]) == (right, pairs, tied)
        checked += 1
    assert checked == 5 and rows[1]["tied"] == 1
    summ = summarise_pairs(rows)
    assert summ["pairs"] == sum(r["pairs"] for r in rows) == 5 * 6 - 1


def test_rank_command_resumes(splits, tmp_path):
    from evaluation.verifiable_commands import rank
    from tuna.records import write_records

    recs = [r for r in splits["train"] if r.id.startswith("lmentry/first_letter/")][:3]
    cands = []
    for r in recs:
        w = r.provenance["verifier"]["example"]["metadata"]["word"]
        cands.append(r.model_copy(update={"candidates": [Candidate(text="x"), Candidate(text=w[0]), Candidate(text="y")]}))
    inp, out = tmp_path / "c.jsonl", tmp_path / "r.jsonl"
    write_records(inp, cands[:2])
    rank(str(inp), str(out))
    write_records(inp, cands)
    rank(str(inp), str(out))
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == [c.id for c in cands]
    assert all(r["candidates"][0]["score"] == 1.0 and r["ranking"]["by"] == "verifier" for r in rows)


def test_verifiable_sweep_arms_end_to_end(shared_data, tmp_path):
    """`tuna sweep` with named arms on verifiable feedback (tiny model): the splits, the student's samples and their
    verifier ranking are made once and shared by the arms; each arm trains its variant; the report compares every
    row with the untrained student on the held-out task score and pair accuracy, with paired intervals."""
    import subprocess
    import sys

    import yaml
    from test_pipeline import REPO, tiny_pipeline

    base = tiny_pipeline(tmp_path, ranker="verifier", variants=["tuna_c"], evaluate=["tuna_c"])
    base["verifiable"] = {"lmentry_eval_per_task": 3, "lmentry_val_per_task": 1, "lmentry_train_per_task": 1,
                          "superni_eval_per_task": 2, "superni_val_per_task": 1, "superni_train_per_task": 1,
                          "pairs_limit": 6, "max_new_tokens": 4}
    base["context_instructions"] = {"offset": 0, "limit": 6}
    base["context_rank"] = {"trainer": {"accelerator": "cpu", "precision": "32-true", "max_steps": 2}, "optim": {"lr": 1e-3},
                            "loss": {"ties": "skip"}, "data": {"regularizer": "none", "max_length": 256}}
    base["best_of_n"] = {"trainer": {"accelerator": "cpu", "precision": "32-true", "max_steps": 2}, "optim": {"lr": 1e-3},
                         "data": {"sft_target": "best", "max_length": 256}}
    base["evaluation"] = {"benchmarks": ["verifiable", "pairs"], "template": "raw", "batch_size": 16}
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    sweep = {"base": str(tmp_path / "base.yaml"), "name": "v", "run_dir": str(tmp_path / "runs"), "results_dir": str(tmp_path / "res"),
             "grid": {}, "baseline": "student [untrained]",
             "arms": {"untrained": {"variants": [], "evaluate": ["student"]},
                      "best_of_n": {"variants": ["best_of_n"], "evaluate": ["best_of_n"]},
                      "rank_only": {"context_rank.loss.mle_weight": 0.0}}}
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(sweep))
    env = {**__import__("os").environ, "TUNA_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "tuna_recipes", "sweep", "--config", str(tmp_path / "sweep.yaml")],
                          capture_output=True, text=True, timeout=1500, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-4000:]
    steps = {arm: json.loads((tmp_path / "runs" / arm / "manifest.json").read_text())["steps"] for arm in sweep["arms"]}
    assert steps["best_of_n"]["sample_tuna_c"]["wall_s"] > 0 and steps["best_of_n"]["best_of_n"]["status"] == "done"
    assert steps["rank_only"]["sample_tuna_c"].get("shared") and steps["rank_only"]["rank_tuna_c"].get("shared")
    assert steps["rank_only"]["tuna_c"]["status"] == "done"
    ranked = next((tmp_path / "runs/shared").glob("context-*/ranked-*.jsonl")).read_text().splitlines()
    assert len(ranked) == 6 and all(json.loads(x)["ranking"]["by"] == "verifier" for x in ranked)
    main = (tmp_path / "res/main.md").read_text()
    for row in ("student [untrained]", "best_of_n [best_of_n]", "tuna_c [rank_only]"):
        assert row in main, main
    assert "Held-out score" in main and "Held-out pair acc." in main and "Held-out LMentry acc." in main
    heldout = [json.loads(x) for x in next((tmp_path / "runs/shared").glob("verifiable-*/heldout.jsonl")).read_text().splitlines()]
    assert len(heldout) == 25 * 3 + 8 * 2
    # the differences table: every non-baseline row against the untrained student, over the same items
    assert main.count("| tuna_c [rank_only]") == 2 and main.count("| best_of_n [best_of_n]") == 2


def test_skip_all_tied_drops_sets_without_a_ranking(smol_tokenizer, vicuna_ranked, tmp_path):
    from tuna.config import DataConfig
    from tuna.data import RankedCandidatesDataModule
    from tuna.records import write_records

    recs = read_records(vicuna_ranked)[:6]
    for r in recs[:4]:  # four sets the verifier scored alike throughout
        for c in r.candidates:
            c.score = 0.0
    path = tmp_path / "r.jsonl"
    write_records(path, recs)
    counts = {}
    for mode in ("rank", "sft"):
        for skip in (False, True):
            cfg = DataConfig(train_file=str(path), max_length=128, skip_all_tied=skip, sft_target="best", cache_dir=str(tmp_path / "c"))
            dm = RankedCandidatesDataModule(cfg, smol_tokenizer, mode=mode)
            dm.setup()
            counts[(mode, skip)] = len(dm.train_ds)
    assert counts == {("rank", False): 6, ("rank", True): 2, ("sft", False): 6, ("sft", True): 2}
