"""The evidence statistics: two-way bootstrap (seeds x item clusters within tasks), paired differences, Holm's
correction; and the committed evidence tables rebuilt from the committed per-item files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from evaluation.evidence import Arm, Bootstrap, difference, estimate, holm, p_value

REPO = Path(__file__).resolve().parents[1]


def _meta(n_tasks: int = 4, clusters_per_task: int = 10, per_cluster: int = 3) -> list[dict]:
    return [{"id": f"t{t}/c{c}/{k}", "benchmark": "b", "task": f"t{t}", "cluster": f"t{t}/c{c}", "task_seen": True,
             "template_seen": True} for t in range(n_tasks) for c in range(clusters_per_task) for k in range(per_cluster)]


def _arm(name: str, scores: np.ndarray, seeds: list) -> Arm:
    return Arm(name, seeds, {"heldout": scores}, {}, {}, {}, {"heldout": [[""] * scores.shape[1]] * scores.shape[0]}, [])


def test_holm_matches_a_hand_computed_example():
    ps = [0.01, 0.04, 0.03, 0.005]
    # sorted: 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> running max 0.02, 0.03, 0.06, 0.06
    assert holm(ps) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5]) == [0.5] and holm([0.6, 0.9]) == [1.0, 1.0]


def test_p_value_tails():
    assert p_value(np.full(999, 1.0)) == pytest.approx(2 / 1000)
    assert p_value(np.linspace(-1, 1, 1001)) == pytest.approx(1.0)


def test_clusters_widen_the_interval_and_seeds_add_their_variance():
    """Items that repeat within a cluster carry no extra information: the cluster bootstrap's interval is as wide as
    with one item per cluster, and wider than an item-level bootstrap would claim. Seed variance widens it too."""
    rng = np.random.default_rng(1)
    meta = _meta()
    n = len(meta)
    cluster_value = rng.random(40)
    per_item = np.repeat(cluster_value, 3)[None, :]  # the 3 items of a cluster score alike
    boot = Bootstrap(meta, resamples=4000, seed=0)
    e = estimate(boot, _arm("a", per_item, [None]), "heldout", "task", np.ones(n, bool))
    # the same data as if every item were its own cluster
    flat = [dict(m, cluster=m["id"]) for m in meta]
    e_flat = estimate(Bootstrap(flat, resamples=4000, seed=0), _arm("a", per_item, [None]), "heldout", "task", np.ones(n, bool))
    assert e.value == pytest.approx(100 * cluster_value.mean())
    assert (e.hi - e.lo) > 1.5 * (e_flat.hi - e_flat.lo)  # ~sqrt(3) wider
    # three seeds that differ by a constant shift: the seed draw adds that spread
    seeds = np.stack([per_item[0] + d for d in (-0.1, 0.0, 0.1)])
    e3 = estimate(boot, _arm("b", seeds, [0, 1, 2]), "heldout", "task", np.ones(n, bool))
    assert e3.value == pytest.approx(e.value) and (e3.hi - e3.lo) > (e.hi - e.lo) + 5


def test_paired_difference_finds_a_real_gain_and_not_a_null_one():
    rng = np.random.default_rng(2)
    meta = _meta()
    n = len(meta)
    boot = Bootstrap(meta, resamples=4000, seed=0)
    base = (rng.random(n) < 0.4).astype(float)[None, :]
    gain = np.stack([np.where(rng.random(n) < 0.15, 1.0, base[0]) for _ in range(3)])  # ~+9 points per seed
    null = np.stack([rng.permutation(base[0]) for _ in range(3)])
    mask = np.ones(n, bool)
    d = difference(boot, _arm("g", gain, [0, 1, 2]), _arm("u", base, [None]), "heldout", "task", mask)
    assert d.lo > 0 and p_value(d.reps) < 0.01
    assert d.value == pytest.approx(100 * (gain.mean() - base.mean()))
    d0 = difference(boot, _arm("n", null, [0, 1, 2]), _arm("u", base, [None]), "heldout", "task", mask)
    assert d0.lo < 0 < d0.hi


def test_pair_accuracy_is_a_ratio_of_sums():
    meta = _meta(n_tasks=2, clusters_per_task=5, per_cluster=2)
    n = len(meta)
    boot = Bootstrap(meta, resamples=500, seed=0)
    right = np.tile(np.array([1.0, 0.0]), n // 2)[None, :]
    pairs = np.tile(np.array([1.0, 3.0]), n // 2)[None, :]
    arm = Arm("a", [None], {"heldout": np.zeros((1, n))}, {"heldout": right}, {"heldout": pairs}, {"heldout": np.zeros((1, n))},
              {"heldout": [[""] * n]}, [])
    e = estimate(boot, arm, "heldout", "pairs", np.ones(n, bool))
    assert e.value == pytest.approx(25.0) and e.lo == pytest.approx(25.0) and e.hi == pytest.approx(25.0)


def test_pair_accuracy_is_paired_only_on_the_same_sets():
    """Parts of a sweep run elsewhere: pair accuracies are compared only where every item holds the same strict pairs
    in both arms and the recorded draws agree; a set that could not be drawn (no pairs) counts as holding none."""
    from evaluation.evidence import same_pair_sets

    meta = _meta(n_tasks=2, clusters_per_task=5, per_cluster=2)
    n = len(meta)
    boot = Bootstrap(meta, resamples=500, seed=0)
    pairs = np.tile(np.array([1.0, 3.0]), n // 2)[None, :]

    def arm(name: str, right: np.ndarray, pairs: np.ndarray, draw: str | None = None) -> Arm:
        runs = [{"pairs_draw": {"heldout": draw}}] if draw else [{}]
        return Arm(name, [None], {"heldout": np.zeros((1, n))}, {"heldout": right}, {"heldout": pairs},
                   {"heldout": np.zeros((1, n))}, {"heldout": [[""] * n]}, runs)

    base = arm("u", np.zeros((1, n)), pairs)
    better = arm("t", pairs.copy(), pairs, draw="d1")  # every pair right
    assert same_pair_sets(better, base, "heldout")
    d = difference(boot, better, base, "heldout", "pairs", np.ones(n, bool))
    assert d.value == pytest.approx(100.0)
    other = pairs.copy()
    other[0, 3] = 2.0  # one set drawn differently
    assert not same_pair_sets(arm("o", np.zeros((1, n)), other), base, "heldout")
    assert difference(boot, arm("o", np.zeros((1, n)), other), base, "heldout", "pairs", np.ones(n, bool)) is None
    assert not same_pair_sets(better, arm("t2", pairs.copy(), pairs, draw="d2"), "heldout")  # another recorded draw
    assert difference(boot, arm("t", pairs.copy(), pairs, draw="d1"), arm("t2", pairs.copy(), pairs, draw="d1"),
                      "heldout", "pairs", np.ones(n, bool)).value == pytest.approx(0.0)


def test_an_item_without_a_pair_set_holds_no_pairs(tmp_path):
    """An exported run whose draw lacks one item (its samples were all empty) still has pair accuracy: that item
    counts 0 pairs, as in a draw where it held only ties."""
    import gzip

    from evaluation.evidence import Evidence

    d = tmp_path / "ev"
    (d / "items").mkdir(parents=True)
    meta = [{"id": f"i{k}", "benchmark": "b", "task": "t", "cluster": f"i{k}", "task_seen": True, "template_seen": True}
            for k in range(3)]
    rows = [{"id": "i0", "score": 1.0, "right": 1, "pairs": 2, "tied": 0}, {"id": "i1", "score": 0.0},
            {"id": "i2", "score": 0.0, "right": 0, "pairs": 1, "tied": 5}]
    for name, content in (("heldout.meta", meta), ("a.heldout", rows)):
        with gzip.open(d / "items" / f"{name}.jsonl.gz", "wt") as f:
            f.writelines(json.dumps(r) + "\n" for r in content)
    (d / "runs.json").write_text(json.dumps({"sweep": "v", "runs": [
        {"label": "a/s0", "arm": "a", "seed": 0, "search": False, "splits": {"heldout": {"file": "items/a.heldout.jsonl.gz"}}}]}))
    arm = Evidence(d).arms["a"]
    assert arm.pairs["heldout"].tolist() == [[2.0, 0.0, 1.0]] and arm.right["heldout"].tolist() == [[1.0, 0.0, 0.0]]
    assert arm.tied["heldout"].tolist() == [[0.0, 0.0, 5.0]]


def test_export_in_parts_keeps_the_earlier_runs_and_refuses_another_sweep(tmp_path):
    from evaluation.evidence import merge_export
    from tuna.errors import TunaError

    earlier = tmp_path / "runs.json"
    assert merge_export(earlier, "verifiable", [{"label": "a"}]) == [{"label": "a"}]
    earlier.write_text(json.dumps({"sweep": "verifiable", "runs": [{"label": "a", "v": 1}, {"label": "b", "v": 1}]}))
    merged = merge_export(earlier, "verifiable", [{"label": "b", "v": 2}, {"label": "c", "v": 2}])
    assert merged == [{"label": "a", "v": 1}, {"label": "b", "v": 2}, {"label": "c", "v": 2}]
    with pytest.raises(TunaError, match="holds sweep 'verifiable', not 'other'"):
        merge_export(earlier, "other", [{"label": "a"}])


def test_committed_tables_rebuild_from_committed_items(tmp_path):
    """`tuna report --evidence results/verifiable` rebuilds the committed main.md byte for byte from items/ and runs.json."""
    from evaluation.evidence import make_evidence_report

    src = REPO / "results/verifiable"
    dst = tmp_path / "verifiable"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.png", "main.md", "main.tex", "report.json"))
    make_evidence_report(dst)
    assert (dst / "main.md").read_text() == (src / "main.md").read_text()
    assert (dst / "main.tex").read_text() == (src / "main.tex").read_text()
