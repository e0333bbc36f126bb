#!/usr/bin/env bash
# Per-candidate turnaround of lm-evaluation-harness as a command evaluator, one-shot
# (`lm_eval` CLI per candidate) vs persistent (lm_eval_server.py, one HFLM for the run), on
# the toy models of `evomerge demo` and a local multiple-choice task (no hub access).
# Usage: evaluators/command/scripts/bench_lm_eval.sh [OUT_DIR] [CANDIDATES]
# Needs: an evomerge binary (EVOMERGE, default target/release/evomerge) and a Python with
# torch, transformers and lm_eval 0.4 (PYTHON, default .venv/bin/python).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
OUT=$(mkdir -p "${1:-/tmp/evomerge-lm-eval-bench}" && cd "${1:-/tmp/evomerge-lm-eval-bench}" && pwd)
N=${2:-8}
EVOMERGE=${EVOMERGE:-$ROOT/target/release/evomerge}
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
export HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

"$EVOMERGE" demo --out "$OUT/demo" > "$OUT/demo.log"
mkdir -p "$OUT/tasks"
"$PYTHON" - "$OUT/tasks/toy.jsonl" <<'PY'
import json, random, sys
random.seed(0)
with open(sys.argv[1], "w") as f:
    for i in range(20):
        ctx = " ".join(f"tok{random.randrange(3, 60)}" for _ in range(6))
        ch = [f"tok{random.randrange(3, 60)}" for _ in range(4)]
        f.write(json.dumps({"context": ctx, "choices": ch, "label": random.randrange(4)}) + "\n")
PY
cat > "$OUT/tasks/toy_mc.yaml" <<YAML
task: toy_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: $OUT/tasks/toy.jsonl
test_split: test
output_type: multiple_choice
doc_to_text: "{{context}}"
doc_to_choice: "{{choices}}"
doc_to_target: "{{label}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
YAML

LM_EVAL=$(dirname "$PYTHON")/lm_eval
for mode in ${MODES:-oneshot persistent}; do
  d="$OUT/$mode"
  rm -rf "$d" && mkdir -p "$d" && cp -r "$OUT/demo/search/models" "$d/models"
  if [ "$mode" = oneshot ]; then
    ev="command = '''$LM_EVAL --model hf --model_args pretrained={model_dir} --device cpu --tasks toy_mc --include_path $OUT/tasks --output_path {work_dir}/out'''
lm_eval = { task = \"toy_mc\", metric = \"acc,none\" }"
  else
    ev="persistent = true
command = '''$PYTHON $ROOT/evaluators/command/scripts/lm_eval_server.py --device cpu --tasks toy_mc --metric acc,none --include_path $OUT/tasks'''"
  fi
  cat > "$d/experiment.toml" <<TOML
name = "lm-eval-$mode"
seed = 3
output = "$d/results"

[sources]
base = "models/base"
models = ["models/a", "models/b"]

[genome]
kind = "ps"

[optimizer]
optimizer = "cma"

[budget]
evaluations = $N

[[evaluators]]
kind = "command"
timeout_s = 600
$ev
TOML
  start=$(date +%s.%N)
  "$EVOMERGE" run "$d/experiment.toml" > "$d/run.log" 2>&1
  end=$(date +%s.%N)
  csv=$(find "$d/results" -name candidates.csv | head -1)
  "$PYTHON" - "$csv" "$mode" "$start" "$end" <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1])))
ev = [float(r["eval_ms"]) for r in rows]
failed = sum(1 for r in rows if r.get("status", "ok") != "ok")
print(f"{sys.argv[2]}: {len(rows)} candidates ({failed} failed), eval_ms first {ev[0]:.0f}, "
      f"median of the rest {statistics.median(ev[1:]):.0f}, mean {statistics.mean(ev):.0f}; "
      f"whole run {float(sys.argv[4]) - float(sys.argv[3]):.1f} s")
PY
done
