#!/bin/bash
# evomerge vs mergekit 0.1.5 on the 0.49B bf16 Llamas of `evomerge bench merge --layers 8 ...`
# (BENCHMARKS.md, issue 16). Run from the repository root after building the release binary
# and writing results/bench-049b; needs mergekit in .venv. Back to back: mergekit-yaml, then
# evomerge merge, for TIES then DARE-TIES; then the tensor comparison.
set -e
mkdir -p results/cmp049
for m in ties dare_ties; do
  rm -rf results/cmp049/mk_$m results/cmp049/em_$m
  /usr/bin/time -v .venv/bin/mergekit-yaml benchmarks/mergekit/$m.yaml results/cmp049/mk_$m \
    > results/cmp049/mk_$m.log 2>&1
  /usr/bin/time -v target/release/evomerge merge benchmarks/mergekit/$m.yaml results/cmp049/em_$m -q \
    > results/cmp049/em_$m.log 2>&1
  grep -E "Elapsed|Maximum resident|User time|System time" results/cmp049/*_$m.log
  .venv/bin/python benchmarks/mergekit/compare.py results/cmp049/mk_$m results/cmp049/em_$m \
    results/bench-049b/base
done
