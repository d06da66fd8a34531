#!/usr/bin/env bash
# README's main job, exactly as README gives it (`python -m dyntok.run`: gates on Rotten Tomatoes, W&B offline),
# on 3 seeds, and its reference `method=full` trained as long, on the same 3 seeds: the records behind README's
# main-job sentence. About 8 minutes a run on 2 cores of an AMD EPYC (3-4 on an Intel Xeon).
# Usage: benchmarks/main_job.sh [STAGE=gates|full|all]
# Each run's results.json goes to docs/benchmarks/rotten_tomatoes/main_job/<method>_seed<N>/ as it finishes; a
# run recorded there is skipped, and a run killed midway resumes (its outputs/ folder is kept), so a killed
# script resumes by rerunning. A finished outputs/ folder without a record there (an older commit's) starts over.
set -euo pipefail
STAGE=${1:-all}
DOCS=docs/benchmarks/rotten_tomatoes/main_job
PY=${PYTHON:-.venv/bin/python}
export HF_HUB_OFFLINE=1 WANDB_MODE=${WANDB_MODE:-offline}

run() {  # run <method> <seed>: README's command (seed 42: no override at all) into its default outputs/ folder
  local method=$1 seed=$2 args=() dir
  [ "$method" != gates ] && args+=("method=$method")
  [ "$seed" != 42 ] && args+=("seed=$seed")
  [ -f "$DOCS/${method}_seed$seed/results.json" ] && return 0
  dir=$("$PY" -c 'import sys; from dyntok.run import run_id; a = sorted(sys.argv[1:]); m = next((x[7:] for x in a if x.startswith("method=")), "gates"); print("outputs/rotten_tomatoes/" + m + "/" + run_id(",".join(a)))' "${args[@]}")
  [ -f "$dir/results.json" ] && rm -rf "$dir"  # finished by an older commit: not this record
  local what="${args[*]}"
  echo "$(date -u +%H:%M:%S) main job: python -m dyntok.run ${what} -> $dir" >&2
  "$PY" -m dyntok.run "${args[@]}" | tee "/tmp/main_job_${method}_$seed.log"
  written=$(sed -n 's/^results: //p' "/tmp/main_job_${method}_$seed.log")
  [ "$written" -ef "$dir/results.json" ] || { echo "main_job.sh: the run wrote $written, not $dir" >&2; exit 1; }
  mkdir -p "$DOCS/${method}_seed$seed"
  cp "$dir/results.json" "$DOCS/${method}_seed$seed/results.json"
}

for seed in 42 1 2; do
  case $STAGE in gates|all) run gates "$seed" ;; esac
done
for seed in 42 1 2; do
  case $STAGE in full|all) run full "$seed" ;; esac
done
