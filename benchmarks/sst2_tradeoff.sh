#!/usr/bin/env bash
# SST-2 accuracy/compute trade-off with MiniLM, every method on the same recipe (16,000 training
# sentences, 2 epochs), reported on the SST-2 dev set, then measured side by side (dyntok.compare):
#   full fine-tuning -> untrained extraction -> gates over a lambda grid -> LengthDrop + search.
# About 2.5 hours on 2 CPU cores after the full model (10 minutes).
# Usage: benchmarks/sst2_tradeoff.sh [DATA_DIR=../shared/data/glue] [OUT=runs/sst2]
# Every stage skips work already done (results.json present), so a killed run is resumed by rerunning.
set -euo pipefail
DATA=${1:-../shared/data/glue}
OUT=${2:-runs/sst2}
PY=${PYTHON:-.venv/bin/python}
export WANDB_MODE=${WANDB_MODE:-offline} HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
COMMON=(task=sst2 "data_dir=$DATA" data.max_train_samples=16000 data.length_bucketing=true logger=csv)

run() {  # run <dir> <overrides...>: one dyntok.run unless <dir>/results.json exists
  local dir=$1; shift
  [ -f "$dir/results.json" ] && return 0
  "$PY" -m dyntok.run "${COMMON[@]}" "$@" "hydra.run.dir=$dir"
}

run "$OUT/full" label=full
for r in 0.9 0.7 0.5 0.4 0.3; do
  run "$OUT/extract/keep2_$r" train=false "init_from=$OUT/full" "eval_length_config=[1,1,$r,$r,$r,$r]" \
      "label='extraction (layers 1-2 whole)'"
  run "$OUT/extract/const_$r" train=false "init_from=$OUT/full" "eval_length_config=$r" \
      "label='extraction (constant ratio)'"
done
# gates: one more epoch from the fine-tuned model, gates and encoder together (mu ramped in at 50-90%)
for lam in 1.5 2.5 3.5 5.0 10.0; do
  run "$OUT/gates/lam_$lam" method=gates "init_from=$OUT/full" trainer.max_epochs=1 "regularizer.lambda=$lam" \
      regularizer.mu=300 "label='gates (mu=300)'"
done
# three epochs from the fine-tuned model, mu ramped in over 30-60% of the steps (the encoder then adapts to
# the settled gates for 1.2 epochs); and the method=full model trained as long, the fair reference for them
for lam in 2.0 2.5 3.0 4.0; do
  run "$OUT/gates_3ep/lam_$lam" method=gates "init_from=$OUT/full" trainer.max_epochs=3 "regularizer.lambda=$lam" \
      regularizer.mu=300 "method.mu_ramp=[0.3,0.6]" "label='gates (mu=300, 3 epochs)'"
done
run "${OUT}_ref/full_5ep" "init_from=$OUT/full" trainer.max_epochs=3 "label='full (+3 epochs)'"
# the same without the bi-modal term: gates stay spread around the threshold
run "$OUT/gates_mu0/lam_2.5" method=gates "init_from=$OUT/full" trainer.max_epochs=1 regularizer.lambda=2.5 \
    regularizer.mu=0 "label='gates (mu=0)'"
# LengthDrop: one epoch of sandwich training from the fine-tuned model, then the search (20/30/30/30 on
# 1,000 held-out training sentences); p=0.35 reaches 0.33x MACs on 6 layers; no LayerDrop (see README)
run "$OUT/lengthdrop" method=lengthdrop "init_from=$OUT/full" trainer.max_epochs=1 method.layer_drop=0.0 \
    "label='lengthdrop (searched)'"
# three more LengthDrop epochs (four in all; the paper trains five), tested first with the configuration the
# one-epoch search chose (no new search), then searched again with the same settings
run "$OUT/lengthdrop_4ep" method=lengthdrop "init_from=$OUT/lengthdrop" trainer.max_epochs=3 method.layer_drop=0.0 \
    method.search.enabled=false "label='lengthdrop (4 epochs, 1-epoch configuration)'"
run "$OUT/lengthdrop_4ep_search" method=lengthdrop train=false "init_from=$OUT/lengthdrop_4ep" \
    "label='lengthdrop (4 epochs, searched)'"
# the same search scored on training sentences of >= 15 tokens (dev holds sentences, train mostly phrases)
run "$OUT/lengthdrop_4ep_search_long" method=lengthdrop train=false "init_from=$OUT/lengthdrop_4ep" \
    method.search.min_length=15 method.search.max_examples=800 "label='lengthdrop (4 epochs, searched on sentences)'"
# gates distilled from the fine-tuned model (method.distill, not in the paper), three epochs as above
for lam in 2.5 3.0; do
  run "$OUT/gates_kd/lam_${lam}_a0.5" method=gates "init_from=$OUT/full" trainer.max_epochs=3 "regularizer.lambda=$lam" \
      regularizer.mu=300 "method.mu_ramp=[0.3,0.6]" method.distill=0.5 "label='gates (mu=300, 3 epochs, distilled)'"
done
run "$OUT/gates_kd/lam_3.0_a0.9" method=gates "init_from=$OUT/full" trainer.max_epochs=3 regularizer.lambda=3.0 \
    regularizer.mu=300 "method.mu_ramp=[0.3,0.6]" method.distill=0.9 "label='gates (mu=300, 3 epochs, distilled)'"
# uniform layer weights in R_sparse (every layer's gates cost the same): lambda 3 then closes almost everything
run "$OUT/gates_kd_uniform/lam_3.0_a0.5" method=gates "init_from=$OUT/full" trainer.max_epochs=3 regularizer.lambda=3.0 \
    regularizer.mu=300 "method.mu_ramp=[0.3,0.6]" method.distill=0.5 method.layer_weighting=uniform \
    "label='gates (uniform layer weights, distilled)'"
"$PY" -m dyntok.report "$OUT" "${OUT}_ref" --split test --out docs/sst2_tradeoff
# every run side by side in one process: accuracy, MACs, measured latency, training step, memory, goals
"$PY" -m dyntok.compare "$OUT" --data-dir "$DATA" --out docs/sst2_benchmark
