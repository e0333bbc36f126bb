#!/usr/bin/env bash
# The mini Japanese-math reproduction (issue 7), end to end:
#   experiments/mini-evollm-jp/run-all.sh [SEEDS...]      (default seeds: 1)
# builds (or reuses) the world in results/mini-world, runs every experiment of this folder once
# per seed, and writes the strategy comparison into results/mini-evollm-jp/compare.
# Env: EXPS (which experiments), WORLD and OUT (other folders, relative to the repository root),
# WORLD_ARGS (options of `mini-world build` for WORLD, e.g. "--seed 2"),
# JOBS (experiments run at once, default 2: one run alone leaves a core idle between generations
# and in its final report; the results do not depend on it). Each run's log: OUT/NAME/seedS.log.
# Run it from the repository root after `cargo build --release -p evomerge`.
set -euo pipefail
root=$(pwd)
bin=${EVOMERGE:-$root/target/release/evomerge}
here=experiments/mini-evollm-jp
seeds=("${@:-1}")
exps=${EXPS:-"ps ps-ties ps-layers ps-ga ps-random dfs dfs-no-w ps-dfs"}
world=${WORLD:-results/mini-world}        # where the world is built (or reused)
out=${OUT:-results/mini-evollm-jp}        # where the runs go
start=$(date +%s)
# shellcheck disable=SC2086
"$bin" mini-world build "$world" ${WORLD_ARGS:-}
mkdir -p "$out/seeds"
jobs=${JOBS:-2}
runs=()
one() {  # one experiment file: run (or resume) it, then draw its plots
  local f=$1 name=$2 s=$3
  if [ -f "$out/$name/seed$s/run.toml" ]; then
    "$bin" resume "$out/$name/seed$s" -q   # finish (or re-report) an earlier run
  else
    "$bin" run "$f" -q
  fi
  "$bin" plot "$out/$name/seed$s" > /dev/null || true
}
running=0
for s in "${seeds[@]}"; do
  for e in $exps; do
    f=$out/seeds/$e.seed$s.toml
    # same experiment, another seed; the world's paths made absolute so the copy can live here
    sed -e "s/^seed = .*/seed = $s/" -e "s#\.\./\.\./results/mini-world#$root/$world#g" \
      -e "s#^output = .*#output = \"$out\"#" "$here/$e.toml" > "$f"
    name=$(sed -n 's/^name = "\(.*\)"/\1/p' "$f")
    if [ "$running" -ge "$jobs" ]; then
      wait -n || { echo "a run failed; see its log under $out" >&2; wait; exit 1; }
      running=$((running - 1))
    fi
    echo "== $e seed $s ($(($(date +%s) - start))s; log: $out/$name/seed$s.log)"
    mkdir -p "$out/$name"
    one "$f" "$name" "$s" > "$out/$name/seed$s.log" 2>&1 &
    running=$((running + 1))
    runs+=("$out/$name/seed$s")
  done
done
while [ "$running" -gt 0 ]; do
  wait -n || { echo "a run failed; see its log under $out" >&2; wait; exit 1; }
  running=$((running - 1))
done
"$bin" compare "${runs[@]}" --out "$out/compare"
echo "all done in $(($(date +%s) - start))s"
