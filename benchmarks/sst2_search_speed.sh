#!/usr/bin/env bash
# How fast the Length-Adaptive Transformer search runs on 2 CPU cores, and what racing buys.
#
# One LengthDrop MiniLM trained on SST-2 (one command: 1 epoch of plain fine-tuning, then 1 epoch of LengthDrop
# with the sandwich rule, p = 0.35, LayerDrop 0.2, on 8,000 training examples), then the authors' search shape
# (population 20, 30 mutations + 30 crossovers an iteration) for 3 iterations on 1,000 held-out training
# sentences of >= 15 tokens, four times:
#   exact_cache0     exact scoring, no prefix cache          (method.search.cache_mb=0)
#   exact_cache1024  exact scoring, 1 GB prefix cache        (same genes: the frontier must be identical)
#   racing           racing, 1 GB prefix cache               (method.search.racing=true)
#   bf16             exact scoring in bfloat16, 1 GB cache   (method.search.precision=bf16)
#   profile          one iteration of exact scoring under torch.profiler (where the time goes)
# Each stage takes under 15 minutes here and writes its small outputs under docs/benchmarks/sst2_search_speed/
# <stage>/ (results.json, frontier.json, the search store, the log's last lines; never checkpoints); a stage whose outputs are
# there is skipped, so rerunning resumes. A stage whose training checkpoint is gone retrains it (the log says so).
# The last step prints the table (docs/benchmarks/sst2_search_speed/table.md) with the projection of the
# authors' full search. Time the stages with nothing else running on the machine.
# Usage: benchmarks/sst2_search_speed.sh [DATA_DIR=../shared/data/glue] [RUNS=runs/sst2_search_speed]
set -euo pipefail
DATA=${1:-../shared/data/glue}
RUNS=${2:-runs/sst2_search_speed}
DOCS=docs/benchmarks/sst2_search_speed
PY=${PYTHON:-.venv/bin/python}
export WANDB_MODE=${WANDB_MODE:-offline} HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
mkdir -p "$DOCS" "$RUNS"
COMMON=(task=sst2 "data_dir=$DATA" data.max_train_samples=8000 logger=csv)
SEARCH=(method=lengthdrop train=false "init_from=$RUNS/train" method.search.min_length=15
        method.search.max_examples=1000 method.search.population=20 method.search.mutations=30
        method.search.crossovers=30 method.search.iterations=3 method.search.curves=false)

keep() {  # keep <stage> <run dir>: the stage's small outputs under docs/
  local stage=$1 dir=$2
  mkdir -p "$DOCS/$stage"
  for f in results.json frontier.json frontier.tsv search_store.jsonl; do [ -f "$dir/$f" ] && cp "$dir/$f" "$DOCS/$stage/"; done
  tail -n 40 "$RUNS/$stage.log" > "$DOCS/$stage/log_tail.txt"
}

stage() {  # stage <name> <overrides...>: one dyntok.run unless docs/.../<name>/results.json exists
  local name=$1; shift
  if [ -f "$DOCS/$name/results.json" ]; then echo "[$name] done before: skipped"; return 0; fi
  echo "[$name] started $(date -u +%H:%M:%S)"
  "$PY" -m dyntok.run "${COMMON[@]}" "$@" "hydra.run.dir=$RUNS/$name" > "$RUNS/$name.log" 2>&1
  keep "$name" "$RUNS/$name"
  echo "[$name] finished $(date -u +%H:%M:%S)"
}

if [ ! -f "$RUNS/train/results.json" ]; then
  [ -f "$DOCS/train/results.json" ] && echo "[train] checkpoint gone from $RUNS/train: retraining"
  rm -f "$DOCS/train/results.json"
fi
stage train method=lengthdrop method.finetune_epochs=1 trainer.max_epochs=2 method.search.enabled=false \
    "label='lengthdrop (full length)'"
stage exact_cache0 "${SEARCH[@]}" method.search.cache_mb=0 "label='searched, exact, no cache'"
stage exact_cache1024 "${SEARCH[@]}" method.search.cache_mb=1024 "label='searched, exact, 1 GB cache'"
stage racing "${SEARCH[@]}" method.search.cache_mb=1024 method.search.racing=true "label='searched, racing'"
stage bf16 "${SEARCH[@]}" method.search.cache_mb=1024 method.search.precision=bf16 "label='searched, bf16 scoring'"
[ -f "$DOCS/bf16/chosen_fp32.json" ] || "$PY" benchmarks/score_genes.py "$RUNS/train" "$DATA" \
    "$DOCS/bf16/results.json" "$DOCS/bf16/chosen_fp32.json"  # the bf16 choice scored in fp32
if [ ! -f "$DOCS/profile/profile.txt" ]; then
  echo "[profile] started $(date -u +%H:%M:%S)"
  mkdir -p "$DOCS/profile"
  "$PY" benchmarks/profile_search.py "$RUNS/train" "$DATA" > "$DOCS/profile/profile.txt" 2> "$RUNS/profile.log"
  echo "[profile] finished $(date -u +%H:%M:%S)"
fi
"$PY" benchmarks/search_speed_table.py "$DOCS" | tee "$DOCS/table.md"
