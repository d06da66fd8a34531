"""The table of benchmarks/sst2_search_speed.sh: evaluations, replays, minutes, evaluations a minute, layers
reused, the frontiers compared, racing against exact scoring, and the projection of the authors' full search.

Usage: python benchmarks/search_speed_table.py docs/benchmarks/sst2_search_speed
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from dyntok.evaluation.frontier import Point, pareto_frontier

FULL_SEARCH_GENES = 22 + 30 * (30 + 30)  # smallest + full + 20 initial, then 30 iterations of 30 + 30 offspring


def load(stage: Path) -> dict | None:
    f = stage / "results.json"
    return json.loads(f.read_text()) if f.exists() else None


def store(stage: Path) -> dict[tuple, dict]:
    f = stage / "search_store.jsonl"
    if not f.exists():
        return {}
    out = {}
    for line in f.read_text().splitlines():
        if line.strip():
            rec = json.loads(line)
            out[tuple(rec["gene"])] = rec
    return out


def main(docs: Path) -> None:
    stages = {name: load(docs / name) for name in ("exact_cache0", "exact_cache1024", "racing", "bf16")}
    train = load(docs / "train")
    print("# LAT search speed on 2 CPU cores (SST-2, MiniLM)\n")
    print("Command: `benchmarks/sst2_search_speed.sh ../shared/data/glue runs/sst2_search_speed`\n")
    if train:
        acc = train["splits"]["test"]["accuracy"]
        print(f"Model: LengthDrop MiniLM, 1 epoch fine-tuning + 1 epoch LengthDrop on 8,000 SST-2 training examples "
              f"(p = {train['lengthdrop']['length_drop_prob']}, LayerDrop {train['lengthdrop']['layer_drop']}); "
              f"dev accuracy at full length {100 * acc:.2f}%.\n")
    print("Search: population 20, 30 mutations + 30 crossovers an iteration, 3 iterations, 1,000 held-out training "
          "sentences of >= 15 tokens; the authors' operators (parents from the growing population, new = not in "
          "the population, replays free).\n")
    print("| stage | scored | replayed | stopped by racing | minutes | scored / minute | layers reused | "
          "projected full search (min) | chosen under 0.4x | its search accuracy | MACs real / padded |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, rec in stages.items():
        if rec is None:
            print(f"| {name} | not run | | | | | | | | | |")
            continue
        s = rec["search"]
        minutes = s["seconds"] / 60
        per_eval = minutes / max(s["evaluated"], 1)
        considered = s["evaluated"] + s["replayed_from_store"]
        scored_share = s["evaluated"] / max(considered, 1)
        proj = FULL_SEARCH_GENES * scored_share * per_eval
        layers = s["cache_layers_reused"] + s["cache_layers_run"]
        print(f"| {name} | {s['evaluated']} | {s['replayed_from_store']} | {s.get('raced', 0)} | {minutes:.1f} | "
              f"{s['evals_per_minute']:.1f} | {s['cache_layers_reused']} of {layers} | {proj:.0f} "
              f"({FULL_SEARCH_GENES * per_eval:.0f} if all {FULL_SEARCH_GENES} scored) | {s['chosen_gene']} | "
              f"{100 * s['chosen_search_score']:.2f}% | {s['chosen_macs_ratio']:.3f} / {s['chosen_paper_macs_ratio']:.3f} |")
    print()
    print("Projected full search: the authors' 30 iterations consider "
          f"{FULL_SEARCH_GENES} genes; scored = {FULL_SEARCH_GENES} x (scored / considered in this run) x "
          "(measured minutes per scored gene).\n")
    a, b = (docs / "exact_cache0" / "frontier.json"), (docs / "exact_cache1024" / "frontier.json")
    if a.exists() and b.exists():
        fa = [(r["gene"], r["search_score"]) for r in json.loads(a.read_text())["frontier"]]
        fb = [(r["gene"], r["search_score"]) for r in json.loads(b.read_text())["frontier"]]
        print(f"- Frontiers without and with the prefix cache identical: **{fa == fb}** ({len(fa)} genes).")
    exact, racing = store(docs / "exact_cache1024"), store(docs / "racing")
    if exact and racing and stages["exact_cache1024"] and stages["racing"]:
        front = {p.gene for p in pareto_frontier([Point(g, r["macs"], r["score"]) for g, r in exact.items()])}
        stopped = [g for g, r in racing.items() if r.get("raced")]
        both = [g for g in stopped if g in exact]
        lost = [g for g in both if g in front]
        print(f"- Racing stopped {len(stopped)} of {len(racing)} genes; {len(both)} of those were also scored exactly "
              f"(same model, same examples), and {len(lost)} of them are on the exact search's frontier "
              f"({len(front)} genes).")
        ex, rc = stages["exact_cache1024"]["search"], stages["racing"]["search"]
        p = ex["chosen_search_score"]
        se = math.sqrt(p * (1 - p) / ex["search_examples"])
        print(f"- Chosen under 0.4x: exact {ex['chosen_gene']} at {100 * p:.2f}%, racing {rc['chosen_gene']} at "
              f"{100 * rc['chosen_search_score']:.2f}% (standard error of one score: {100 * se:.2f} points; "
              f"difference {100 * (rc['chosen_search_score'] - p):+.2f}).")
        same = [g for g in racing if g in exact and not racing[g].get("raced")]
        agree = all(abs(racing[g]["score"] - exact[g]["score"]) < 1e-12 for g in same)
        print(f"- Genes racing scored to the end carry exactly the exact search's score: {agree} ({len(same)} shared).")
    half = store(docs / "bf16")
    if exact and half and stages["bf16"]:
        ex, bf = stages["exact_cache1024"]["search"], stages["bf16"]["search"]
        p = ex["chosen_search_score"]
        se = math.sqrt(p * (1 - p) / ex["search_examples"])
        shared = [g for g in half if g in exact]
        diffs = [abs(half[g]["score"] - exact[g]["score"]) * ex["search_examples"] for g in shared]
        fp32 = exact.get(tuple(bf["chosen_gene"]), {}).get("score")
        if fp32 is None and (docs / "bf16" / "chosen_fp32.json").exists():
            fp32 = json.loads((docs / "bf16" / "chosen_fp32.json").read_text())["fp32_score"]
        fp32_txt = f"{100 * fp32:.2f}% in fp32" if fp32 is not None else "not scored in fp32"
        print(f"- bf16 scoring: chosen under 0.4x {bf['chosen_gene']} ({fp32_txt}; bf16 {100 * bf['chosen_search_score']:.2f}%) "
              f"against fp32's {ex['chosen_gene']} at {100 * p:.2f}% (standard error {100 * se:.2f} points). "
              f"Of {len(shared)} genes both scored, {sum(d < 0.5 for d in diffs)} got the same score; at most "
              f"{max(diffs, default=0):.0f} examples apart.")
    prof = docs / "profile" / "profile.txt"
    if prof.exists():
        print(f"\nProfile of one iteration: [{prof.relative_to(docs)}]({prof.relative_to(docs)}).")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
