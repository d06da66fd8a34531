#!/usr/bin/env bash
# SST-2's headline rows on 3 seeds (42, 1, 2), each method on the same recipe (the experiment configs
# dyntok/conf/experiment/sst2_*.yaml: MiniLM, 16,000 training examples, reported on the SST-2 dev set):
#   full       method=full, 2 epochs (the shorter reference; every other row starts from it)
#   full_5ep   that model trained 3 more epochs: the reference trained as long as the 3-epoch gates rows
#   full_6ep   that model trained 4 more epochs: the reference trained as long as LengthDrop's 4 epochs
#   gates_lam4 gates, lambda 4, layers 1-2 ungated, 3 epochs
#   target_0.4 gates trained to a real-length MACs target of 0.4, 3 epochs
#   lengthdrop LengthDrop (p = 0.35), 4 epochs, tested at full length
#   search_0.4, search_0.33  the evolutionary search on the LengthDrop model at budgets 0.4 and 0.33
#              (20/30/30/30 on 800 held-out training sentences of >= 15 tokens, re-scored on 1,500 more; the
#              two budgets share one gene store, so the second search re-scores nothing it has seen)
# Stages (one row, 3 seeds, each under 30 minutes on 2 cores of an AMD EPYC except lengthdrop, about 20 a
# seed): benchmarks/sst2_seeds.sh [STAGE|all] [DATA_DIR=../shared/data/glue]
# A run's results.json goes to docs/benchmarks/sst2/seeds/<row>/seed<N>/ as it finishes; a recorded run is
# skipped and a killed run resumes from its runs/ folder, so a killed script resumes by rerunning.
set -euo pipefail
STAGE=${1:-all}
DATA=${2:-../shared/data/glue}
OUT=${OUT:-runs/sst2_seeds}
DOCS=docs/benchmarks/sst2/seeds
PY=${PYTHON:-.venv/bin/python}
export HF_HUB_OFFLINE=1 WANDB_MODE=${WANDB_MODE:-offline}
SEEDS=(42 1 2)

run() {  # run <row> <seed> <overrides...>: one dyntok.run into $OUT/<row>/seed<N>, its record into $DOCS
  local row=$1 seed=$2; shift 2
  local dir="$OUT/$row/seed$seed" rec="$DOCS/$row/seed$seed/results.json"
  [ -f "$rec" ] && return 0
  [ -f "$dir/results.json" ] && rm -rf "$dir"  # finished by an older commit: not this record
  echo "$(date -u +%H:%M:%S) sst2 $row seed $seed -> $dir" >&2
  "$PY" -m dyntok.run "data_dir=$DATA" "seed=$seed" "$@" "hydra.run.dir=$dir"
  mkdir -p "$(dirname "$rec")"
  cp "$dir/results.json" "$rec"
}

stage() { [ "$STAGE" = all ] || [ "$STAGE" = "$1" ]; }

for s in "${SEEDS[@]}"; do
  FULL="init_from=$OUT/full/seed$s"
  stage full && run full "$s" experiment=sst2_full "label='full (2 epochs)'"
  stage full_5ep && run full_5ep "$s" experiment=sst2_full "$FULL" trainer.max_epochs=3 "label='full (+3 epochs)'"
  stage gates_lam4 && run gates_lam4 "$s" experiment=sst2_gates "$FULL" regularizer.lambda=4 method.skip_first=2 \
      "label='gates (lambda 4, layers 1-2 ungated, 3 epochs)'"
  stage target_0.4 && run target_0.4 "$s" experiment=sst2_gates_target "$FULL" method.target_macs=0.4 \
      "label='gates (MACs target 0.4, 3 epochs)'"
  stage full_6ep && run full_6ep "$s" experiment=sst2_full "$FULL" trainer.max_epochs=4 "label='full (+4 epochs)'"
  stage lengthdrop && run lengthdrop "$s" experiment=sst2_lengthdrop "$FULL" "label='lengthdrop (4 epochs, full length)'"
  for b in 0.4 0.33; do
    stage "search_$b" && run "search_$b" "$s" experiment=sst2_search "init_from=$OUT/lengthdrop/seed$s" \
        method.search.max_examples=800 method.search.rescore_examples=1500 "method.search.budget=$b" \
        "method.search.store=$OUT/lengthdrop/seed$s/search_store.jsonl" \
        "label='lengthdrop (4 epochs), searched at $b'"
  done
done
