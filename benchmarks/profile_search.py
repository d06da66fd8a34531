"""Profile one iteration of the LAT search (population 20, 30 mutations + 30 crossovers, exact scoring, 1 GB
prefix cache) on 1,000 held-out SST-2 training sentences of >= 15 tokens: the share of dense compute in the
operators' time, and torch.profiler's operators by self CPU time.

Usage: python benchmarks/profile_search.py <LengthDrop run> <GLUE data dir>
"""

from __future__ import annotations

import sys
import tempfile
import time

import torch
from torch.profiler import ProfilerActivity, profile

import dyntok
from dyntok.methods.search import LengthSearch


def main(run: str, data_dir: str) -> None:
    torch.set_num_threads(2)
    pred = dyntok.load(run)
    module, dm = pred.module, pred.datamodule(data_dir)
    module.search_cfg.update(population=20, mutations=30, crossovers=30, iterations=1, min_length=15,
                             max_examples=1000, curves=False, cache_mb=1024, racing=False, store=None)
    search = LengthSearch(module, dm, tempfile.mkdtemp())
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        _, summary = search.run()
    wall = time.perf_counter() - start
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)
    ops = prof.key_averages()
    total_self = sum(e.self_cpu_time_total for e in ops) / 1e6
    dense = sum(e.self_cpu_time_total for e in ops
                if e.key in ("aten::addmm", "aten::mm", "aten::bmm", "aten::baddbmm", "aten::linear",
                             "aten::_softmax", "aten::gelu", "aten::native_layer_norm")) / 1e6
    print(f"one iteration: {summary['evaluated']} genes scored, {summary['replayed_from_store']} replayed, "
          f"{wall:.1f} s wall under the profiler ({summary['seconds']:.1f} s in the search itself, the rest is "
          f"loading the split and timing the frontier)")
    print(f"self CPU time of all operators: {total_self:.1f} s (2 threads); dense compute (matmuls, softmax, GELU, "
          f"LayerNorm): {dense:.1f} s = {100 * dense / max(total_self, 1e-9):.0f}%")
    print()
    print(table)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
