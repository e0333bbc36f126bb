"""Markdown table for BENCHMARKS.md from summary.csv (evomerge-search) and
reference_cmaes.csv (the Python `cmaes` library, same protocol).

    python3 benchmarks/search/table.py
"""

import csv
import os

HERE = os.path.dirname(os.path.abspath(__file__))


def load(name):
    with open(os.path.join(HERE, name)) as f:
        return {(r["function"], r["dim"], r["optimizer"]): r for r in csv.DictReader(f)}


ours = load("summary.csv")
ref = load("reference_cmaes.csv") if os.path.exists(os.path.join(HERE, "reference_cmaes.csv")) else {}

print("| function | n | x0, σ0 | budget | optimizer | success | median evals (min–max) | ERT "
      "| `cmaes` success | `cmaes` median | median ratio ours/`cmaes` |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for key, r in ours.items():
    c = ref.get(key)
    med = r["median_evaluations"]
    rng = f" ({r['min_evaluations']}–{r['max_evaluations_success']})" if med else ""
    c_succ = f"{c['successes']}/{c['runs']}" if c else "–"
    c_med = (c["median_evaluations"] or "–") if c else "–"
    # medians compare only where both reached the target equally often
    same_rate = c and c["successes"] == r["successes"] and c["runs"] == r["runs"]
    ratio = (f"{float(med) / float(c['median_evaluations']):.2f}"
             if same_rate and med and c["median_evaluations"] else "–")
    print(f"| {r['function']} | {r['dim']} | {r['x0']}, {r['sigma0']} | {r['max_evaluations']} "
          f"| {r['optimizer']} | {r['successes']}/{r['runs']} | {med or '–'}{rng} "
          f"| {r['ert'] or '–'} | {c_succ} | {c_med} | {ratio} |")
