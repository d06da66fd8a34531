"""Every method side by side on one task, measured in one process: ``python -m dyntok.compare runs/sst2
--data-dir ../shared/data/glue --out docs/benchmarks/sst2_benchmark``.

Reads the runs under a benchmark folder (``benchmarks/sst2_tradeoff.sh`` writes them): ``method=full`` (the
reference), untrained extraction from it (``train=false eval_length_config=...``), gates runs, and a
LengthDrop run with its searched frontier. Then, on the report split and in this one process:

- static truncation of the input to k tokens on the full model (what a user would do instead);
- for every point: the task metric, task-model MACs per example (encoder and head) and their ratio to the
  full model at each input's real (untruncated) length and padded to ``max_length``, measured latency (ms per
  example, the best of ``--repeats`` passes over length-sorted batches of ``--batch-size``) and its speed-up
  against the full model measured in the same process;
- training time per step of each method relative to ``method=full`` on the same batches;
- memory of inference, in a fresh CPU process per method that loads its checkpoint and data: resident
  memory before the evaluation and what evaluating the split adds at its peak (``--memory``).

Writes ``<out>.md`` (table, goals, the command) and ``<out>.png`` / ``<out>_speed.png`` (metric against MACs
ratio and against measured speed-up, one curve per method), and prints one line per goal, met or not.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dyntok.errors import DyntokError, user_message
from dyntok.evaluation.frontier import compare_to_curve

GOAL_REDUCTION = {"imdb": 4.0}  # fewer MACs (real-length baseline) per task ...
GOAL_REDUCTION_DEFAULT = 2.5  # ... for the others (SST-2)
GOAL_DROP = 1.0  # ... at most this many points below the full model
GOAL_SPEED_SHARE = 0.8  # measured speed-up / MACs reduction
GOAL_STEP = {"gates": 1.3, "lengthdrop": 3.0}  # training step time relative to full


def _records(root: Path) -> list[dict[str, Any]]:
    from dyntok.evaluation.results import read_results

    return [r for r in read_results([str(root)]) if r.get("status") == "ok"]


def _batches(pred, split: str, data_dir: str | None, batch_size: int, max_examples: int | None):
    dm = pred.datamodule(data_dir)
    eval_batches = list(dm.dataloader(split, batch_size=batch_size, max_examples=max_examples))
    return dm, eval_batches


def _truncate(batch: dict[str, torch.Tensor], k: int, sep_id: int) -> dict[str, torch.Tensor]:
    """The first k tokens of every input, the last of them replaced by [SEP] where text was cut."""
    out = {n: (v[:, :k] if v.dim() == 2 else v) for n, v in batch.items()}
    real = batch["attention_mask"].sum(1)
    cut = real > k
    if bool(cut.any()):
        ids = out["input_ids"].clone()
        ids[cut, k - 1] = sep_id
        out["input_ids"] = ids
    return out


def measure(pred, batches: list[dict[str, torch.Tensor]], length_config: Any = None, truncate: int | None = None,
            repeats: int = 3, timed: list[int] | None = None, split: str = "test", datamodule=None) -> dict[str, float]:
    """Metric, MACs and latency of one model and length configuration over ``batches`` of ``split``.

    ``timed``: indices of the batches the latency is measured on (default: all); ``datamodule``: the one the
    batches came from (span metrics read the split's questions from it).

    Returns:
        dict with the task's metrics, ``macs_ratio`` and ``padded_macs_ratio`` (task-model MACs over the full
        model at each input's untruncated real length, and padded to ``max_length``;
        :meth:`dyntok.methods.predictor.Predictor.evaluate`), ``ms_per_example`` (best of ``repeats`` timed
        passes) and ``examples``.
    """
    from functools import partial

    from dyntok.evaluation.timing import best_pass_ms

    sep = pred.tokenizer.sep_token_id if pred.tokenizer.sep_token_id is not None else 0
    cut = partial(_truncate, k=truncate, sep_id=sep) if truncate else None
    vals = pred.evaluate(split, length_config=length_config, datamodule=datamodule, batches=batches, transform=cut)
    runs = [cut(b) if cut else b for b in (batches if timed is None else [batches[i] for i in timed])]
    ms = best_pass_ms(lambda b: pred.forward(b, length_config), runs, repeats, pred.device)
    return {**vals, "ms_per_example": ms}


def train_step_ms(preds: dict[str, Any], batches: list[dict[str, torch.Tensor]], warmup: int = 2) -> dict[str, float]:
    """Milliseconds per optimizer step (forward, backward, AdamW) of each method on the same batches: the
    median over batches after ``warmup``. The methods take turns on each batch, so drift in the machine's
    speed (other processes, frequency) falls on every method alike."""
    states = {}
    for name, pred in preds.items():
        pred.module.train()
        params = [p for p in pred.module.parameters() if p.requires_grad]
        states[name] = (pred.module, torch.optim.AdamW(params, lr=1e-6), [])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log() outside a Trainer
        for i, b in enumerate(batches):
            for module, opt, times in states.values():
                start = time.perf_counter()
                loss = module.training_step(b, i)
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                if i >= warmup:
                    times.append(time.perf_counter() - start)
    for module, _, _ in states.values():
        module.eval()
    return {name: 1000 * float(np.median(times)) for name, (_, _, times) in states.items()}


def _inference_memory(ckpt: str, split: str, data_dir: str | None, batch_size: int,
                      max_examples: int | None, trust_checkpoint: bool = False) -> dict[str, float]:
    """Resident memory (MB) of a fresh CPU process that loads ``ckpt`` and its data, then evaluates the
    split: ``rss_mb`` before the evaluation (weights, data, framework) and ``inference_mb``, what the
    evaluation added at its peak (:func:`dyntok.evaluation.timing.peak_memory_mb`). NaN where it cannot be measured."""
    import subprocess

    code = ("import json,sys,dyntok; from dyntok.evaluation.timing import peak_memory_mb; p=dyntok.load(sys.argv[1], trust_checkpoint=sys.argv[6]=='1'); "
            "dm=p.datamodule(None if sys.argv[3]=='-' else sys.argv[3]); dm.setup(); "
            "before, peak = peak_memory_mb(lambda: p.evaluate(sys.argv[2], batch_size=int(sys.argv[4]), "
            "max_examples=None if sys.argv[5]=='-' else int(sys.argv[5]), datamodule=dm)); "
            "print(json.dumps({'rss_mb': before, 'inference_mb': peak - before}))")
    proc = subprocess.run([sys.executable, "-c", code, ckpt, split, data_dir or "-", str(batch_size),
                           str(max_examples) if max_examples else "-", "1" if trust_checkpoint else "0"], capture_output=True, text=True)
    if proc.returncode != 0:
        warnings.warn(f"memory of {ckpt} not measured: {proc.stderr.strip().splitlines()[-1:]}", stacklevel=2)
        return {"rss_mb": float("nan"), "inference_mb": float("nan")}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def tested_checkpoint(rec: dict[str, Any]) -> str:
    """The checkpoint a run tested (:func:`dyntok.methods.checkpoint.run_checkpoint` of its folder); a run that did
    not train (``train=false``, e.g. a search over a trained LengthDrop model) tested its ``init_from``."""
    from dyntok.methods.checkpoint import run_checkpoint

    cfg = rec.get("config") or {}
    if cfg.get("train", True) is False and cfg.get("init_from"):
        source = Path(cfg["init_from"])
        return str(source if source.is_file() else run_checkpoint(source))
    return str(run_checkpoint(rec["path"]))


def run(args: argparse.Namespace) -> int:
    import dyntok
    from dyntok.core.lengths import LengthConfig
    from dyntok.evaluation.results import environment, format_table

    start = time.time()
    root = Path(args.runs)
    records = _records(root)
    full_rec = next((r for r in records if r["method"] == "full" and (r.get("config") or {}).get("train", True)
                     and (r.get("config") or {}).get("eval_length_config") is None), None)
    if full_rec is None:
        raise DyntokError(f"{root}: no method=full run (results.json with method full and no eval_length_config)")
    metric = full_rec["main_metric"]
    split = args.split
    full_ckpt = tested_checkpoint(full_rec)
    full = dyntok.load(full_ckpt, trust_checkpoint=args.trust_checkpoint)
    dm, batches = _batches(full, split, args.data_dir, args.batch_size, args.max_examples)
    print(f"{len(batches)} batches of <= {args.batch_size} ({split}); timing {args.repeats} passes per point",
          file=sys.stderr)

    points: list[dict[str, Any]] = []

    def add(point: dict[str, Any]) -> None:
        points.append(point)
        print(f"[{len(points)}] {point['label']} {point.get('config') or ''}: {metric} {point[metric]:.4f}, "
              f"MACs ratio {point['macs_ratio']:.3f}, {point['ms_per_example']:.3f} ms/example", file=sys.stderr)
    # latency on an evenly spread subset of the (length-sorted) batches: every length range is in it
    step = max(1, round(len(batches) * args.batch_size / args.time_examples)) if args.time_examples else 1
    timed = list(range(0, len(batches), step))
    kw = {"repeats": args.repeats, "timed": timed, "split": split, "datamodule": dm}
    ref = measure(full, batches, **kw)
    add({"method": "full", "label": "full model", **ref})
    for k in args.truncate:
        add({"method": "truncation", "label": f"truncation to {k} tokens", "k": k,
                       **measure(full, batches, truncate=k, **kw)})
    preds = {"full": full}
    for rec in records:
        cfg = rec.get("config") or {}
        if rec["method"] == "full" and cfg.get("eval_length_config") is not None:
            lc = LengthConfig.parse(cfg["eval_length_config"], full.module.model.num_layers, "eval_length_config")
            add({"method": "extraction", "label": rec.get("label") if rec.get("label") not in (None, "full") else "extraction",
                           "config": lc.describe(), **measure(full, batches, lc, **kw)})
        elif rec["method"] == "gates":
            pred = dyntok.load(tested_checkpoint(rec), trust_checkpoint=args.trust_checkpoint)
            mu = (rec.get("gates") or {}).get("mu")
            add({"method": "gates" if mu else "gates (mu=0)", "label": rec.get("label") or "gates",
                           "lambda": (rec.get("gates") or {}).get("lambda"), "mu": mu,
                           "bimodal_share": (rec.get("gates") or {}).get("gate_bimodal_share"),
                           **measure(pred, batches, **kw)})
            preds.setdefault("gates", pred)
        elif rec["method"] == "lengthdrop":
            run_dir = Path(rec["path"])
            pred = dyntok.load(tested_checkpoint(rec), trust_checkpoint=args.trust_checkpoint)
            preds.setdefault("lengthdrop", pred)
            ref_len = pred.max_length
            if not (run_dir / "frontier.json").exists():  # no search in this run: the configuration it tested
                lc = LengthConfig.parse(rec.get("length_config") or 1.0, pred.module.model.num_layers, "length_config")
                add({"method": "lengthdrop", "label": rec.get("label") or "lengthdrop", "config": lc.describe(),
                     **measure(pred, batches, lc, **kw)})
                continue
            front = sorted(json.loads((run_dir / "frontier.json").read_text())["frontier"], key=lambda r: r["macs"])
            if args.max_frontier and len(front) > args.max_frontier:  # evenly spaced, cheapest and dearest kept
                idx = np.unique(np.linspace(0, len(front) - 1, args.max_frontier).round().astype(int))
                front = [front[i] for i in idx]
            for row in front:
                lc = (LengthConfig.parse(row["length_config"], pred.module.model.num_layers) if "length_config" in row
                      else LengthConfig.from_counts(row["gene"], ref_len))  # frontier files before length_config
                add({"method": "lengthdrop", "label": rec.get("label") or "lengthdrop (searched)",
                     "config": lc.describe(),
                               **measure(pred, batches, lc, **kw)})
    for p in points:
        p["speedup"] = ref["ms_per_example"] / p["ms_per_example"]
        p["macs_reduction"] = 1 / p["macs_ratio"]
        p["speed_share"] = p["speedup"] / p["macs_reduction"]
        p["delta"] = 100 * (p[metric] - ref[metric])

    # training step time, same batches for every method
    train_batches = []
    for i, b in enumerate(dm.dataloader("train", shuffle=True)):
        train_batches.append(b)
        if i + 1 >= args.train_steps:
            break
    step_ms = train_step_ms(preds, train_batches)
    memory = {}
    if args.memory:
        ckpts = {"full": full_ckpt, **{m: tested_checkpoint(next(r for r in records if r["method"] == m))
                                      for m in preds if m != "full"}}
        memory = {m: _inference_memory(c, split, args.data_dir, args.batch_size, args.max_examples,
                                          args.trust_checkpoint)
                  for m, c in ckpts.items()}
    for p in points:
        base = p["method"].split(" ")[0]
        p.update(memory.get(base if base in memory else "full", {}))

    reduction = args.goal_reduction or GOAL_REDUCTION.get(full_rec["task"], GOAL_REDUCTION_DEFAULT)
    goals = _goals(points, metric, step_ms, reduction)
    cols = ["method", "label", "config", "lambda", metric, "delta", "macs_ratio", "macs_reduction", "padded_macs_ratio",
            "ms_per_example", "speedup", "speed_share", "bimodal_share", "rss_mb", "inference_mb"]
    rows = sorted(points, key=lambda p: (p["method"], p["macs_ratio"]))
    table = format_table(rows, [c for c in cols if any(p.get(c) is not None for p in rows)])
    steps = format_table([{"method": m, "ms / step": ms, "vs full": ms / step_ms["full"]} for m, ms in step_ms.items()])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = "python -m dyntok.compare " + " ".join(sys.argv[1:] if args.argv is None else args.argv)
    md = [f"# {full_rec['task']}: accuracy against compute, every method", "",
          f"Produced by `{cmd}` ({time.strftime('%Y-%m-%d')}, {torch.get_num_threads()} threads, "
          f"{full.device.type}). Split `{split}`, {ref['examples']} examples, batches of {args.batch_size} sorted "
          "by length; MACs are the task model's, ratio against the full model at each input's real length; latency "
          f"is the best of {args.repeats} timed passes over {len(timed)} evenly spread batches, speed-up against "
          "the full model in the same process.", "",
          table, "", "Training step (forward, backward, AdamW) on the same batches:", "",
          steps, "", "Goals:", "",
          *[f"- {g}" for g in goals], "", f"![{metric} against MACs]({out.name}.png)",
          f"![{metric} against speed-up]({out.name}_speed.png)", ""]
    out.with_suffix(".md").write_text("\n".join(md))
    record = {"points": points, "train_step_ms": step_ms, "goals": goals, "split": split,
              "seed": (full_rec.get("config") or {}).get("seed"), "wall_time_s": time.time() - start,
              "versions": environment(full.device)}
    (out.parent / f"{out.name}.json").write_text(json.dumps(record, indent=2, default=str))
    plot_points(points, metric, out, f"{full_rec['task']} ({split})", full.device.type, by=args.by)
    print(table)
    print()
    for g in goals:
        print(g)
    print(f"\nwrote {out.with_suffix('.md')}, {out.with_suffix('.png')}, {out.parent / (out.name + '_speed.png')}")
    return 0


def curve_name(point: dict[str, Any]) -> str:
    """Plot curve of a point: its run label (extraction schedules, gates and LengthDrop recipes are
    different curves); the full model and truncation by method."""
    return point["method"] if point["method"] in ("full", "truncation") else point["label"]


def plot_points(points: list[dict[str, Any]], metric: str, out: Path, title: str, device: str,
                by: str = "label") -> None:
    """``<out>.png`` (metric against MACs ratio) and ``<out>_speed.png`` (against measured speed-up), one curve
    per :func:`curve_name` (``by="label"``), or per method with each method's Pareto frontier (``by="method"``:
    full, truncation, extraction, gates, LengthDrop; the headline plot); ``points`` as in the ``.json`` that
    :func:`run` writes."""
    from dyntok.evaluation.frontier import Point, pareto_frontier
    from dyntok.evaluation.plots import plot_curves

    curves, speed = defaultdict(list), defaultdict(list)
    for p in points:
        name = curve_name(p) if by == "label" else p["method"].split(" ")[0]
        curves[name].append((p["macs_ratio"], p[metric]))
        speed[name].append((p["speedup"], p[metric]))
    if by == "method":  # the best of each method: its frontier (fewer MACs, or more speed, and a better score)
        curves = {k: [(q.macs, q.score) for q in pareto_frontier([Point((), x, y) for x, y in v])]
                  for k, v in curves.items()}
        speed = {k: [(-q.macs, q.score) for q in pareto_frontier([Point((), -x, y) for x, y in v])]
                 for k, v in speed.items()}
    plot_curves(curves, out.with_suffix(".png"), "MACs ratio (vs full model at real length)", metric, title=title)
    plot_curves(speed, out.parent / f"{out.name}_speed.png", "measured speed-up vs full model", metric,
                title=f"{title}, {device}")


def _goals(points: list[dict[str, Any]], metric: str, step_ms: dict[str, float],
           reduction: float = GOAL_REDUCTION_DEFAULT) -> list[str]:
    """One line per goal: MET / NOT MET with the figure behind it; ``reduction`` is the MACs goal (x fewer)."""
    lines = []
    baselines = {m: [(p["macs_ratio"], p[metric]) for p in points if p["method"] in (m, "full")]
                 for m in ("truncation", "extraction")}
    for method in ("gates", "lengthdrop"):
        pts = [p for p in points if p["method"] == method]
        if not pts:
            lines.append(f"NOT RUN  {method}: no runs found")
            continue
        ok = [p for p in pts if p["delta"] >= -GOAL_DROP and p["macs_reduction"] >= reduction]
        best = max((p for p in pts if p["delta"] >= -GOAL_DROP), key=lambda p: p["macs_reduction"], default=None)
        fig = (f"best within {GOAL_DROP:g} point: {best['macs_reduction']:.2f}x fewer MACs at {best[metric] * 100:.2f} "
               f"({best['delta']:+.2f})" if best else f"no point within {GOAL_DROP:g} point of the full model")
        lines.append(f"{'MET    ' if ok else 'NOT MET'}  {method}: >= {reduction:g}x fewer MACs at <= "
                     f"{GOAL_DROP:g} point drop; {fig}")
        if best is not None:
            share = best["speed_share"]
            lines.append(f"{'MET    ' if share >= GOAL_SPEED_SHARE else 'NOT MET'}  {method}: measured speed-up >= "
                         f"{GOAL_SPEED_SHARE} x MACs reduction at that point; {best['speedup']:.2f}x of "
                         f"{best['macs_reduction']:.2f}x ({share:.2f})")
        for base, curve in baselines.items():
            vs = compare_to_curve([(p["macs_ratio"], p[metric]) for p in pts], curve)
            if not vs["compared"]:
                lines.append(f"NO DATA  {method} above {base}: no {base} points span its MACs ratios")
                continue
            lines.append(f"{'MET    ' if not vs['below'] else 'NOT MET'}  {method} above {base} at every "
                         f"equal-MACs point: {vs['compared'] - vs['below']} of {vs['compared']} comparable points above"
                         + (" (below at MACs ratio " + ", ".join(f"{x:.2f}" for x in vs["below_at"]) + ")"
                            if vs["below"] else ""))
        if method in step_ms and "full" in step_ms:
            r = step_ms[method] / step_ms["full"]
            lines.append(f"{'MET    ' if r <= GOAL_STEP[method] else 'NOT MET'}  {method} training step <= "
                         f"{GOAL_STEP[method]}x method=full: {r:.2f}x")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dyntok.compare", description=__doc__.splitlines()[0])
    ap.add_argument("runs", help="benchmark folder with the runs (benchmarks/sst2_tradeoff.sh OUT)")
    ap.add_argument("--data-dir", default=None, help="task data (default: the runs' data_dir)")
    ap.add_argument("--split", default="test", help="report split (GLUE: the dev file)")
    ap.add_argument("--out", default="docs/benchmarks/benchmark", help="output prefix (.md, .png, _speed.png, .json)")
    ap.add_argument("--truncate", type=int, nargs="*", default=[8, 12, 16, 24], help="static truncation lengths")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3, help="timed passes per point (the best counts)")
    ap.add_argument("--max-examples", type=int, default=None, help="cap on the split (metric and latency)")
    ap.add_argument("--time-examples", type=int, default=320,
                    help="latency is timed on evenly spread batches holding about this many examples (0: all)")
    ap.add_argument("--max-frontier", type=int, default=8, help="LengthDrop frontier points measured (0: all)")
    ap.add_argument("--train-steps", type=int, default=12, help="batches timed per method (2 warm-up)")
    ap.add_argument("--goal-reduction", type=float, default=None,
                    help="MACs goal, x fewer at <= 1 point drop (default: 4 on imdb, 2.5 otherwise)")
    ap.add_argument("--memory", action=argparse.BooleanOptionalAction, default=True,
                    help="memory per method: resident before evaluating, and added at the evaluation's peak "
                         "(a fresh CPU process each)")
    ap.add_argument("--trust-checkpoint", action="store_true",
                    help="also load checkpoints holding more than tensors and plain data (they could run code)")
    ap.add_argument("--title", default=None, help="plot title (--replot)")
    ap.add_argument("--replot", metavar="JSON", default=None,
                    help="only draw the plots again from a .json this command wrote (no measuring)")
    ap.add_argument("--by", choices=["label", "method"], default="label",
                    help="a curve per run label, or per method with its Pareto frontier (headline plots)")
    args = ap.parse_args(argv)
    args.argv = argv
    if args.replot:
        data = json.loads(Path(args.replot).read_text())
        pts = data["points"]
        metric = next(k for k in ("accuracy", "f1", "mcc", "pearson") if k in pts[0])
        plot_points(pts, metric, Path(args.out), args.title or Path(args.replot).stem, "cpu", by=args.by)
        print(f"wrote {Path(args.out).with_suffix('.png')} and {Path(args.out).parent / (Path(args.out).name + '_speed.png')}")
        return 0
    try:
        return run(args)
    except DyntokError as e:
        print(f"dyntok: error: {user_message(e, '--trust-checkpoint')}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
