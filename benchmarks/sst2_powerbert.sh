#!/usr/bin/env bash
# PoWER-BERT on SST-2 with MiniLM (experiment=sst2_powerbert: its published settings, inputs counted at 64 tokens),
# from the method=full model of docs/benchmarks/sst2.md: one epoch of configuration search over the 67,349 training
# phrases, then one of re-training with hard extraction. About 25 minutes on 2 CPU cores.
# Usage: benchmarks/sst2_powerbert.sh [DATA_DIR=../shared/data/glue] [OUT=runs/sst2]
# The run's results.json goes to docs/benchmarks/sst2/powerbert/; skipped when it is there.
set -euo pipefail
DATA=${1:-../shared/data/glue}
OUT=${2:-runs/sst2}
DOCS=docs/benchmarks/sst2/powerbert
PY=${PYTHON:-.venv/bin/python}
export WANDB_MODE=${WANDB_MODE:-offline} HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}

[ -f "$DOCS/results.json" ] && exit 0
[ -f "$OUT/full/results.json" ] || "$PY" -m dyntok.run experiment=sst2_full "data_dir=$DATA" "hydra.run.dir=$OUT/full"
[ -f "$OUT/powerbert/results.json" ] || "$PY" -m dyntok.run experiment=sst2_powerbert "init_from=$OUT/full" \
  "data_dir=$DATA" "hydra.run.dir=$OUT/powerbert"
mkdir -p "$DOCS"
cp "$OUT/powerbert/results.json" "$DOCS/results.json"
