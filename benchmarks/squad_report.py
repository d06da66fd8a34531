"""The report of benchmarks/squad_restore.sh: every run's F1 with both MACs ratios and wall time (a run that
failed is a row with its error), the goals, and two plots (F1 against real-length MACs; F1 against padded MACs with the published points).

Usage: python benchmarks/squad_report.py docs/benchmarks/squad
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from dyntok.evaluation.frontier import envelope_at
from dyntok.evaluation.plots import plot_curves

# published SQuAD v1.1 points, F1 against MACs on inputs padded to 384 (full model = 1.0)
PUBLISHED = {
    "LA-MiniLM-L6-H384 (published)": [(1.0, 89.28), (2.49 / 4.76, 87.76)],
    "LAT BERT-base (recalled, unverified)": [(1.0, 88.5), (0.45, 88.7)],
}


def failures(docs: Path) -> list[dict]:
    """Runs that ended with an error: a failed record, or (before runs recorded failures) a log tail with a
    non-zero exit status and no record."""
    out = []
    for tail in sorted(docs.glob("*/*/log_tail.txt")):
        rec_path, text = tail.parent / "results.json", tail.read_text()
        rec = json.loads(rec_path.read_text()) if rec_path.exists() else None
        if (rec or {}).get("status") == "ok" or (rec is None and "exit status 0" in text):
            continue
        error = rec.get("error") if rec is not None else next(
            (ln.split("dyntok: error:", 1)[1].strip() for ln in reversed(text.splitlines()) if "dyntok: error:" in ln),
            "see log_tail.txt")
        out.append({"stage": tail.parent.parent.name, "run": tail.parent.name, "error": error})
    return out


def runs(docs: Path) -> list[dict]:
    out = []
    for f in sorted(docs.glob("*/*/results.json")):
        rec = json.loads(f.read_text())
        if rec.get("status") != "ok":
            continue
        test = rec["splits"]["test"]
        tail = (f.parent / "log_tail.txt").read_text() if (f.parent / "log_tail.txt").exists() else ""
        wall = re.search(r"wall time: (\d+) s", tail)
        out.append({"stage": f.parent.parent.name, "run": f.parent.name, "label": rec.get("label") or rec["method"],
                    "f1": 100 * test["f1"], "em": 100 * test["exact_match"], "real": test["macs_ratio"],
                    "padded": test["padded_macs_ratio"], "paper": test.get("paper_macs_ratio", float("nan")), "wall": int(wall.group(1)) if wall else None,
                    "questions": test.get("examples")})
    return out


def main(docs: Path) -> None:
    rows = runs(docs)
    print("# SQuAD v1.1, Drop-and-Restore: both restore modes, both baselines\n")
    print("`benchmarks/squad_restore.sh ../shared/data runs/squad_restore` (stages under 30 minutes on 2 CPU cores; "
          "this page: `python benchmarks/squad_report.py docs/benchmarks/squad`). F1 and exact match on the test "
          "split's questions (held-out articles). MACs ratios of the encoder: `real`, executed / the full model at "
          "each window's real length (dyntok's); `padded`, executed / the full model padded to 192; `paper`, the "
          "configuration run on one window padded to 192 / the full model there (the papers' count, which the "
          "published points use).\n")
    print("| stage | run | label | F1 | EM | MACs real | MACs padded | MACs paper | wall (s) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['stage']} | {r['run']} | {r['label']} | {r['f1']:.1f} | {r['em']:.1f} | {r['real']:.3f} | "
              f"{r['padded']:.3f} | {r['paper']:.3f} | {r['wall'] if r['wall'] is not None else ''} |")
    failed = failures(docs)
    for r in failed:
        print(f"| {r['stage']} | {r['run']} | failed: {r['error']} | | | | | | |")
    curves: dict[str, list] = {}
    padded: dict[str, list] = {}
    for r in rows:
        name = None
        if r["stage"] == "d" and (r["run"].startswith("full_const") or r["run"] == "full_length"):
            name = "standard model, constant ratio"
        for mode in ("output", "last_layer"):
            if r["stage"] == "d" and r["run"].startswith(f"{mode}_const"):
                name = f"LengthDrop ({mode}), constant ratio"
            if r["stage"] == "d" and r["run"].startswith(f"{mode}_search"):
                name = f"LengthDrop ({mode}), searched"
            if r["stage"] == "e" and r["run"].startswith(mode):
                padded.setdefault(f"LengthDrop ({mode}), tokens", []).append((r["paper"], r["f1"]))
        if name:
            curves.setdefault(name, []).append((r["real"], r["f1"]))
            if "constant" in name and "standard" not in name:
                padded.setdefault(name, []).append((r["paper"], r["f1"]))
    full = {r["run"]: r for r in rows if r["stage"] == "d" and r["run"].endswith("full_length")}
    for mode in ("output", "last_layer"):
        if f"{mode}_full_length" in full:
            r = full[f"{mode}_full_length"]
            curves.setdefault(f"LengthDrop ({mode}), constant ratio", []).append((r["real"], r["f1"]))
    if curves:
        plot_curves(curves, docs / "f1_real_macs.png", xlabel="MACs ratio (vs full model at real length)",
                    ylabel="F1 (test articles)", title="SQuAD v1.1: F1 against real-length MACs")
        print("\n![F1 against real-length MACs](f1_real_macs.png)")
    if padded:
        plot_curves(padded, docs / "f1_padded_macs.png", xlabel="MACs ratio, the papers' count (configuration on a padded window)",
                    ylabel="F1", title="SQuAD v1.1: F1 against padded MACs, with published points",
                    anchors=PUBLISHED)
        print("\n![F1 against padded MACs](f1_padded_macs.png)")
    print("\n## Goals\n")
    out, last = curves.get("LengthDrop (output), constant ratio"), curves.get("LengthDrop (last_layer), constant ratio")
    if out and last:
        above = [(x, y - e) for x, y in last if 0.5 <= x <= 0.9 and (e := envelope_at(out, x)) is not None]
        print(f"- last_layer above output from 0.5x to 0.9x real-length MACs: {sum(d > 0 for _, d in above)} of "
              f"{len(above)} points (margins {', '.join(f'{d:+.1f}' for _, d in above)}).")
        failed_search = [r for r in failed if r["stage"] == "d" and r["run"].startswith("last_layer_search")]
        reach = {r["run"]: r for r in rows if r["stage"] == "f"}
        searched, model = reach.get("last_layer_p0.35_search_0.6"), reach.get("ld_last_layer_p0.35")
        if searched and model:
            print(f"- last_layer at 0.6x real-length MACs (LengthDrop with p = 0.35, stage f): searched "
                  f"{searched['f1']:.1f} F1 at {searched['real']:.3f} against {model['f1']:.1f} at that model's full "
                  f"length ({searched['f1'] - model['f1']:+.1f}; goal: within 3).")
        elif failed_search:
            print(f"- last_layer at 0.6x real-length MACs: not measured; the search failed "
                  f"({failed_search[0]['error']}). The goal is open until a LengthDrop model reaches 0.6x.")
    else:
        print("- not measured yet: stage d has not run.")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
