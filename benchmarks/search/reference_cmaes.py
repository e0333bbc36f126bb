"""Reference numbers for BENCHMARKS.md: the same protocol as `search_sweep`, run with the
Python `cmaes` library (CyberAgentAILab, Optuna's backend) instead of evomerge-search.

    python3 -m venv /tmp/cmaenv && /tmp/cmaenv/bin/pip install cmaes==0.13.1 numpy
    /tmp/cmaenv/bin/python benchmarks/search/reference_cmaes.py 2 /tmp/cmaes_runs.csv \
        > benchmarks/search/reference_cmaes.csv

Protocol (identical to crates/search/examples/search_sweep.rs): x0 = v in every coordinate,
no bounds, default population size, seed i for run i (numpy's generator, so runs differ from
ours run by run but not in distribution), success = first evaluation with f < 1e-8, budget per
run, the library's own termination test (`should_stop`). IPOP: on termination restart from x0
with twice the population, at most 9 restarts.

Left out, to keep the Python run under an hour on 2 cores (our cells all ran):
- IPOP-sep-CMA on Rastrigin for n >= 10: `cmaes.SepCMA` does not cap its rank-mu rate, which
  exceeds 1 once IPOP has doubled the population a few times; C then turns negative (the
  library warns "invalid value encountered in sqrt") and every run burns its whole budget.
  n = 2, 5 show the effect.
- sep-CMA on the rotated ellipsoid (it cannot learn a rotation: every run burns its budget),
  and on Rosenbrock beyond n = 10 and with 5 seeds only (sigma grows without bound while C
  shrinks, in `cmaes` as in ours).
- IPOP-CMA on Rastrigin at n = 40 (about 2e7 Python evaluations).
"""

import math
import os
import sys
from multiprocessing import Pool

import numpy as np
from cmaes import CMA, SepCMA

SEEDS = 25
DIMS = [2, 5, 10, 20, 40]
TARGET = 1e-8


def rotation(n):
    # any fixed orthogonal matrix will do: the distribution of results does not depend on it
    rng = np.random.default_rng(20260 + n)
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.sign(np.diag(r))


def objective(name, n):
    scales = np.array([1e6 ** (i / (n - 1)) for i in range(n)])
    if name == "sphere":
        return lambda x: float(x @ x)
    if name == "ellipsoid":
        return lambda x: float(scales @ (x * x))
    if name == "rotated-ellipsoid":
        rot = rotation(n)
        return lambda x: float(scales @ ((rot @ x) ** 2))
    if name == "rosenbrock":
        return lambda x: float(np.sum(100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2))
    if name == "rastrigin":
        return lambda x: float(10 * n + np.sum(x * x - 10 * np.cos(2 * np.pi * x)))
    raise ValueError(name)


PROTOCOL = {
    "sphere": (1.0, 1.0, 10_000, ["cma", "sep-cma"]),
    "ellipsoid": (1.0, 1.0, 10_000, ["cma", "sep-cma"]),
    "rotated-ellipsoid": (1.0, 1.0, 10_000, ["cma", "sep-cma"]),
    "rosenbrock": (0.2, 0.1, 10_000, ["cma", "sep-cma"]),
    "rastrigin": (3.0, 2.0, 100_000, ["ipop-cma", "ipop-sep-cma"]),
}


def run(task):
    function, n, optimizer, seed = task
    x0, sigma0, per_dim, _ = PROTOCOL[function]
    budget = per_dim * n
    f = objective(function, n)
    cls = SepCMA if "sep" in optimizer else CMA
    ipop = optimizer.startswith("ipop")
    popsize = 4 + math.floor(3 * math.log(n))
    evals, best, restarts = 0, math.inf, 0
    rng = np.random.default_rng(seed)
    while True:
        opt = cls(mean=np.full(n, x0), sigma=sigma0, seed=int(rng.integers(2**31)),
                  population_size=popsize)
        while evals < budget:
            solutions = []
            for _ in range(opt.population_size):
                x = opt.ask()
                value = f(x)
                evals += 1
                best = min(best, value)
                if value < TARGET:
                    return (function, n, optimizer, seed, evals, best, True)
                solutions.append((x, value))
            opt.tell(solutions)
            if opt.should_stop():
                break
        if not ipop or evals >= budget or restarts >= 9:
            return (function, n, optimizer, seed, evals, best, False)
        restarts += 1
        popsize *= 2


def skipped(fn, n, opt):
    return (
        (fn == "rastrigin" and opt == "ipop-sep-cma" and n >= 10)
        or (fn == "rastrigin" and n == 40)
        or (fn == "rotated-ellipsoid" and opt == "sep-cma")
        or (fn == "rosenbrock" and opt == "sep-cma" and n > 10)
    )


def seeds(fn, opt):
    return 5 if (fn, opt) == ("rosenbrock", "sep-cma") else SEEDS


def main():
    tasks = [(fn, n, opt, s) for fn, (_, _, _, opts) in PROTOCOL.items()
             for n in DIMS for opt in opts for s in range(seeds(fn, opt))
             if not skipped(fn, n, opt)]
    procs = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    # runs already in the raw file (an interrupted invocation) are not repeated
    path = sys.argv[2] if len(sys.argv) > 2 else os.devnull
    rows = []
    if os.path.exists(path) and path != os.devnull:
        with open(path) as f:
            for line in f:
                fn, n, opt, seed, evals, best, ok = line.strip().split(",")
                rows.append((fn, int(n), opt, int(seed), int(evals), float(best), ok == "True"))
    done = {r[:4] for r in rows}
    tasks = [t for t in tasks if t not in done]
    raw = open(path, "a")
    with Pool(procs) as pool:
        for row in pool.imap_unordered(run, tasks, chunksize=1):
            rows.append(row)
            print(",".join(str(v) for v in row), file=raw, flush=True)
    print("function,dim,optimizer,x0,sigma0,max_evaluations,runs,successes,success_rate,"
          "median_evaluations,ert")
    for fn, (x0, sigma0, per_dim, opts) in PROTOCOL.items():
        for n in DIMS:
            for opt in opts:
                if skipped(fn, n, opt):
                    continue
                cell = [r for r in rows if r[0] == fn and r[1] == n and r[2] == opt]
                ok = [r[4] for r in cell if r[6]]
                total = sum(r[4] for r in cell)
                med = f"{np.median(ok):.0f}" if ok else ""
                ert = f"{total / len(ok):.0f}" if ok else ""
                print(f"{fn},{n},{opt},{x0:g},{sigma0:g},{per_dim * n},{len(cell)},{len(ok)},"
                      f"{len(ok) / len(cell):.2f},{med},{ert}")


if __name__ == "__main__":
    main()
