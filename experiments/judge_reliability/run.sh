#!/usr/bin/env bash
# Judge reliability of the embedded judge (SmolLM2-135M-Instruct behind llama.cpp, the paper's prompt, the rank
# grammar), at the paper's judge temperature 1.0, on 60 real Alpaca instructions whose 4 candidates have a verifiable
# order (its own gold response, another instruction's gold, "I don't know.", the gold cut to a quarter; shown order
# shuffled per set), ranked by the verifier ROUGE-L F against the gold (evaluation/verifiable.py, `tuna rank`).
# 50 sets x 2 orders x 2 asks = 200 asks (repeat asks reuse the whole prompt in the server: cheap); ~10 min on 2 cores.   bash experiments/judge_reliability/run.sh [runs/judge_reliability]
set -euo pipefail
RUN=${1:-runs/judge_reliability}
mkdir -p "$RUN"
python - "$RUN/sets.jsonl" <<'PY'
import sys
sys.path.insert(0, "benchmarks")
from pathlib import Path
from judge import make_sets  # benchmarks/judge.py: gold / off_topic / refusal / cut, shown order shuffled per set
make_sets(60, offset=3000, seed=0, path=Path(sys.argv[1]))
PY
tuna rank --input "$RUN/sets.jsonl" --out "$RUN/verifier_ranked.jsonl" --by rouge_l
tuna judge-reliability --config experiments/feedback/judge_smollm2_local.yaml --temperature 1.0 \
    --input "$RUN/sets.jsonl" --reference "$RUN/verifier_ranked.jsonl" --sample 50 --orders 2 --repeats 2 \
    --cache_dir "$RUN/cache" --out_dir results/judge_reliability
