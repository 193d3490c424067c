"""Contextual ranking by an LLM judge: the paper's prompt (the released ``gpt-eval.py``, byte for byte), a robust
parser for real replies (the released parser one flag away), and the policies that turn a (possibly partial)
ranking into a best-first training record. docs/fidelity.md traces each choice to its source.

Defaults and why:

* ``reference="drop"``: the judge's own "Response 4" is not a student sample, so it is dropped from the
  ranking (``include`` keeps it as a candidate with ``source`` = the judge model, when the reply contains it).
* ``missing="last"``: candidates the judge left out (it was told to keep one of each duplicate group) are
  appended after the ranked ones in their original order, tied at the lowest score (``drop`` removes them).
  The loss needs every record to keep its candidates, and a left-out duplicate is by the judge's own
  account as good as the copy it kept, but we do not know which copy, so "tied last" is the safe choice.
* Score = number of items − mean position (0-based), so the best gets the highest score and ties share one.
* ``shuffles=k`` (k ≥ 1): k calls with seeded shuffled orders, mapped back to original ids and aggregated by
  mean position (Borda); the mean pairwise Kendall τ-b between the orders measures position sensitivity.
  ``shuffles=0`` is the paper's single call in sampling order.
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

from tuna.errors import EmptyOutputError, TunaError
from tuna.feedback.config import JudgeConfig
from tuna.prompts import alpaca_prompt, user_message
from tuna.records import (
    Candidate,
    JsonlAppender,
    Ranking,
    Record,
    atomic_write_json,
    atomic_write_text,
    failed_path_for,
    positions,
)

log = logging.getLogger(__name__)


# Verbatim from gpt-eval.py L131-138, including its missing spaces, "[i, j ,k, l, m]" and the final newline;
# tests/test_fidelity_judge.py rebuilds the released request independently and compares bytes.
PAPER_RANK_SUFFIX = (
    "\n\nWe would like you to rate Response 0/1/2/3 in reply to the given instruction displayed above.\n"
    "First, identify if the instruction requires open-ended or close-ended responses."
    "Second, you need to generate one high quality '###Response 4' in answer to the instruction. "
    "It needs to have the same format as other responses and will be used as a reference later.\n"
    "Third, identify if there are duplicate responses and keep only one of the duplicate responses for the following steps."
    "Fourth, compare Response 4 with Response 0/1/2/3/4 and assign each response an overall score on a scale of 0 to 15 "
    "where a higher score indicates better overall quality. For an open-ended instruction, please rate based on the relevance "
    "(score 0 to 5), level of details/justification: (score 0 to 5) and accuracy (score 0 to 5) of each response; for a "
    "close-ended instruction, please rate based on the accuracy (score 0 to 5), level of details/justification (score 0 to 5) "
    "and clarity (score 0 to 5) of each response. The ratings should have the format: "
    "'Response k: [sum of the 3 individual scores you give to response k]'.\n"
    "Last, rank the responses in decreasing order of their overall scores. The ranking should have the format: "
    "'rank: [i, j ,k, l, m]'. If there are duplicate responses, keep only one of them in the rank, that is, the ranking may "
    "become: 'rank: [i, j, k, l]', 'rank: [i, j, k]' 'rank: [i, j]' or even 'rank: [i]'.\n"
)
PAPER_TEMPLATE = "{instruction}\n\n{responses}" + PAPER_RANK_SUFFIX


def format_responses(texts: list[str]) -> str:
    """The paper's block: ``"\\n".join(f"###Response {j}:\\n{r}\\n")``."""
    return "\n".join(f"###Response {j}:\n{r}\n" for j, r in enumerate(texts))


_PLACEHOLDER = re.compile(r"\{instruction\}|\{responses\}")


def build_prompt(template: str, instruction: str, texts: list[str]) -> str:
    """The template with its two placeholders filled in one pass: text inside the instruction or the responses is
    never substituted again (not str.format either: user templates may contain JSON braces)."""
    values = {"{instruction}": instruction, "{responses}": format_responses(texts)}
    return _PLACEHOLDER.sub(lambda m: values[m.group(0)], template)


def judge_instruction(rec: Record, instruction_format: str = "alpaca") -> str:
    """The instruction as the judge sees it: the paper passes the student's whole Alpaca-rendered prompt
    (gpt-eval.py L129 ``instruct``, the prompt non_interactive_generate.py sampled from)."""
    if rec.prompt is not None:
        return rec.prompt
    if instruction_format == "alpaca":
        return alpaca_prompt(rec.instruction, rec.input)
    return user_message(rec.instruction, rec.input)


# ----------------------------------------------------------------------------------------------- parsing


@dataclass
class ParsedRank:
    order: list[int] | None
    """Indices as the judge wrote them (display order), best-first, deduplicated; None if unparseable."""
    reason: str | None = None
    rank_str: str = ""
    response_4: str = ""
    notes: list[str] = field(default_factory=list)


_MARKDOWN = re.compile(r"[*_`#]+")
_KEY = re.compile(r"\brank(?:ing)?\s*:", re.IGNORECASE)
_SCORE_LINE = re.compile(r"response\s*(\d+)\s*:\s*\[?\s*(\d+(?:\.\d+)?)", re.IGNORECASE)
_RESPONSE_4 = re.compile(r"###\s*Response 4:(.*?)\n\n", re.DOTALL)


def _list_after(segment: str) -> list[int] | None:
    """The integers of the list right after a ``rank:`` key: a bracketed list, or a line like ``2 > 0 > 1``."""
    s = segment.lstrip(" \t:")
    if s.startswith("["):
        end = s.find("]")
        inner = s[1 : end if end >= 0 else len(s)]
    else:
        inner = s.split("\n", 1)[0]
        inner = inner.split("(", 1)[0]  # "rank: 2, 0, 1 (response 4 is the reference)"
    nums = [int(x) for x in re.findall(r"\d+", inner)]
    return nums or None


def parse_rank_reply(reply: str, n_items: int, *, fallback_scores: bool = False) -> ParsedRank:
    """Parse a ranking reply. ``n_items`` = number of valid indices (the candidates plus the judge's own
    Response ``n_items-1`` under the paper's prompt). Handles ``rank:``/``ranking:``, markdown and bold,
    trailing text or digits after the list, repeated and out-of-range indices, and shorter lists.

    Unlike the released code (first ``rank:``, then every digit in the rest of the reply), the *last* key that
    is followed by a list with digits wins, because judges often echo the requested format ("rank: [i, j ,k]")
    before answering, and only the list itself is read."""
    m4 = _RESPONSE_4.search(reply + "\n\n")
    response_4 = m4.group(1).strip() if m4 else ""
    text = _MARKDOWN.sub("", reply)
    candidates: list[tuple[str, list[int]]] = []
    for m in _KEY.finditer(text):
        seg = text[m.end() :]
        nums = _list_after(seg)
        if nums:
            candidates.append((seg.split("\n", 1)[0].strip(), nums))
    notes: list[str] = []
    if not candidates:
        if fallback_scores:
            scores: dict[int, float] = {}
            for k, v in _SCORE_LINE.findall(text):
                if int(k) < n_items:
                    scores[int(k)] = float(v)  # the last rating of each response wins
            if len(scores) >= 2:
                order = sorted(scores, key=lambda k: (-scores[k], k))
                return ParsedRank(order, None, "", response_4, ["from 'Response k: score' lines"])
        reason = "no rank list" if not _KEY.search(text) else "rank key without a list of indices"
        return ParsedRank(None, reason, "", response_4)
    rank_str, nums = candidates[-1]
    return _ranked(nums, n_items, rank_str, response_4, notes)


def parse_rank_reply_released(reply: str, n_items: int) -> ParsedRank:
    """The released parser (gpt-eval.py L145-153), for comparison and as ``tuna judge --parser released``.

    ``rank_str`` is the lower-cased reply between its first ``rank:`` and the next one (else after ``ranking:``),
    and the order is every integer in it, as the released code stored them; tuna then skips out-of-range and
    repeated indices (the released code kept them in ``ranks``; how its training file used them is unknown). A
    reply with neither key made the released script stop (IndexError); here it is a failed record."""
    m4 = _RESPONSE_4.search(reply)  # the released regex on the reply as it is (no blank line added at the end)
    response_4 = m4.group(1).strip() if m4 else ""
    low = reply.lower()
    if "rank:" in low:
        rank_str = low.split("rank:")[1].strip()
    elif "ranking:" in low:
        rank_str = low.split("ranking:")[1].strip()
    else:
        return ParsedRank(None, "no rank list", "", response_4)
    return _ranked([int(x) for x in re.findall(r"\d+", rank_str)], n_items, rank_str, response_4, [])


def _ranked(nums: list[int], n_items: int, rank_str: str, response_4: str, notes: list[str]) -> ParsedRank:
    """The order a parsed rank list gives: out-of-range and repeated indices are skipped, each with a note."""
    order: list[int] = []
    for k in nums:
        if k >= n_items:
            notes.append(f"ignored out-of-range index {k}")
        elif k in order:
            notes.append(f"ignored repeated index {k}")
        else:
            order.append(k)
    if not order:
        return ParsedRank(None, "rank list has no valid index", rank_str, response_4, notes)
    return ParsedRank(order, None, rank_str, response_4, notes)


PARSERS = {"robust": parse_rank_reply, "released": parse_rank_reply_released}


# ----------------------------------------------------------------------------------------------- aggregation


def rank_grammar(n: int, max_permutations: int = 720) -> str:
    """A GBNF grammar (llama.cpp's ``grammar`` request field) whose only replies are ``rank: [a, b, ...]`` with a
    permutation of ``0..n-1``: a weak judge then always gives a complete, parseable ranking, and the order is still
    the model's own choice (token by token among the orders still possible). Past ``max_permutations`` orders
    (n > 6) the grammar allows any list of the indices (the parser drops repeats and appends what is missing)."""
    import itertools
    import math

    if n < 1:
        raise ValueError("rank_grammar needs at least one item")
    if math.factorial(n) <= max_permutations:
        alts = " | ".join('"' + ", ".join(map(str, p)) + '"' for p in itertools.permutations(range(n)))
        return f'root ::= "rank: [" ({alts}) "]"\n'
    idx = " | ".join(f'"{i}"' for i in range(n))
    return f'root ::= "rank: [" idx (", " idx){{{n - 1}}} "]"\nidx ::= {idx}\n'


def kendall_tau_b(x: list[float], y: list[float]) -> float:
    """Kendall's τ-b between two score vectors (ties allowed); 0 when either vector is constant."""
    conc = disc = tx = ty = 0
    for i, j in combinations(range(len(x)), 2):
        dx, dy = x[i] - x[j], y[i] - y[j]
        if dx == 0 and dy == 0:
            continue
        if dx == 0:
            tx += 1
        elif dy == 0:
            ty += 1
        elif (dx > 0) == (dy > 0):
            conc += 1
        else:
            disc += 1
    denom = ((conc + disc + tx) * (conc + disc + ty)) ** 0.5
    return (conc - disc) / denom if denom else 0.0


def shuffle_orders(n: int, k: int, seed: int, key: str) -> list[list[int]]:
    """``k`` display orders of ``n`` candidates (``perm[j]`` = original id shown as Response j); k=0: identity."""
    if k <= 0:
        return [list(range(n))]
    rng = random.Random(f"{seed}:{key}")
    out = []
    for _ in range(k):
        p = list(range(n))
        rng.shuffle(p)
        out.append(p)
    return out


@dataclass
class JudgePolicy:
    reference: str = "drop"
    """drop | include: what to do with the judge's own Response 4."""
    missing: str = "last"
    """last | drop: candidates the judge left out of its ranking."""


def rank_record(
    rec: Record,
    perms: list[list[int]],
    parsed: list[ParsedRank],
    *,
    judge_model: str,
    method: str,
    policy: JudgePolicy,
    replies: list[str],
) -> Record:
    """Aggregate the parsed rankings of one record (at least one parsed) into a ranked ``Record``."""
    n = len(rec.candidates)
    ref_id = n  # the paper's prompt calls the judge's own answer "Response <n>"
    orig_orders: list[list[int]] = []
    notes: list[str] = []
    ref_text = ""
    for perm, pr in zip(perms, parsed):
        if pr.order is None:
            continue
        orig_orders.append([perm[k] if k < n else ref_id for k in pr.order])
        notes += pr.notes
        if not ref_text and pr.response_4:
            ref_text = pr.response_4
    use_ref = policy.reference == "include" and bool(ref_text) and any(ref_id in o for o in orig_orders)
    if policy.reference == "include" and not use_ref:
        notes.append("reference requested but the reply has no Response 4 in its rank")
    items = list(range(n)) + ([ref_id] if use_ref else [])
    orders = [[k for k in o if k in items] for o in orig_orders]
    ranked_somewhere = {k for o in orders for k in o}
    if policy.missing == "drop":
        items = [k for k in items if k in ranked_somewhere]
    missing = [k for k in range(n) if k not in ranked_somewhere]
    pos_per_call = [positions([k for k in o if k in items], items) for o in orders]
    mean_pos = {k: sum(p[k] for p in pos_per_call) / len(pos_per_call) for k in items}
    final = sorted(items, key=lambda k: (mean_pos[k], k))  # stable: ties keep the original order
    m = len(items)
    taus = [kendall_tau_b([a[k] for k in items], [b[k] for k in items]) for a, b in combinations(pos_per_call, 2)]
    cands = []
    for k in final:
        if k == ref_id:
            c = Candidate(text=ref_text, source=judge_model)
        else:
            c = rec.candidates[k].model_copy()
        c.score = float(m - mean_pos[k])
        cands.append(c)
    details: dict[str, Any] = {
        "order": final,
        "orders": orig_orders,
        "calls": len(perms),
        "parsed": len(orig_orders),
        "missing": missing,
        "reference": policy.reference,
        "missing_policy": policy.missing,
    }
    if taus:
        details["kendall_tau"] = sum(taus) / len(taus)
    if notes:
        details["notes"] = sorted(set(notes))
    prov = dict(rec.provenance)
    prov["judge"] = {"replies": replies, "perms": perms}
    return rec.model_copy(update={"candidates": cands, "provenance": prov,
                                  "ranking": Ranking(by="judge", model=judge_model, method=method, details=details)})


# ----------------------------------------------------------------------------------------------- running a judge


def judge_candidates(records: list[Record], out: str, cfg: JudgeConfig, *, summary: str | None = None) -> str:
    """Rank each candidate set of ``records`` not yet in ``out`` with the judge ``cfg`` (``tuna judge``; the pipeline's
    contextual ranking). Replies are cached, calls retried and budgeted (:class:`tuna.feedback.client.JudgeClient`);
    a local llama.cpp judge is started for the run. Records whose replies cannot be read go to
    ``<out>.failed.jsonl`` and are asked again by the next run; a JSON summary goes to ``summary``
    (default ``<out>.summary.json``). A run after which ``out`` holds no ranked set raises
    :class:`tuna.errors.EmptyOutputError` with the counts by reason; an endpoint that is gone raises
    :class:`tuna.feedback.endpoint.EndpointDown` (nothing is written as failed for it)."""
    from tuna.feedback.client import ChatReply, ChatRequest
    from tuna.feedback.reask import complete_with_reask, default_batch_dir, open_client
    from tuna.feedback.sampling import quiet_http_logs
    from tuna.feedback.server import LlamaCppServer
    from tuna.models import cache_root

    if cfg.reference not in ("drop", "include"):
        raise TunaError(f"reference must be drop | include, got {cfg.reference!r}", field="reference")
    if cfg.missing not in ("last", "drop"):
        raise TunaError(f"missing must be last | drop, got {cfg.missing!r}", field="missing")
    if cfg.backend not in ("openai", "llamacpp", "hf"):
        raise TunaError(f"unknown backend {cfg.backend!r} (openai | llamacpp | hf)", field="backend")
    if cfg.parser not in ("robust", "released"):
        raise TunaError(f"parser must be robust | released, got {cfg.parser!r}", field="parser")
    if cfg.constrain not in ("none", "rank_grammar"):
        raise TunaError(f"constrain must be none | rank_grammar, got {cfg.constrain!r}", field="constrain")
    if cfg.constrain != "none" and cfg.backend == "hf":
        raise TunaError("constrain needs a server that accepts a GBNF grammar (backend llamacpp); "
                        "with backend hf use assistant_prefix", field="constrain")
    tmpl = PAPER_TEMPLATE
    method = "paper_prompt"
    if cfg.template:
        tp = Path(cfg.template)
        if not tp.exists():
            raise TunaError("template file does not exist", path=tp)
        tmpl = tp.read_text(encoding="utf-8")
        if "{responses}" not in tmpl or "{instruction}" not in tmpl:
            raise TunaError("template needs {instruction} and {responses} placeholders", path=tp)
        method = f"template:{tp.name}"
    quiet_http_logs()
    policy = JudgePolicy(reference=cfg.reference, missing=cfg.missing)
    short = next((r for r in records if len(r.candidates) < 2), None)
    if short is not None:
        raise TunaError(f"has {len(short.candidates)} candidate(s), at least 2 needed to rank", field=f"record {short.id}: candidates")
    failed_path = failed_path_for(out)
    previously_failed = 0
    if failed_path.exists():
        previously_failed = sum(1 for line in failed_path.read_text(encoding="utf-8").splitlines() if line.strip())
    app = JsonlAppender(out)
    todo = [r for r in records if r.id not in app.done_ids]
    if cfg.constrain == "rank_grammar":
        method += "+rank_grammar"
    if cfg.parser == "released":
        method += "+released_parser"
    if any(len(r.candidates) != 4 for r in todo) and not cfg.template:
        log.warning("the paper's prompt is written for 4 candidates (Response 0/1/2/3, reference = Response 4)")
    fail_app: JsonlAppender | None = None

    send_seed = cfg.backend in ("llamacpp", "hf") if cfg.request_seed is None else cfg.request_seed
    requests: list[ChatRequest] = []
    plan: dict[str, tuple[Record, list[list[int]]]] = {}
    for rec in todo:
        perms = shuffle_orders(len(rec.candidates), cfg.shuffles, cfg.seed, rec.id)
        plan[rec.id] = (rec, perms)
        instr = judge_instruction(rec, cfg.instruction_format)
        for j, perm in enumerate(perms):
            msgs = ([{"role": "system", "content": cfg.system_prompt}] if cfg.system_prompt else []) + [
                {"role": "user", "content": build_prompt(tmpl, instr, [rec.candidates[k].text for k in perm])}]
            grammar = rank_grammar(len(perm)) if cfg.constrain == "rank_grammar" else None
            requests.append(ChatRequest(messages=msgs, temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_tokens,
                                        seed=cfg.seed + j if send_seed else None, key=f"{rec.id}\x00{j}", grammar=grammar))

    got: dict[str, dict[int, ChatReply]] = {}
    stats: Counter = Counter()
    taus: list[float] = []

    parse = PARSERS[cfg.parser]
    parse_kw = {"fallback_scores": cfg.fallback_scores} if cfg.parser == "robust" else {}

    def parse_reply(text: str, n: int) -> ParsedRank:
        p = parse(text, n + 1, **parse_kw)
        if p.order is not None and not any(k < n for k in p.order):
            # e.g. 'rank: [4]': only the judge's own response; nothing to train on (the importer skips these too)
            p.order, p.reason = None, "rank list names only the judge's own response"
        return p

    def readable(req: ChatRequest, text: str) -> bool:
        return parse_reply(text, len(plan[req.key.split("\x00")[0]][0].candidates)).order is not None  # type: ignore[union-attr]

    attempts_of: dict[str, dict[int, list[ChatReply]]] = {}

    def on_final(i: int, tries: list[ChatReply]) -> None:
        req = requests[i]
        rid, j = req.key.split("\x00")  # type: ignore[union-attr]
        got.setdefault(rid, {})[int(j)] = tries[-1]
        attempts_of.setdefault(rid, {})[int(j)] = tries
        rec, perms = plan[rid]
        if len(got[rid]) < len(perms):
            return
        reps = [got[rid][k] for k in range(len(perms))]
        tried = attempts_of.pop(rid)
        stats["reasks"] += sum(len(tried[k]) - 1 for k in tried)
        attempts = [[{"text": t.text, "error": t.error} for t in tried[k]] for k in range(len(perms))]
        errors = [r.error for r in reps if r.error]
        parsed = [parse_reply(r.text or "", len(rec.candidates)) for r in reps]
        ok = [p for p in parsed if p.order is not None]
        if not ok:
            reason = ("budget" if "budget" in errors else f"error: {errors[0]}") if errors else f"unparseable: {parsed[0].reason}"
            stats[reason.split(":")[0]] += 1
            # fail_app is opened before the first call
            fail_app.write({"id": rid, "reason": reason, "replies": [r.text for r in reps], "errors": errors or None,  # type: ignore[union-attr]
                            "attempts": attempts})
        else:
            ranked = rank_record(rec, perms, parsed, judge_model=cfg.model, method=method, policy=policy,
                                 replies=[r.text or "" for r in reps])
            if any(len(a) > 1 for a in attempts):
                ranked.provenance["judge"]["attempts"] = attempts
            stats["ranked"] += 1
            if "kendall_tau" in ranked.ranking.details:  # type: ignore[union-attr]
                taus.append(ranked.ranking.details["kendall_tau"])  # type: ignore[union-attr]
            stats["parsed_calls"] += len(ok)
            app.write(ranked)
        stats["calls_total"] += len(reps)
        del got[rid]

    if cfg.mode == "batch" and cfg.backend != "openai":
        raise TunaError(f"mode batch needs backend openai (the Batch API), got {cfg.backend!r}", field="mode")
    if cfg.dry_run:
        from tuna.feedback.dryrun import estimate, print_estimate

        est = estimate(requests, cfg, candidates_chars=[sum(len(c.text) for c in plan[r.key.split("\x00")[0]][0].candidates)  # type: ignore[union-attr]
                                                        / len(plan[r.key.split("\x00")[0]][0].candidates) for r in requests])  # type: ignore[union-attr]
        print_estimate(est, title=f"judge dry run: {len(todo)} candidate sets ({len(records) - len(todo)} already in {out})")
        app.close()
        return out
    server = None
    t0 = time.monotonic()
    try:
        if cfg.backend == "llamacpp" and requests:
            server = LlamaCppServer(cfg.model, n_ctx=cfg.n_ctx, seed=cfg.seed).start()
            client_url, client_model = server.base_url, server.model
        else:
            client_url, client_model = cfg.base_url, cfg.model
        client = open_client(cfg, cache_dir=cfg.cache_dir or str(cache_root() / "judge_cache"), state_dir=default_batch_dir(out),
                             model=client_model, base_url=client_url)
        # This run's failures (a re-run retries everything not yet in `out` anyway). Cleared only once the
        # client is set up, so a run that cannot start leaves the previous list as it was.
        atomic_write_text(failed_path, "")
        fail_app = JsonlAppender(failed_path)
        with client:
            complete_with_reask(client, requests, accept=readable, reasks=cfg.reasks, desc="judge", on_final=on_final)
            ledger = client.ledger
    finally:
        if server is not None:
            server.stop()
        app.close()
        if fail_app is not None:
            fail_app.close()
    dt = time.monotonic() - t0
    counters = ("ranked", "parsed_calls", "calls_total", "reasks")
    n_failed = sum(v for k, v in stats.items() if k not in counters)
    summ = {
        "records": len(records), "already_done": len(records) - len(todo), "ranked": stats["ranked"], "failed": n_failed,
        "failed_by_reason": {k: v for k, v in stats.items() if k not in counters}, "reasks": stats["reasks"], "mode": cfg.mode,
        "previously_failed": previously_failed,
        "parse_rate_calls": stats["parsed_calls"] / max(stats["calls_total"], 1),
        "mean_kendall_tau_between_orders": sum(taus) / len(taus) if taus else None,
        "ledger": ledger, "seconds": dt,
        "records_per_s": len(todo) / dt if dt > 0 else 0.0,
    }
    atomic_write_json(summary or str(Path(out).with_suffix("")) + ".summary.json", summ)
    if not app.done_ids:
        # Stop here, saying why, rather than let the next step find an empty file.
        raise EmptyOutputError("judge", out=out, todo=len(todo), noun="candidate sets", done="ranked",
                               reasons=summ["failed_by_reason"], failures=failed_path,
                               hint="the replies are kept there" if stats["unparseable"] else "")
    led = summ["ledger"] or {}
    print(f"judge: {summ['ranked']} ranked, {n_failed} failed {summ['failed_by_reason'] or ''} "
          f"({summ['already_done']} already done) | calls {led.get('calls', 0)}, cache hits {led.get('cached', 0)}, "
          f"tokens {led.get('prompt_tokens', 0)}+{led.get('completion_tokens', 0)}, cost {led.get('cost', 0.0):.4f}, "
          f"{led.get('calls_per_s', 0.0):.2f} calls/s, {dt:.1f} s -> {out}" + (f"; failures in {failed_path}" if n_failed else ""))
    return out
