#!/usr/bin/env bash
# The authors' default evolutionary search (population 20, 30 iterations of 30 mutations + 30 crossovers,
# new in-bounds genes each) on 1,000 held-out SST-2 training sentences (>= 15 tokens), on one trained
# LengthDrop MiniLM, timed without and with the prefix cache (method.search.cache_mb), same store meta,
# same genes: the frontier must be identical, only the time differs.
#   full fine-tuning (16,000 training examples, 2 epochs) -> LengthDrop from it (2 epochs, p = 0.35, no
#   LayerDrop) -> the search twice (cache off, cache 1 GB). About 1.5 hours on 2 CPU cores; time the search
#   runs with nothing else on the machine.
# Usage: benchmarks/sst2_search_speed.sh [DATA_DIR=../shared/data/glue] [OUT=runs/sst2_search]
set -euo pipefail
DATA=${1:-../shared/data/glue}
OUT=${2:-runs/sst2_search}
PY=${PYTHON:-.venv/bin/python}
export WANDB_MODE=${WANDB_MODE:-offline} HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
COMMON=(task=sst2 "data_dir=$DATA" data.max_train_samples=16000 data.length_bucketing=true logger=csv)

run() {  # run <dir> <overrides...>: one dyntok.run unless <dir>/results.json exists
  local dir=$1; shift
  [ -f "$dir/results.json" ] && return 0
  "$PY" -m dyntok.run "${COMMON[@]}" "$@" "hydra.run.dir=$dir"
}

run "$OUT/full" label=full
run "$OUT/lengthdrop" method=lengthdrop "init_from=$OUT/full" trainer.max_epochs=2 method.layer_drop=0.0 \
    method.search.enabled=false "label='lengthdrop (full length)'"
SEARCH=(method=lengthdrop train=false "init_from=$OUT/lengthdrop" method.search.min_length=15
        method.search.max_examples=1000 method.search.curves=false)
for mb in 0 1024; do
  run "$OUT/search_cache_$mb" "${SEARCH[@]}" "method.search.cache_mb=$mb" "label='lengthdrop (searched, cache $mb MB)'"
done
"$PY" - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
rows = {mb: json.loads((out / f"search_cache_{mb}" / "results.json").read_text()) for mb in (0, 1024)}
fronts = {mb: json.loads((out / f"search_cache_{mb}" / "frontier.json").read_text())["frontier"] for mb in rows}
same = [(r["gene"], r["search_score"]) for r in fronts[0]] == [(r["gene"], r["search_score"]) for r in fronts[1024]]
for mb, rec in rows.items():
    s = rec["search"]
    print(f"cache {mb:>4} MB: {s['evaluated']} genes in {s['seconds'] / 60:.1f} min, {s['evals_per_minute']:.1f} evals/min, "
          f"layers reused {s['cache_layers_reused']} of {s['cache_layers_reused'] + s['cache_layers_run']}; "
          f"chosen {s['chosen_gene']} at {s['chosen_macs_ratio']:.3f}x ({rec['splits']['test']['accuracy']:.4f} dev)")
print("identical frontiers:", same)
PY
