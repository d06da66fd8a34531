#!/usr/bin/env bash
# SQuAD v1.1 with Drop-and-Restore on MiniLM at the paper's window size, for one GPU (about 6 minutes on an
# H100 with bf16 autocast): all 36 training articles (10,111 questions, windows of 384 tokens, stride 128),
#   full fine-tuning (2 epochs, lr 1e-4) -> LengthDrop from it (2 epochs, one random sub-model besides the
#   full and the smallest) + a small search scored by F1 on 200 validation questions, budget 0.6x MACs
#   -> the LengthDrop model at full length and at a constant 0.6 ratio.
# Usage: benchmarks/squad_gpu.sh [DATA_DIR=../shared/data] [OUT=runs/squad_gpu] [P=0.35]
set -euo pipefail
DATA=${1:-../shared/data}
OUT=${2:-runs/squad_gpu}
P=${3:-0.35}
PY=${PYTHON:-.venv/bin/python}
export WANDB_MODE=${WANDB_MODE:-offline} HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
COMMON=(task=squad "data_dir=$DATA" device=gpu logger=csv model.lr=1e-4 trainer.max_epochs=2 data.num_workers=2
        data.eval_batch_size=256)

run() {  # run <dir> <overrides...>: one dyntok.run unless <dir>/results.json exists
  local dir=$1; shift
  [ -f "$dir/results.json" ] && return 0
  "$PY" -m dyntok.run "${COMMON[@]}" "$@" "hydra.run.dir=$dir"
}

run "$OUT/full" method=full label=full
run "$OUT/lengthdrop" method=lengthdrop "init_from=$OUT/full" method.layer_drop=0.0 "method.length_drop_prob=$P" \
    method.num_sandwich=1 method.search.max_examples=200 method.search.population=8 method.search.iterations=3 \
    method.search.mutations=8 method.search.crossovers=8 method.search.budget=0.6 method.search.curves=false \
    "label='lengthdrop (searched, 0.6x)'"
for spec in "1.0 full_length" "0.6 const_0.6"; do
  set -- $spec
  run "$OUT/lengthdrop_$2" method=lengthdrop train=false "init_from=$OUT/lengthdrop" "method.length_config=$1" \
      "label='lengthdrop at $2'"
done
"$PY" -m dyntok.report "$OUT" --split test --out "$OUT/report"
