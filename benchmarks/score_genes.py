"""Score genes in fp32 on a LengthDrop run's search split, as its search scores them (the search-speed
benchmark checks a bf16 search's choice this way).

Usage: python benchmarks/score_genes.py <LengthDrop run> <data dir> <results.json of a search> <out.json>
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import dyntok
from dyntok.methods.search import LengthSearch


def main(run: str, data_dir: str, searched: str, out: str) -> None:
    s = json.loads(Path(searched).read_text())["config"]["method"]["search"]
    pred = dyntok.load(run)
    module, dm = pred.module, pred.datamodule(data_dir)
    module.search_cfg.update(min_length=s["min_length"], max_examples=s["max_examples"], precision="fp32")
    search = LengthSearch(module, dm)
    dm.setup("fit")
    batches = search._batches(s["split"], s["max_examples"], s["min_length"])
    score = search._scorer(batches, s["split"])
    gene = tuple(json.loads(Path(searched).read_text())["search"]["chosen_gene"])
    Path(out).write_text(json.dumps({"gene": list(gene), "fp32_score": score(search.config(gene))}) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:5])
