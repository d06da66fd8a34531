#!/usr/bin/env bash
# SQuAD v1.1 with Drop-and-Restore on MiniLM, sized for 2 CPU cores (about 30 minutes):
#   full fine-tuning -> LengthDrop from it (sandwich on start/end logits) + a small search scored by F1
#   -> the LengthDrop model at full length on the same held-out articles.
# Windows of 192 tokens (overlap 64) instead of 384/128, 2,000 training questions (1,000 for LengthDrop),
# 1 epoch each, and 400 questions of the held-out articles for validation and test: CPU time.
# Usage: benchmarks/squad_lengthdrop.sh [DATA_DIR=../shared/data] [OUT=runs/squad]
set -euo pipefail
DATA=${1:-../shared/data}
OUT=${2:-runs/squad}
PY=${PYTHON:-.venv/bin/python}
export WANDB_MODE=${WANDB_MODE:-offline} HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
COMMON=(task=squad "data_dir=$DATA" task.max_length=192 task.doc_stride=64 data.batch_size=16 logger=csv
        trainer.max_epochs=1 model.lr=1e-4 data.max_eval_samples=400)

run() {  # run <dir> <overrides...>: one dyntok.run unless <dir>/results.json exists
  local dir=$1; shift
  [ -f "$dir/results.json" ] && return 0
  "$PY" -m dyntok.run "${COMMON[@]}" "$@" "hydra.run.dir=$dir"
}

run "$OUT/full" data.max_train_samples=2000 label=full
# LengthDrop: 1,000 questions, one random sub-model besides the full and the smallest (3 passes a step);
# search on 100 validation questions, budget 0.6x MACs, no curves (each test pass is minutes on CPU)
run "$OUT/lengthdrop" method=lengthdrop "init_from=$OUT/full" data.max_train_samples=1000 method.layer_drop=0.0 \
    method.num_sandwich=1 method.search.max_examples=100 method.search.population=8 method.search.iterations=2 \
    method.search.mutations=6 method.search.crossovers=6 method.search.budget=0.6 method.search.curves=false \
    "label='lengthdrop (searched, 0.6x)'"
# the same LengthDrop model at full length (its own reference)
run "$OUT/lengthdrop_full_length" method=lengthdrop train=false "init_from=$OUT/lengthdrop" method.length_config=1.0 \
    "label='lengthdrop at full length'"
"$PY" -m dyntok.report "$OUT" --split test --out docs/squad_lengthdrop
