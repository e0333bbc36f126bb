#!/usr/bin/env bash
# The mini reproduction over several worlds: is the result a property of the recipe, or of one
# lucky world?
#   experiments/mini-evollm-jp/multi-world.sh [WORLD_SEEDS...]      (default: 1 2 3)
# builds one world per world seed (`mini-world build DIR --seed W`, plus WORLD_ARGS, e.g.
# "--layers 6"), runs every experiment of this folder on each over the search seeds SEEDS
# (default "1 2 3") with run-all.sh, and writes OUT/summary.md: per strategy, the test fitness
# (strict JA-math accuracy, %) as mean ± sd over worlds (of each world's mean over seeds) and the
# mean of the within-world sd over seeds, its gain over each world's best source, and the
# smallest gain of any world; then the sources and untuned baselines the same way.
# Env: SEEDS, EXPS (as run-all.sh), WORLD_ARGS, OUT (default results/mini-multi), JOBS,
# SUMMARY_ONLY (only write the summary of what OUT holds).
# Run it from the repository root after `cargo build --release -p evomerge`.
set -euo pipefail
root=$(pwd)
bin=${EVOMERGE:-$root/target/release/evomerge}
here=experiments/mini-evollm-jp
worlds=("${@:-1 2 3}")
read -r -a worlds <<< "${worlds[*]}"
seeds=${SEEDS:-"1 2 3"}
out=${OUT:-results/mini-multi}
start=$(date +%s)
mkdir -p "$out"
for w in "${worlds[@]}"; do
  # SUMMARY_ONLY=1: tabulate the worlds already run under OUT (e.g. worlds run by separate
  # calls with different SEEDS) without building or running anything
  [ -n "${SUMMARY_ONLY:-}" ] && break
  echo "== world $w ($(($(date +%s) - start))s)"
  t0=$(date +%s)
  mkdir -p "$out/world$w"
  # shellcheck disable=SC2086
  "$bin" mini-world build "$out/world$w/world" --seed "$w" ${WORLD_ARGS:-} > "$out/world$w/build.log" 2>&1 \
    || { echo "world $w: the build failed, see $out/world$w/build.log" >&2; exit 1; }
  echo "   built in $(($(date +%s) - t0))s"
  echo "$(($(date +%s) - t0))" > "$out/world$w/build.seconds"
  t0=$(date +%s)
  # run-all.sh builds (here: reuses) the world, runs the experiments and compares them
  # shellcheck disable=SC2086
  WORLD="$out/world$w/world" WORLD_ARGS="--seed $w ${WORLD_ARGS:-}" OUT="$out/world$w/runs" \
    EVOMERGE="$bin" "$here/run-all.sh" $seeds \
    > "$out/world$w/runs.log" 2>&1 || { echo "world $w: a run failed, see $out/world$w/runs.log" >&2; exit 1; }
  echo "   searched in $(($(date +%s) - t0))s"
  echo "$(($(date +%s) - t0))" > "$out/world$w/search.seconds"
done

# The summary, from every finished run's results.csv (its best recipe and the sources and
# untuned baselines of its world), the strategy named by the run's experiment folder.
python3 - "$out" "$seeds" "${WORLD_ARGS:-}" "${worlds[@]}" > "$out/summary.md" <<'PY'
import csv, glob, os, statistics as st, sys
out, seeds, world_args, worlds = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
per = {}    # (name, kind) -> world -> [test fitness %, one per run]
staged = {}  # staged experiment -> [runs, runs whose last stage became the result]
best = {}   # world -> best source's test fitness %
for w in worlds:
    # every finished run under the world's folder (runs of several calls with other SEEDS
    # included): OUT/worldW/runs/EXPERIMENT/seedS/results.csv
    for res in sorted(glob.glob(f"{out}/world{w}/runs/*/seed*/results.csv")):
        experiment = os.path.basename(os.path.dirname(os.path.dirname(res)))
        with open(res, newline="") as f:
            rows = [r for r in csv.DictReader(f) if r["split"] == "test" and r["fitness"]]
        # a staged run (PS+DFS) reports each stage's best; the run's result is the last one.
        # A `stage` row is a later stage's answer that did not become the result (a DFS stage
        # that validated no higher than the PS result): counted, not tabulated.
        bests = [r for r in rows if r["kind"] == "best"]
        if len(bests) > 1:
            staged[experiment] = staged.get(experiment, [0, 0])
            staged[experiment][0] += 1
            staged[experiment][1] += not any(r["kind"] == "stage" for r in rows)
        for row in bests[-1:] + [r for r in rows if r["kind"] not in ("best", "stage")]:
            name = experiment if row["kind"] == "best" else row["name"]
            per.setdefault((name, row["kind"]), {}).setdefault(w, []).append(100 * float(row["fitness"]))
    # the best of the models merged: the three experts and the base they share
    best[w] = max(st.mean(v[w]) for (n, k), v in per.items() if k in ("source", "base") and w in v)
print(f"# The mini reproduction over worlds {' '.join(worlds)} x search seeds {seeds}\n")
print("Test fitness (strict JA-math accuracy, %). Per world: the mean over its runs; then the mean")
print("and sd of those over worlds, and the mean within-world sd over search seeds. Gain: over that")
print("world's best source or base (mean over worlds, and the smallest of any world). Command:")
print(f"`WORLD_ARGS=\"{world_args}\" SEEDS=\"{seeds}\" experiments/mini-evollm-jp/multi-world.sh {' '.join(worlds)}`.\n")
print("| strategy / model | kind | mean over worlds | sd over worlds | sd over seeds | gain over best source | smallest gain |")
print("|---|---|---:|---:|---:|---:|---:|")
order = {"best": 0, "baseline": 1, "source": 2, "base": 3}
rows = []
for (name, kind), by_world in per.items():
    means = {w: st.mean(v) for w, v in by_world.items()}
    sds = [st.stdev(v) for v in by_world.values() if len(v) > 1]
    gains = [means[w] - best[w] for w in means]
    rows.append((order.get(kind, 9), -st.mean(means.values()), name, kind, st.mean(means.values()),
                 st.stdev(means.values()) if len(means) > 1 else 0.0,
                 st.mean(sds) if sds else 0.0, st.mean(gains), min(gains)))
for r in sorted(rows):
    print(f"| {r[2]} | {r[3]} | {r[4]:.1f} | {r[5]:.1f} | {r[6]:.1f} | {r[7]:+.1f} | {r[8]:+.1f} |")
print()
for w in worlds:
    secs = []
    for part in ("build", "search"):
        try:
            with open(f"{out}/world{w}/{part}.seconds") as f:
                secs.append(f"{part} {int(f.read())} s")
        except (OSError, ValueError):
            pass
    took = f" ({', '.join(secs)})" if secs else ""
    print(f"World {w}: best source {best[w]:.1f}{took}; every strategy: `{out}/world{w}/runs/compare/compare.md`.")

# The issue's targets, checked on this table (a strategy that did not run is skipped).
def world_means(prefix):
    for (name, kind), by_world in per.items():
        if kind == "best" and name == prefix:
            return {w: st.mean(v) for w, v in by_world.items()}
    return None

def sd(xs):
    return st.stdev(xs) if len(xs) > 1 else 0.0

def verdict(ok):
    return "**met**" if ok else "**missed**"

lines = []
ps_layers = world_means("mini-ps-layers")
if ps_layers:
    gains = [ps_layers[w] - best[w] for w in ps_layers]
    lines.append(f"- layer-wise PS gain over the best source: mean {st.mean(gains):+.1f} ± {sd(gains):.1f} "
                 f"(target >= +20): {verdict(st.mean(gains) >= 20)}; smallest {min(gains):+.1f} "
                 f"(target >= +10 in every world): {verdict(min(gains) >= 10)}")
def pair(a, b, what, strict):
    x, y = world_means(a), world_means(b)
    if not x or not y:
        return
    d = [x[w] - y[w] for w in x if w in y]
    ok = st.mean(d) > 0 if strict else st.mean(d) >= 0
    lines.append(f"- {what}: {st.mean(x.values()):.1f} vs {st.mean(y.values()):.1f}, difference "
                 f"{st.mean(d):+.1f} ± {sd(d):.1f} over worlds (target {'>' if strict else '>='} 0): "
                 f"{verdict(ok)}")
pair("mini-ps-dfs", "mini-ps", "PS+DFS vs PS", False)
if "mini-ps-dfs" in staged:
    runs, won = staged["mini-ps-dfs"]
    lines.append(f"  (the DFS stage's answer became the result in {won} of {runs} PS+DFS runs; in the "
                 f"others it validated no higher than the PS result, which stayed the answer)")
dfs = world_means("mini-dfs")
if dfs:
    gains = [dfs[w] - best[w] for w in dfs]
    lines.append(f"- DFS alone vs the best source: gain {st.mean(gains):+.1f} ± {sd(gains):.1f} "
                 f"(target > 0): {verdict(st.mean(gains) > 0)}")
pair("mini-dfs", "mini-dfs-no-w", "DFS with W vs without W", True)
if lines:
    print("\n## Targets (issue 19)\n")
    print("\n".join(lines))
PY
cat "$out/summary.md"
echo "all done in $(($(date +%s) - start))s"
