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


def test_splits_are_sized_and_never_leak(splits):
    """No record, prompt text or LMentry question in two splits; nothing of an unseen task or a held-out template in
    training; the sizes SplitSizes asks for."""
    from collections import Counter

    from evaluation.verifiable import SplitSizes, check_splits

    n = SplitSizes()
    sizes = {k: len(v) for k, v in splits.items()}
    lm_seen, sni_seen = 25 - n.lmentry_unseen_tasks, 8 - n.superni_unseen_tasks
    assert sizes == {"train": lm_seen * n.lmentry_train_questions + sni_seen * n.superni_train_per_task,
                     "val": 25 * 3 * n.lmentry_val_questions + 8 * n.superni_val_per_task,
                     "heldout": 25 * 3 * n.lmentry_heldout_questions + 8 * n.superni_heldout_per_task}
    check_splits(splits)  # the guard itself, then the same properties counted here
    where: dict[str, set[str]] = {}
    for split, recs in splits.items():
        for r in recs:
            v = r.provenance["verifier"]
            key = f"{v['task']}|{v['question']}" if v["benchmark"] == "lmentry" else r.id
            where.setdefault(key, set()).add(split)
            where.setdefault("text|" + r.instruction, set()).add(split)
    crossing = [k for k, s in where.items() if len(s) > 1]
    assert not crossing, crossing[:3]
    assert sum(1 for k in where if not k.startswith("text|")) == (
        25 * (n.lmentry_heldout_questions + n.lmentry_val_questions) + lm_seen * n.lmentry_train_questions
        + 8 * (n.superni_heldout_per_task + n.superni_val_per_task) + sni_seen * n.superni_train_per_task)
    train = [r.provenance["verifier"] for r in splits["train"]]
    assert all(v["task_seen"] and v.get("template_seen", True) for v in train)
    unseen = {(v["benchmark"], v["task"]) for r in splits["heldout"] for v in [r.provenance["verifier"]] if not v["task_seen"]}
    assert Counter(b for b, _ in unseen) == {"lmentry": n.lmentry_unseen_tasks, "superni": n.superni_unseen_tasks}
    # one unseen Super-NI task from each metric family (generation, classification)
    assert sorted(r.provenance["verifier"]["family"] for r in splits["heldout"]
                  if r.id.startswith("superni/") and not r.provenance["verifier"]["task_seen"])[::n.superni_heldout_per_task] == [
        "classification", "generation"]
    # every held-out LMentry question is asked in all its templates; each seen task holds one template out of training
    held_templates = Counter((v["task"], v["template_seen"]) for r in splits["heldout"] for v in [r.provenance["verifier"]]
                             if v["benchmark"] == "lmentry" and v["task_seen"])
    assert all(held_templates[(t, False)] == n.lmentry_heldout_questions for t, _ in held_templates)


def test_splits_keep_each_tasks_label_distribution(splits, shared_data):
    """Within every task, each split holds the labels in the proportions of the task's whole population (counted in
    units that are dealt: LMentry questions, Super-NI instances): at most 2 off per label (largest remainder, dealt
    split after split). The old even/odd split put one label in held-out and the other in training."""
    from collections import Counter

    from evaluation import lmentry, superni
    from evaluation.verifiable import MAX_LABELS, lmentry_label, lmentry_question_key, normalise_label

    population: dict[str, Counter] = {}
    for r in superni.load_instances(shared_data / "superni/superni_test_slice.jsonl.gz"):
        population.setdefault(r["task"], Counter())[normalise_label(r["references"][0])] += 1
    tasks = lmentry.load_tasks(shared_data / "lmentry/lmentry_tasks.json.gz")
    for t in {r.provenance["verifier"]["task"] for r in splits["heldout"] if r.id.startswith("lmentry/")}:
        qs = {lmentry_question_key(ex["metadata"]): lmentry_label(t, ex["metadata"]) for ex in tasks[t]["examples"].values()}
        population[t] = Counter(qs.values())

    def units(recs, task):
        seen, out = set(), Counter()
        for r in recs:
            v = r.provenance["verifier"]
            if v["task"] != task:
                continue
            key = v.get("question", r.id)
            if key not in seen:
                seen.add(key)
                out[v.get("label") if v["benchmark"] == "lmentry" else normalise_label(r.gold)] += 1
        return out

    checked = 0
    for task, pop in sorted(population.items()):
        if len(pop) > MAX_LABELS or set(pop) == {None}:
            continue  # free-text answers: nothing to stratify
        total_pop = sum(pop.values())
        for split, recs in splits.items():
            c = units(recs, task)
            size = sum(c.values())
            for lab, k in pop.items():
                assert abs(c[lab] - k / total_pop * size) <= 2.0, (task, split, lab, c, pop)
        checked += 1
    assert checked >= 15  # 5 Super-NI classification tasks, LMentry's yes/no and answer-position tasks
    # the four tasks whose labels alternate in file order are balanced in held-out now
    for t in ("task1391", "task827", "task879", "task020"):
        c = Counter(normalise_label(r.gold) for r in splits["heldout"] if r.provenance["verifier"]["task"].startswith(t))
        assert len(c) == 2 and max(c.values()) - min(c.values()) <= 1, (t, c)


def test_splits_depend_on_the_seed_only(shared_data):
    from evaluation.verifiable import make_splits

    kw = dict(superni_data=shared_data / "superni/superni_test_slice.jsonl.gz", lmentry_data=shared_data / "lmentry/lmentry_tasks.json.gz")
    a, b, c = make_splits(seed=0, **kw), make_splits(seed=0, **kw), make_splits(seed=1, **kw)
    ids = {k: [r.id for r in v] for k, v in a.items()}
    assert ids == {k: [r.id for r in v] for k, v in b.items()}
    assert ids["heldout"] != [r.id for r in c["heldout"]]


def test_degraded_ranker_flips_pairs_at_the_asked_rate():
    """Each pair the verifier orders swaps with probability flip (measured over 20,000 seeded sets, within 4 standard
    errors); ties stay ties; 0.5 is a random ranking; the result is always a ranking."""
    import random

    from evaluation.verifiable import degrade_scores

    rng = random.Random(0)
    sets = [[1.0, 0.0, 0.0, 0.0], [0.9, 0.5, 0.5, 0.1], [1.0, 1.0, 0.0, 0.0], [0.3, 0.2, 0.1, 0.0]]
    checked = 0
    for flip in (0.0, 0.2, 0.35, 0.5):
        flipped = pairs = 0
        for k in range(20000):
            s = sets[k % len(sets)]
            new, _ = degrade_scores(s, flip, rng)
            assert set(new) == set(s)  # the same levels, permuted
            for i in range(4):
                for j in range(i + 1, 4):
                    if s[i] == s[j]:
                        assert new[i] == new[j]
                        continue
                    pairs += 1
                    flipped += int((new[i] - new[j]) * (s[i] - s[j]) < 0)
        rate = flipped / pairs
        se = (flip * (1 - flip) / pairs) ** 0.5 * 3  # pairs within a set are correlated: a generous standard error
        assert abs(rate - flip) <= 4 * se + 1e-12, (flip, rate)
        checked += 1
    assert checked == 4
    with pytest.raises(Exception, match="flip"):
        degrade_scores([1.0, 0.0], 0.6, rng)


def test_rank_with_flip_records_the_truth_and_agreement(splits):
    from evaluation.verifiable import rank_by_verifier, ranker_agreement

    recs = []
    for r in [x for x in splits["train"] if x.id.startswith("lmentry/first_letter/")][:6]:
        w = r.provenance["verifier"]["example"]["metadata"]["word"]
        recs.append(r.model_copy(update={"candidates": [Candidate(text=w[0]), Candidate(text="x"), Candidate(text="y")]}))
    clean = [rank_by_verifier(r) for r in recs]
    noisy = [rank_by_verifier(r, flip=0.5, seed=3) for r in recs]
    assert noisy == [rank_by_verifier(r, flip=0.5, seed=3) for r in recs]  # seeded by (seed, record id)
    assert ranker_agreement(clean) == {"pairs": 12, "agree": 12, "accuracy": 1.0}
    a = ranker_agreement(noisy)
    assert a["pairs"] == 12
    flipped = sum(1 for r in noisy if r.ranking.details["verifier_scores"][0] != 1.0)
    assert a["agree"] == 12 - 2 * flipped and noisy[0].ranking.method == "task+flip0.5"


def test_constant_answers_and_degeneration(splits):
    from evaluation.verifiable import constant_answers, degeneration

    const = constant_answers(splits["train"])
    assert const["task827_copa_commonsense_reasoning"] in ("1", "2")
    assert const["all_words_from_category"] in ("yes", "no")
    assert "sentence_containing" not in const  # free sentences: no label
    unseen = {r.provenance["verifier"]["task"] for r in splits["heldout"] if not r.provenance["verifier"]["task_seen"]}
    assert not unseen & set(const)
    d = degeneration([{"task": "a", "prediction": "Yes."}, {"task": "a", "prediction": "yes"}, {"task": "b", "prediction": ""},
                      {"task": "b", "prediction": "No way"}])
    assert d == {"n": 4, "distinct_share": 0.75, "task_mode_share": 0.75, "empty_share": 0.25, "mean_words": 1.0, "length_share": None}
    d = degeneration([{"task": "a", "prediction": "x", "finish_reason": "stop"}, {"task": "a", "prediction": "y z", "finish_reason": "length"}])
    assert d["length_share"] == 0.5


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


def test_verifiable_sweep_seeds_and_selection_end_to_end(shared_data, tmp_path):
    """`tuna sweep` with named arms, seeds and a learning rate chosen on the validation split (tiny model): the splits
    and the evaluation pair sets are made once; each seed samples its own training sets, shared by the arms; the search
    runs evaluate validation only; the chosen value's seed-0 run is the search's own run (training not repeated), which
    then adds the held-out evaluation; the report compares every row with the untrained student."""
    import subprocess
    import sys

    import yaml
    from test_pipeline import REPO, tiny_pipeline

    base = tiny_pipeline(tmp_path, ranker="verifier", variants=["tuna_c"], evaluate=["tuna_c"])
    base["verifiable"] = {"lmentry_heldout_questions": 1, "lmentry_val_questions": 1, "lmentry_train_questions": 1,
                          "lmentry_unseen_tasks": 1, "superni_heldout_per_task": 2, "superni_val_per_task": 1,
                          "superni_train_per_task": 1, "superni_unseen_tasks": 2, "max_new_tokens": 4,
                          "eval_splits": ["val", "heldout"]}
    base["context_instructions"] = {"offset": 0, "limit": 6}
    base["context_rank"] = {"trainer": {"accelerator": "cpu", "precision": "32-true", "max_steps": 2}, "optim": {"lr": 1e-3},
                            "loss": {"ties": "skip"}, "data": {"regularizer": "none", "max_length": 256}}
    base["best_of_n"] = {"trainer": {"accelerator": "cpu", "precision": "32-true", "max_steps": 2}, "optim": {"lr": 1e-3},
                         "data": {"sft_target": "best", "max_length": 256}}
    base["evaluation"] = {"benchmarks": ["verifiable", "pairs"], "template": "raw", "runtime": {"batch_size": 16}}
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    sweep = {"base": str(tmp_path / "base.yaml"), "name": "v", "run_dir": str(tmp_path / "runs"), "results_dir": str(tmp_path / "res"),
             "grid": {}, "baseline": "student [untrained/s0]", "seeds": [0, 1], "arm_seeds": {"untrained": [0]},
             "select": {"values": [1.0e-3, 3.0e-3], "keys": {"untrained": None, "best_of_n": None}},
             "arms": {"untrained": {"variants": [], "evaluate": ["student"]},
                      "best_of_n": {"variants": ["best_of_n"], "evaluate": ["best_of_n"]},
                      "rank_only": {"context_rank.loss.mle_weight": 0.0}}}
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(sweep))
    env = {**__import__("os").environ, "TUNA_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "tuna_recipes", "sweep", "--config", str(tmp_path / "sweep.yaml")],
                          capture_output=True, text=True, timeout=1500, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-4000:]
    info = json.loads((tmp_path / "runs/sweep.json").read_text())
    chosen = json.loads((tmp_path / "runs/selection.json").read_text())["rank_only"]
    assert set(chosen["scores"]) == {"1e-3", "3e-3"} and chosen["value"] in (1e-3, 3e-3)
    lr = "1e-3" if chosen["value"] == 1e-3 else "3e-3"
    labels = {r["label"] for r in info["runs"]}
    assert labels == {"untrained/s0", "best_of_n/s0", "best_of_n/s1", "rank_only/lr=1e-3/s0", "rank_only/lr=3e-3/s0",
                      f"rank_only/lr={lr}/s1"}
    # the search evaluated validation only, the final runs both splits; the chosen seed-0 run trained once
    other = "3e-3" if lr == "1e-3" else "1e-3"
    steps = {lab: json.loads((tmp_path / "runs" / lab / "manifest.json").read_text())["steps"] for lab in labels}
    assert not any("@heldout" in k for k in steps[f"rank_only/lr={other}/s0"])
    final = steps[f"rank_only/lr={lr}/s0"]
    assert final["eval_tuna_c_verifiable@heldout"]["status"] == "done" and final["eval_tuna_c_pairs@val"]["status"] == "done"
    assert proc.stdout.count("##### sweep run") == 5 and proc.stdout.count("selection on val") == 2
    # rank_only trained 3 times (2 searched rates, then seed 1 at the chosen one): its seed-0 run reused the search's
    assert proc.stdout.count("=== tuna_c ===") == 3 and proc.stdout.count("=== best_of_n ===") == 2
    assert proc.stdout.count("=== eval_tuna_c_verifiable@heldout ===") == 2
    # each seed samples its own training sets; the evaluation pair sets are one draw for all
    ctx = sorted((tmp_path / "runs/shared").glob("context-*"))
    assert len(ctx) == 2
    assert len(list((tmp_path / "runs/shared").glob("pairs-*"))) == 2  # val and held-out
    ranked = next(ctx[0].glob("ranked-*.jsonl")).read_text().splitlines()
    assert len(ranked) == 6 and all(json.loads(x)["ranking"]["by"] == "verifier" for x in ranked)
    main = (tmp_path / "res/main.md").read_text()
    for row in ("student [untrained/s0]", "best_of_n [best_of_n/s1]", f"tuna_c [rank_only/lr={lr}/s1]"):
        assert row in main, main
    assert "validation" in main and "held-out" in main

    # the export commits the held-out pair sets; another part of the sweep, run in another folder, measures on that
    # committed draw instead of drawing again, and gets the same pair outcomes for the same model
    from evaluation.evidence import export_sweep

    export_sweep(tmp_path / "runs", tmp_path / "ev")
    draw = tmp_path / "ev/pairs/heldout.ranked.jsonl.gz"
    runs = json.loads((tmp_path / "ev/runs.json").read_text())["runs"]
    assert draw.exists() and len({r["pairs_draw"]["heldout"] for r in runs if "heldout" in r["splits"]}) == 1
    base["verifiable"]["pairs_files"] = {"heldout": str(draw)}
    (tmp_path / "base2.yaml").write_text(yaml.safe_dump(base))
    part = {**sweep, "base": str(tmp_path / "base2.yaml"), "run_dir": str(tmp_path / "runs2"), "results_dir": str(tmp_path / "res2"),
            "only": ["untrained"]}
    (tmp_path / "part.yaml").write_text(yaml.safe_dump(part))
    proc = subprocess.run([sys.executable, "-m", "tuna_recipes", "sweep", "--config", str(tmp_path / "part.yaml")],
                          capture_output=True, text=True, timeout=600, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-4000:]
    steps2 = json.loads((tmp_path / "runs2/untrained/s0/manifest.json").read_text())["steps"]
    assert "sample_heldout_pairs" not in steps2 and "sample_val_pairs" in steps2
    export_sweep(tmp_path / "runs2", tmp_path / "ev2")
    got, want = (sorted((json.loads(x) for x in __import__("gzip").open(d / "items/untrained__s0.heldout.jsonl.gz", "rt")), key=lambda r: r["id"])
                 for d in (tmp_path / "ev2", tmp_path / "ev"))
    assert [(r["id"], r.get("right"), r.get("pairs")) for r in got] == [(r["id"], r.get("right"), r.get("pairs")) for r in want]
    assert sum(r.get("pairs", 0) for r in got) > 0


def test_a_committed_pair_draw_of_another_split_is_refused(splits, tmp_path):
    from tuna.errors import TunaError
    from tuna.records import write_records
    from tuna_recipes.pipeline.run import PipelineRun

    class Run:  # committed_pairs needs only the split files
        def verifiable_splits(self):
            return {"heldout": tmp_path / "heldout.jsonl"}

    from tuna.records import Ranking

    def ranked(recs):
        recs = [r.model_copy(deep=True) for r in recs]  # the fixture's records stay as they are
        for r in recs:
            r.candidates = [Candidate(text="a", score=1.0), Candidate(text="b", score=0.0)]
            r.ranking = Ranking(by="verifier", method="task")
        return recs

    write_records(tmp_path / "heldout.jsonl", splits["heldout"])
    write_records(tmp_path / "draw.jsonl", ranked(splits["train"][:2]))
    with pytest.raises(TunaError, match="2 sets are not heldout items"):
        PipelineRun.committed_pairs(Run(), "heldout", str(tmp_path / "draw.jsonl"))
    with pytest.raises(TunaError, match="pair sets of split heldout are missing"):
        PipelineRun.committed_pairs(Run(), "heldout", str(tmp_path / "none.jsonl"))
    write_records(tmp_path / "ok.jsonl", ranked(splits["heldout"][:3]))
    assert PipelineRun.committed_pairs(Run(), "heldout", str(tmp_path / "ok.jsonl")) == tmp_path / "ok.jsonl"


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
