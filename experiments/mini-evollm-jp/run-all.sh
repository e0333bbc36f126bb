#!/usr/bin/env bash
# The mini Japanese-math reproduction (issue 7), end to end:
#   experiments/mini-evollm-jp/run-all.sh [SEEDS...]      (default seeds: 1)
# builds (or reuses) the world in results/mini-world, runs every experiment of this folder once
# per seed, and writes the strategy comparison into results/mini-evollm-jp/compare.
# Run it from the repository root after `cargo build --release -p evomerge`.
set -euo pipefail
root=$(pwd)
bin=${EVOMERGE:-$root/target/release/evomerge}
here=experiments/mini-evollm-jp
seeds=("${@:-1}")
exps=${EXPS:-"ps ps-ties ps-layers ps-ga ps-random dfs dfs-no-w ps-dfs"}
start=$(date +%s)
"$bin" mini-world build results/mini-world
mkdir -p results/mini-evollm-jp/seeds
runs=()
for s in "${seeds[@]}"; do
  for e in $exps; do
    f=results/mini-evollm-jp/seeds/$e.seed$s.toml
    # same experiment, another seed; the world's paths made absolute so the copy can live here
    sed -e "s/^seed = .*/seed = $s/" -e "s#\.\./\.\./results/mini-world#$root/results/mini-world#g" \
      "$here/$e.toml" > "$f"
    name=$(sed -n 's/^name = "\(.*\)"/\1/p' "$f")
    echo "== $e seed $s ($(($(date +%s) - start))s)"
    "$bin" run "$f" -q
    "$bin" plot "results/mini-evollm-jp/$name/seed$s" > /dev/null || true
    runs+=("results/mini-evollm-jp/$name/seed$s")
  done
done
"$bin" compare "${runs[@]}" --out results/mini-evollm-jp/compare
echo "all done in $(($(date +%s) - start))s"
