"""How reliable is a judge? The same ranking request with the candidates shown in ``orders`` shuffled orders, each
asked ``repeats`` times, over a sample of candidate sets (``tuna judge-reliability``):

* **order flips**: between two asks in *different* shown orders (rankings mapped back to the original candidates),
  how often the best candidate changes (top-1 flip) and the share of candidate pairs whose order is reversed (pair
  flip); the same between two asks in the *same* order (repeats) separates the judge's sampling noise from the order
  effect (order effect = cross-order − same-order);
* **self-agreement**: mean Kendall τ-b between repeat asks of the same order (1 = always the same ranking);
* **position bias**: how often each shown position (Response 0, 1, ...) is ranked first (chance: 1/n);
* **agreement with a verifiable ranker** (``reference``: ranked sets of the same ids, e.g. from
  ``tuna rank --by rouge_l`` or ``--by task``): Kendall τ-b with its scores, how often the judge's first is one of
  its best (top-1), and the share of the pairs it orders that the judge orders the same way.

Every figure is a mean over sets with a 95 % percentile bootstrap interval (sets resampled with replacement), so a
judge is compared with chance by its interval, not its point. Replies that cannot be read are asked again
(``reasks``); an ask that still fails is left out of the pairs it would be in (counted in the report).
"""

from __future__ import annotations

import json
import random
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any

from tuna.errors import TunaError
from tuna.feedback.config import JudgeConfig
from tuna.records import Record, atomic_write_json, atomic_write_text, positions

RESEED_REPEAT = 7_919
"""Seed step between repeat asks for judges that are sent a seed."""


@dataclass
class Ask:
    order: int
    repeat: int
    perm: list[int]
    ranking: list[int] | None
    """Original candidate ids, best first (None: no readable reply)."""


def _pos(ranking: list[int], n: int) -> list[float]:
    p = positions(ranking, list(range(n)))
    return [p[k] for k in range(n)]


def pair_flip(a: list[int], b: list[int], n: int) -> float:
    """Share of candidate pairs ordered oppositely by two rankings (pairs tied in either are skipped)."""
    pa, pb = _pos(a, n), _pos(b, n)
    flips = total = 0
    for i, j in combinations(range(n), 2):
        da, db = pa[i] - pa[j], pb[i] - pb[j]
        if da == 0 or db == 0:
            continue
        total += 1
        flips += (da > 0) != (db > 0)
    return flips / total if total else 0.0


def set_metrics(asks: list[Ask], n: int, ref: list[float] | None) -> dict[str, Any]:
    """The per-set figures (means over the set's pairs of asks)."""
    from tuna.feedback.judge import kendall_tau_b

    ok = [a for a in asks if a.ranking]
    m: dict[str, Any] = {"asks": len(asks), "readable": len(ok)}
    same = [(a, b) for a, b in combinations(ok, 2) if a.order == b.order]
    cross = [(a, b) for a, b in combinations(ok, 2) if a.order != b.order]

    def neg_pos(r: list[int]) -> list[float]:
        return [-x for x in _pos(r, n)]

    for name, pairs in (("same", same), ("cross", cross)):
        if pairs:
            m[f"top1_flip_{name}"] = sum(a.ranking[0] != b.ranking[0] for a, b in pairs) / len(pairs)  # type: ignore[index]
            m[f"pair_flip_{name}"] = sum(pair_flip(a.ranking, b.ranking, n) for a, b in pairs) / len(pairs)  # type: ignore[arg-type]
            m[f"tau_{name}"] = sum(kendall_tau_b(neg_pos(a.ranking), neg_pos(b.ranking)) for a, b in pairs) / len(pairs)  # type: ignore[arg-type]
    if ok:
        first_shown = [0.0] * n
        for a in ok:
            first_shown[a.perm.index(a.ranking[0])] += 1  # type: ignore[index]
        m["first_at_position"] = [c / len(ok) for c in first_shown]
    if ref is not None and ok and len(set(ref)) > 1:
        best = max(ref)
        m["ref_tau"] = sum(kendall_tau_b(neg_pos(a.ranking), ref) for a in ok) / len(ok)  # type: ignore[arg-type]
        m["ref_top1"] = sum(ref[a.ranking[0]] == best for a in ok) / len(ok)  # type: ignore[index]
        m["ref_top1_chance"] = sum(1 for s in ref if s == best) / n
        agree = total = 0
        for a in ok:
            p = _pos(a.ranking, n)  # type: ignore[arg-type]
            for i, j in combinations(range(n), 2):
                if ref[i] == ref[j] or p[i] == p[j]:
                    continue
                total += 1
                agree += (ref[i] > ref[j]) == (p[i] < p[j])
        if total:
            m["ref_pair_acc"] = agree / total
    return m


def bootstrap(values: list[float], *, b: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Mean and 95 % percentile bootstrap interval over ``values`` (one per set)."""
    import numpy as np

    v = np.asarray(values, dtype=float)
    if len(v) == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, len(v), size=(b, len(v)))].mean(axis=1)
    return float(v.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def reference_scores(path: str | Path) -> dict[str, list[float]]:
    """Per record id, the reference ranker's score of each candidate in the *input* order (``ranking.details.order``
    holds the original indices best-first, as ``tuna rank`` and ``tuna judge`` write it)."""
    from tuna.records import read_records

    out: dict[str, list[float]] = {}
    for r in read_records(path):
        order = (r.ranking.details or {}).get("order") if r.ranking else None
        if order is None or sorted(order) != list(range(len(r.candidates))):
            raise TunaError("a reference needs ranked sets with ranking.details.order (tuna rank, tuna judge)", path=path,
                            field=f"record {r.id}: ranking.details.order")
        scores = [0.0] * len(order)
        for p, k in enumerate(order):
            scores[k] = float(r.candidates[p].score if r.candidates[p].score is not None else -p)
        out[r.id] = scores
    return out


def measure(records: list[Record], cfg: JudgeConfig, *, orders: int, repeats: int, out_dir: str,
            reference: str | None = None, command: str | None = None, bootstrap_samples: int = 2000) -> dict[str, Any]:
    """Ask, measure and write ``report.md``, ``report.json`` and ``asks.jsonl`` under ``out_dir``."""
    from tuna.feedback.client import ChatRequest
    from tuna.feedback.judge import PAPER_TEMPLATE, PARSERS, build_prompt, judge_instruction, rank_grammar, shuffle_orders
    from tuna.feedback.reask import complete_with_reask, open_client
    from tuna.feedback.sampling import quiet_http_logs
    from tuna.feedback.server import LlamaCppServer
    from tuna.models import cache_root

    if orders < 2 and repeats < 2:
        raise TunaError("need orders >= 2 or repeats >= 2 to measure anything", field="orders")
    if cfg.mode != "sync":
        raise TunaError("judge-reliability runs in mode sync", field="mode")
    ref = reference_scores(reference) if reference else None
    tmpl = Path(cfg.template).read_text(encoding="utf-8") if cfg.template else PAPER_TEMPLATE
    send_seed = cfg.backend in ("llamacpp", "hf") if cfg.request_seed is None else cfg.request_seed
    quiet_http_logs()
    reqs: list[ChatRequest] = []
    meta: list[tuple[int, int, int, list[int]]] = []  # (record, order, repeat, perm)
    for ri, rec in enumerate(records):
        n = len(rec.candidates)
        perms = shuffle_orders(n, orders, cfg.seed, rec.id)
        instr = judge_instruction(rec, cfg.instruction_format)
        for o, perm in enumerate(perms):
            msgs = ([{"role": "system", "content": cfg.system_prompt}] if cfg.system_prompt else []) + [
                {"role": "user", "content": build_prompt(tmpl, instr, [rec.candidates[k].text for k in perm])}]
            for r in range(repeats):  # repeats next to each other: a local server reuses the whole prompt
                reqs.append(ChatRequest(messages=msgs, temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_tokens,
                                        seed=(cfg.seed + o + RESEED_REPEAT * r) if send_seed else None, draw=r,
                                        grammar=rank_grammar(n) if cfg.constrain == "rank_grammar" else None, key=str(len(meta))))
                meta.append((ri, o, r, perm))
    parse = PARSERS[cfg.parser]

    def read(req: ChatRequest, text: str) -> list[int] | None:
        ri, _, _, perm = meta[int(req.key)]  # type: ignore[arg-type]
        n = len(records[ri].candidates)
        p = parse(text, n + 1)
        if p.order is None:
            return None
        shown = [k for k in p.order if k < n]
        return [perm[k] for k in shown] or None

    asks: dict[int, list[Ask]] = defaultdict(list)
    rows: list[dict[str, Any]] = []
    t0 = time.monotonic()
    server = None
    try:
        url, model = cfg.base_url, cfg.model
        if cfg.backend == "llamacpp":
            server = LlamaCppServer(cfg.model, n_ctx=cfg.n_ctx, seed=cfg.seed).start()
            url, model = server.base_url, server.model
        with open_client(cfg, cache_dir=cfg.cache_dir or str(cache_root() / "judge_cache"), model=model, base_url=url) as client:
            res = complete_with_reask(client, reqs, accept=lambda q, t: read(q, t) is not None, reasks=cfg.reasks, desc="judge reliability")
            ledger = client.ledger
    finally:
        if server is not None:
            server.stop()
    assert res is not None
    for req, tries in zip(reqs, res):
        ri, o, r, perm = meta[int(req.key)]  # type: ignore[arg-type]
        last = tries[-1]
        ranking = read(req, last.text) if last.text else None
        asks[ri].append(Ask(o, r, perm, ranking))
        rows.append({"id": records[ri].id, "order": o, "repeat": r, "perm": perm, "ranking": ranking, "attempts": len(tries),
                     "reply": last.text, "error": last.error})
    per_set = []
    for ri, rec in enumerate(records):
        rs = ref.get(rec.id) if ref is not None else None
        per_set.append({"id": rec.id, **set_metrics(asks[ri], len(rec.candidates), rs)})
    seconds = time.monotonic() - t0
    report = summarise(per_set, records, cfg, orders=orders, repeats=repeats, reference=reference, ledger=ledger, seconds=seconds,
                       command=command, b=bootstrap_samples, reasks=sum(r["attempts"] - 1 for r in rows))
    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    atomic_write_text(d / "asks.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    atomic_write_json(d / "report.json", {**report, "per_set": per_set})
    atomic_write_text(d / "report.md", report["markdown"])
    print(report["markdown"])
    return report


def summarise(per_set: list[dict[str, Any]], records: list[Record], cfg: JudgeConfig, *, orders: int, repeats: int,
              reference: str | None, ledger: dict[str, Any], seconds: float, command: str | None, b: int,
              reasks: int) -> dict[str, Any]:
    ns = {len(r.candidates) for r in records}
    n = max(ns)

    def stat(key: str, idx: int | None = None) -> dict[str, Any] | None:
        vals = [(s[key][idx] if idx is not None else s[key]) for s in per_set if key in s]
        if not vals:
            return None
        mean, lo, hi = bootstrap(vals, b=b, seed=cfg.seed)
        return {"mean": mean, "lo": lo, "hi": hi, "sets": len(vals)}

    figs: dict[str, Any] = {
        "top1_flip_cross": stat("top1_flip_cross"), "top1_flip_same": stat("top1_flip_same"),
        "pair_flip_cross": stat("pair_flip_cross"), "pair_flip_same": stat("pair_flip_same"),
        "tau_same": stat("tau_same"), "tau_cross": stat("tau_cross"),
        "first_at_position": [stat("first_at_position", k) for k in range(n)] if len(ns) == 1 else None,
        "ref_tau": stat("ref_tau"), "ref_top1": stat("ref_top1"), "ref_top1_chance": stat("ref_top1_chance"),
        "ref_pair_acc": stat("ref_pair_acc"),
    }
    asks = sum(s["asks"] for s in per_set)
    readable = sum(s["readable"] for s in per_set)

    def f(x: dict[str, Any] | None, pct: bool = True) -> str:
        if x is None:
            return "–"
        k, u = (100, " %") if pct else (1, "")
        return f"{x['mean'] * k:.1f}{u} [{x['lo'] * k:.1f}, {x['hi'] * k:.1f}]" if pct else f"{x['mean']:.3f} [{x['lo']:.3f}, {x['hi']:.3f}]"

    lines = [
        f"# Judge reliability: {cfg.model} ({cfg.backend}{', ' + cfg.constrain if cfg.constrain != 'none' else ''})", "",
        f"{len(records)} candidate sets of {'/'.join(map(str, sorted(ns)))} candidates; {orders} shown order(s) x {repeats} ask(s) each = "
        f"{asks} asks, {readable} readable ({reasks} re-asks); temperature {cfg.temperature}, top_p {cfg.top_p}, "
        f"prompt {'the paper' if not cfg.template else cfg.template}'s; {seconds:.0f} s, {ledger.get('calls', 0)} calls. "
        f"Means over sets with 95 % bootstrap intervals ({b} resamples of the sets).", "",
        "| figure | value [95 % CI] | what it means |", "|---|---|---|",
        f"| top-1 flip, different shown orders | {f(figs['top1_flip_cross'])} | the best candidate changes when only the order changes |",
        f"| top-1 flip, same order (repeat asks) | {f(figs['top1_flip_same'])} | sampling noise alone |",
        f"| pair flip, different orders | {f(figs['pair_flip_cross'])} | share of candidate pairs reversed (random: 50 %) |",
        f"| pair flip, same order | {f(figs['pair_flip_same'])} | |",
        f"| self-agreement: Kendall τ, same order | {f(figs['tau_same'], False)} | 1 = the same ranking every ask |",
        f"| Kendall τ, different orders | {f(figs['tau_cross'], False)} | 0 = unrelated rankings |",
    ]
    if figs["first_at_position"]:
        for k, x in enumerate(figs["first_at_position"]):
            lines.append(f"| ranked first when shown as Response {k} | {f(x)} | chance {100 / n:.1f} % |")
    if reference:
        lines += [
            f"| agreement with the verifiable ranker: Kendall τ | {f(figs['ref_tau'], False)} | 0 = chance, 1 = same order |",
            f"| judge's first is the ranker's best | {f(figs['ref_top1'])} | chance {f(figs['ref_top1_chance'])} |",
            f"| pairs ordered as the ranker orders them | {f(figs['ref_pair_acc'])} | chance 50 % |",
        ]
    lines += ["", f"Reference: {reference or 'none'}.", ""]
    if command:
        lines += ["Command:", "", "```bash", command, "```", ""]
    return {"figures": figs, "sets": len(records), "asks": asks, "readable": readable, "reasks": reasks, "orders": orders,
            "repeats": repeats, "model": cfg.model, "backend": cfg.backend, "temperature": cfg.temperature, "seconds": seconds,
            "ledger": ledger, "reference": reference, "command": command, "markdown": "\n".join(lines)}


def sample_records(records: list[Record], k: int | None, seed: int) -> list[Record]:
    """``k`` sets drawn without replacement (seeded), in input order; all when ``k`` is None or larger."""
    if k is None or k >= len(records):
        return records
    keep = set(random.Random(seed).sample(range(len(records)), k))
    return [r for i, r in enumerate(records) if i in keep]


def command_line() -> str:
    return "tuna " + " ".join(sys.argv[1:]) if sys.argv and sys.argv[0].endswith("tuna") else " ".join(sys.argv)
