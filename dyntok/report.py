"""Trade-off report across runs: ``python -m dyntok.report multirun/2026-... --out docs/sst2``; and
``python -m dyntok.report --publish`` / ``--check``: README's generated blocks from their committed records
(:mod:`dyntok.evaluation.publish`).

Reads every ``results.json`` under the given folders (a Hydra multirun, several runs), or a W&B project
(``--wandb entity/project``, online), and writes a markdown table and a PNG of the task metric against the
MACs ratio (real-length baseline), one curve per method label.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from dyntok.evaluation.plots import plot_controller, plot_curves
from dyntok.evaluation.results import controller_trace, flat_rows, format_table, read_results


def _label(rec: dict[str, Any]) -> str:
    if rec.get("method") == "gates":
        g = rec.get("gates") or {}
        if g.get("target_macs") is not None:
            return f"{rec.get('label') or 'gates'} (target {g['target_macs']} {g.get('target_baseline', 'real')})"
        return f"{rec.get('label') or 'gates'} (lambda={g.get('lambda')}, mu={g.get('mu')})"
    cfg = rec.get("length_config") or {}
    desc = f" {cfg.get('unit')}{[round(v, 3) for v in cfg.get('values', [])]}" if cfg else ""
    return f"{rec.get('label') or rec.get('method')}{desc}"


X_AXES = {
    "macs_ratio": "MACs ratio (vs full model at real length)",
    "padded_macs_ratio": "MACs executed / full model padded to max_length",
    "paper_macs_ratio": "MACs ratio as the papers count (inputs padded to max_length)",
}


def trade_off(records: list[dict[str, Any]], split: str | None = None, x: str = "macs_ratio"
              ) -> tuple[list[dict[str, Any]], dict]:
    """Rows (one per run and split) and curves {label (split): [(x, metric)]} of successful runs; ``x`` is
    one of :data:`X_AXES`."""
    rows, curves = [], defaultdict(list)
    for rec in records:
        if rec.get("status") != "ok":
            rows.append({"run": rec.get("path"), "method": rec.get("method"), "status": rec.get("status"),
                         "error": rec.get("error")})
            continue
        metric = rec.get("main_metric")
        for row in flat_rows([rec]):
            if split is not None and row["split"] != split:
                continue
            row = {**row, "label": _label(rec), "main_metric": metric, "run": rec.get("path")}
            kept = [row[k] for k in sorted((k for k in row if k.startswith("retention_l")), key=lambda k: int(k[11:]))]
            if kept:  # the executed length configuration: share of the input tokens kept after each layer
                row["kept per layer"] = " ".join(f"{v:.2f}" for v in kept)
            rows.append(row)
            if row.get(x) is not None and row.get(metric) is not None:
                series = rec.get("label") or rec.get("method")
                curves[f"{series} ({row['split']})"].append((row[x], row[metric]))
    return rows, dict(curves)


def _wandb_records(project: str) -> list[dict[str, Any]]:
    import wandb

    out = []
    for run in wandb.Api().runs(project):
        s = run.summary
        cfg = run.config
        out.append({"path": run.url, "status": "ok" if run.state == "finished" else run.state,
                    "task": cfg.get("task", {}).get("name"), "method": cfg.get("method", {}).get("name"),
                    "main_metric": "accuracy",
                    "splits": {"test": {k.split("/", 1)[1]: v for k, v in s.items() if k.startswith("test/")}}})
    return out


def _controller(paths: list[str], prefix: Path) -> int:
    if len(paths) != 1:
        print(f"dyntok: error: --controller takes one run folder, got {len(paths)}", file=sys.stderr)
        return 2
    try:
        trace = controller_trace(paths[0])
    except FileNotFoundError as e:
        print(f"dyntok: error: {e}", file=sys.stderr)
        return 2
    if not trace["multiplier"]:
        print(f"dyntok: error: {paths[0]}: no train/multiplier in metrics.csv (a run with method.target_macs)",
              file=sys.stderr)
        return 2
    prefix.parent.mkdir(parents=True, exist_ok=True)
    prefix.with_suffix(".json").write_text(json.dumps(trace) + "\n")
    plot_controller(trace, prefix.with_suffix(".png"), title=str(paths[0]))
    print(f"wrote {prefix.with_suffix('.json')} and {prefix.with_suffix('.png')}")
    return 0


PUBLISHED = "docs/benchmarks/published.yaml"


def _publish(spec: str, check: bool) -> int:
    from dyntok.errors import DyntokError
    from dyntok.evaluation.publish import publish

    try:
        changed = publish(spec, check=check)
    except DyntokError as e:
        print(f"dyntok: error: {e}", file=sys.stderr)
        return 2
    if check and changed:
        print(f"out of date with their records: {', '.join(changed)} (python -m dyntok.report --publish)",
              file=sys.stderr)
        return 1
    print(("up to date: " if check or not changed else "wrote ") + (", ".join(changed) or spec))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dyntok.report", description=__doc__.splitlines()[0])
    ap.add_argument("paths", nargs="*", help="run or multirun folders (searched for results.json)")
    ap.add_argument("--wandb", help="entity/project to read instead (needs network and login)")
    ap.add_argument("--split", default=None, help="only this split (default: all)")
    ap.add_argument("--out", default="report", help="output prefix: <out>.md and <out>.png")
    ap.add_argument("--x", default="macs_ratio", choices=list(X_AXES), help="the plot's compute axis")
    ap.add_argument("--anchor", action="append", default=[], metavar="NAME=X:Y[,X:Y...]",
                    help="published points to mark on the plot, in the plot's units (e.g. "
                         "'LA-MiniLM (published)=1.0:0.8928,0.523:0.8776')")
    ap.add_argument("--publish", nargs="?", const=PUBLISHED, metavar="SPEC",
                    help="instead of a report: rebuild every generated block of README and the benchmark pages from "
                         f"the committed records the spec names (default {PUBLISHED})")
    ap.add_argument("--check", nargs="?", const=PUBLISHED, metavar="SPEC",
                    help="as --publish, but write nothing: exit 1 when a generated block differs from its records")
    ap.add_argument("--controller", metavar="PREFIX",
                    help="instead of the table: the compute target's trace of the one run given (logger=csv), "
                         "as <PREFIX>.json and <PREFIX>.png")
    args = ap.parse_args(argv)
    if args.publish or args.check:
        return _publish(args.publish or args.check, check=bool(args.check))
    if args.controller:
        return _controller(args.paths, Path(args.controller))
    records = _wandb_records(args.wandb) if args.wandb else read_results(args.paths)
    if not records:
        print(f"dyntok: error: no results.json under {', '.join(args.paths) or '(no paths)'}", file=sys.stderr)
        return 2
    rows, curves = trade_off(records, args.split, args.x)
    try:
        anchors = {name: [tuple(float(v) for v in pt.split(":")) for pt in pts.split(",")]
                   for name, pts in (a.split("=", 1) for a in args.anchor)}
    except ValueError:
        print(f"dyntok: error: --anchor {args.anchor}: expected NAME=X:Y[,X:Y...]", file=sys.stderr)
        return 2
    cols = ["label", "task", "split", "main_metric", "accuracy", "f1", "mcc", "pearson", "macs_ratio",
            "macs_reduction", "padded_macs_ratio", "paper_macs_ratio", "gmacs_per_example", "kept per layer", "examples", "status", "run"]
    cols = [c for c in cols if any(c in r for r in rows)]
    table = format_table(sorted(rows, key=lambda r: (str(r.get("label")), r.get("macs_ratio") or 0)), cols)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(table + "\n")
    print(table)
    if curves:
        metric = next((r["main_metric"] for r in rows if r.get("main_metric")), "metric")
        plot_curves(curves, out.with_suffix(".png"), X_AXES[args.x], metric,
                    title=", ".join(sorted({str(r.get("task")) for r in rows if r.get("task")})), anchors=anchors)
        print(f"\nwrote {out.with_suffix('.md')} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
