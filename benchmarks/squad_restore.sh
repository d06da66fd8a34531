#!/usr/bin/env bash
# Drop-and-Restore on SQuAD v1.1 with MiniLM, both restore modes, in stages of under 30 minutes on 2 CPU cores.
# Windows of 192 tokens overlapping by 64; the shared 44-article SQuAD subset split by article (test: held-out
# articles, 500 questions; validation: the search's 150 questions).
#   a  full           full fine-tuning on Q training questions (default null: all of the subset's training
#                     articles; 1 epoch fits 30 minutes here, 2 do not), lr 1e-4
#   b  ld_output      LengthDrop from (a), restore=output, ratio unit, p = 0.2, LayerDrop 0.2, one random
#                     sub-model besides the smallest and the full (the authors' SQuAD settings), 4,000
#                     questions, 1 epoch (theirs: 88k questions, 5 epochs)
#   c  ld_last_layer  the same with model.restore=last_layer
#   d  eval_<model>   each of (a), (b), (c) on the test questions: full length and constant ratios (about
#                     0.5-0.9x real-length MACs); for (b), (c) also a short search (population 10, 4 iterations
#                     of 8 + 8) at 0.6x real-length MACs
#   e  tokens_<model> (b), (c) in the token unit (l_0 = 192): the authors' smallest sub-model at p = 0.2 and
#                     searches at 0.5x and 0.45x padded MACs
#   f  last_layer at 0.6x, reachable: (c) with p = 0.35 (at p = 0.2 no last_layer configuration is as cheap
#                     as 0.6x, and stage d's search fails), at full length and searched at 0.6x (about 20 minutes
#                     after (a))
# Each run's small outputs (results.json, frontier.json, the log's last lines; never checkpoints) go to
# docs/benchmarks/squad/<stage>/<run>/; a run whose results.json is there is skipped, so rerunning resumes. A
# training stage whose checkpoint (under RUNS) is gone retrains while a later stage still needs it (the log
# says so). Every run's wall time is in its log_tail.txt.
# Usage: benchmarks/squad_restore.sh [DATA_DIR=../shared/data] [RUNS=runs/squad_restore] [Q=null] [STAGES="a b c d e"]
set -euo pipefail
DATA=${1:-../shared/data}
RUNS=${2:-runs/squad_restore}
Q=${3:-null}
STAGES=${4:-a b c d e f}
DOCS=docs/benchmarks/squad
PY=${PYTHON:-.venv/bin/python}
export WANDB_MODE=${WANDB_MODE:-offline} HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
mkdir -p "$DOCS" "$RUNS"
WIN=(task=squad task.max_length=192 task.doc_stride=64 "data_dir=$DATA" logger=csv data.max_eval_samples=500
     data.batch_size=16 model.lr=1e-4)
LD=(method=lengthdrop method.length_drop_prob=0.2 method.layer_drop=0.2 method.num_sandwich=1
    method.search.max_examples=150 method.search.population=10 method.search.iterations=4
    method.search.mutations=8 method.search.crossovers=8 method.search.curves=false)

has() { [[ " $STAGES " == *" $1 "* ]]; }

run() {  # run <stage> <name> <overrides...>: one dyntok.run unless its results are under docs/
  local stage=$1 name=$2; shift 2
  local out="$DOCS/$stage/$name" dir="$RUNS/$stage/$name"
  if [ -f "$out/results.json" ]; then echo "[$stage/$name] done before: skipped"; return 0; fi
  mkdir -p "$out" "$RUNS/$stage"
  echo "[$stage/$name] started $(date -u +%H:%M:%S)"
  local t0=$SECONDS rc=0
  "$PY" -m dyntok.run "${WIN[@]}" "$@" "hydra.run.dir=$dir" > "$dir.log" 2>&1 || rc=$?
  { tail -n 30 "$dir.log"; echo "wall time: $((SECONDS - t0)) s, exit status $rc"; } > "$out/log_tail.txt"
  for f in results.json frontier.json frontier.tsv; do [ -f "$dir/$f" ] && cp "$dir/$f" "$out/"; done
  echo "[$stage/$name] finished $(date -u +%H:%M:%S) in $((SECONDS - t0)) s, exit status $rc"
}

trained() {  # trained <stage> <name>: the checkpoint exists, or the stage must (re)train
  local dir="$RUNS/$1/$2"
  if [ -f "$dir/results.json" ]; then return 0; fi
  if [ -f "$DOCS/$1/$2/results.json" ]; then
    echo "[$1/$2] checkpoint gone from $dir: retraining"
    rm -f "$DOCS/$1/$2/results.json"
  fi
  return 1
}

FULL="$RUNS/a/full" OUT_MODEL="$RUNS/b/ld_output" LAST_MODEL="$RUNS/c/ld_last_layer"
if has a || has b || has c || has d || has f; then
  trained a full || run a full method=full "data.max_train_samples=$Q" trainer.max_epochs=1 "label=full"
fi
if has b || has c || has d || has e; then
  trained b ld_output || run b ld_output "${LD[@]}" "init_from=$FULL" data.max_train_samples=4000 \
      trainer.max_epochs=1 method.search.enabled=false "label='lengthdrop (output)'"
fi
if has c || has d || has e; then
  trained c ld_last_layer || run c ld_last_layer "${LD[@]}" model.restore=last_layer "init_from=$FULL" \
      data.max_train_samples=4000 trainer.max_epochs=1 method.search.enabled=false "label='lengthdrop (last_layer)'"
fi

ratios() {  # ratios <restore>: constant ratios giving about 0.5-0.9x real-length MACs on 160-token windows
  "$PY" - "$1" <<'PY'
import sys, torch
from dyntok.core.lengths import LengthConfig
from dyntok.core.macs import ModelDims, full_macs, length_config_macs
dims = ModelDims(num_layers=6, hidden=384, intermediate=1536, num_heads=12)
n, restore = torch.tensor([160]), (None if sys.argv[1] == "none" else sys.argv[1])
def ratio(r):
    return float(length_config_macs(dims, LengthConfig.constant(r, 6), n, restore=restore) / full_macs(dims, n))
out = []
for target in (0.5, 0.6, 0.7, 0.8, 0.9):
    lo, hi = 0.01, 1.0
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if ratio(mid) < target else (lo, mid)
    out.append(f"{hi:.3f}")
print(" ".join(out))
PY
}

if has d; then
  run d full_length method=full "init_from=$FULL" train=false "label='full'"
  for r in $(ratios none); do
    run d "full_const_$r" method=full "init_from=$FULL" train=false "eval_length_config=$r" "label='standard model, constant ratio'"
  done
  for mode in output last_layer; do
    M="$RUNS/b/ld_output"; [ "$mode" = last_layer ] && M="$RUNS/c/ld_last_layer"
    run d "${mode}_full_length" "${LD[@]}" "model.restore=$mode" "init_from=$M" train=false \
        method.search.enabled=false "label='lengthdrop ($mode), full length'"
    for r in $(ratios "$mode"); do
      run d "${mode}_const_$r" "${LD[@]}" "model.restore=$mode" "init_from=$M" train=false \
          method.search.enabled=false "method.length_config=$r" "label='lengthdrop ($mode), constant ratio'"
    done
    run d "${mode}_search_0.6" "${LD[@]}" "model.restore=$mode" "init_from=$M" train=false \
        method.search.enabled=true method.search.budget=0.6 "label='lengthdrop ($mode), searched'"
  done
fi

if has e; then
  SMALLEST=$("$PY" -c "from dyntok.methods.genes import constant_ratio_gene as g; \
print('{unit:tokens,values:[' + ','.join(map(str, g(0.8, 6, 192, 2))) + ']}')")
  for mode in output last_layer; do
    M="$RUNS/b/ld_output"; [ "$mode" = last_layer ] && M="$RUNS/c/ld_last_layer"
    TOK=("${LD[@]}" "model.restore=$mode" "init_from=$M" train=false method.length_unit=tokens)
    run e "${mode}_tokens_smallest" "${TOK[@]}" method.search.enabled=false "method.length_config=$SMALLEST" \
        "label='lengthdrop ($mode), tokens, smallest sub-model'"
    for b in 0.5 0.45; do
      run e "${mode}_tokens_search_padded_$b" "${TOK[@]}" method.search.enabled=true \
          method.search.budget_baseline=padded "method.search.budget=$b" \
          "label='lengthdrop ($mode), tokens, searched (padded budget)'"
    done
  done
fi

if has f; then
  P35=("${LD[@]}" method.length_drop_prob=0.35 model.restore=last_layer)
  trained f ld_last_layer_p0.35 || run f ld_last_layer_p0.35 "${P35[@]}" "init_from=$FULL" data.max_train_samples=4000 \
      trainer.max_epochs=1 method.search.enabled=false "label='lengthdrop (last_layer, p = 0.35)'"
  run f last_layer_p0.35_search_0.6 "${P35[@]}" "init_from=$RUNS/f/ld_last_layer_p0.35" train=false \
      method.search.enabled=true method.search.budget=0.6 "label='lengthdrop (last_layer, p = 0.35), searched'"
fi
