#!/usr/bin/env bash
# Data-using merges of the mini world's language models (issue 8, "for the Llama-family
# models' linear layers"): the JA expert + the second math expert merged with linear, TIES,
# RegMean (alpha 0.1 / 0.9 / 1), Fisher (normalised or not) and a greedy soup, each scored on
# the JA-math test split (strict: right number in JA) and EN math.
# Needs the world: `evomerge mini-world build results/mini-world` (about 14 minutes).
# Usage (from the repository root): bash experiments/lm-data-merges/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
EVO=${EVO:-target/release/evomerge}
[ -x "$EVO" ] || cargo build --release -p evomerge
W=results/mini-world
OUT=results/lm-data-merges
[ -d "$W/models/ja" ] || { echo "no mini world at $W; run: $EVO mini-world build $W" >&2; exit 1; }
mkdir -p "$OUT/data" "$OUT/merged"
# Each expert's own training distribution (a seed the training never drew from) and held-out
# target text for the greedy soup's validation.
"$EVO" mini-world corpus ja "$OUT/data/ja.txt" --samples 256 --seed 7
"$EVO" mini-world corpus math2 "$OUT/data/math2.txt" --samples 256 --seed 7
"$EVO" mini-world corpus ja-math "$OUT/data/ja_math_val.txt" --samples 128 --seed 8
merged=()
for r in experiments/lm-data-merges/*.toml; do
  name=$(basename "$r" .toml)
  start=$(date +%s.%N)
  "$EVO" merge "$r" "$OUT/merged/$name" --force --quiet
  echo "$name: $(echo "$(date +%s.%N) - $start" | bc) s" | tee -a "$OUT/merge_times.txt"
  merged+=("$OUT/merged/$name")
done
"$EVO" mini-world eval "$W" --extra "${merged[@]}" --json "$OUT/scores.json" | tee "$OUT/scores.md"
