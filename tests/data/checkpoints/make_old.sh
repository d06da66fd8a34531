#!/usr/bin/env bash
# Tiny checkpoints written by dyntok at commit 45cc2ce (before the core/data/evaluation/methods layout),
# for tests/test_checkpoint_compat.py. Run from a checkout of that commit:
#   git worktree add /tmp/old 45cc2ce && cd /tmp/old && bash <this file> <out dir>
set -euo pipefail
out=${1:?out dir}
common="task=rotten_tomatoes model=tiny model.config.hidden_size=8 model.config.num_attention_heads=2
  model.config.intermediate_size=16 logger=none data.max_train_samples=128 data.max_eval_samples=64
  data.batch_size=16 seed=3 progress=log"
python -m dyntok.run $common method=gates trainer.max_epochs=3 regularizer.lambda=20 method.gate_lr=0.1 \
  hydra.run.dir=$out/gates
python -m dyntok.run $common method=lengthdrop trainer.max_epochs=1 method.search.budget=0.6 \
  method.search.population=4 method.search.iterations=2 method.search.mutations=4 method.search.crossovers=4 \
  hydra.run.dir=$out/lengthdrop
