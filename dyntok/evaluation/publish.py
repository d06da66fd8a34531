"""Published numbers generated from committed records, never typed: README's results table and main-job
sentence and the task pages' tables and plots, rebuilt by ``python -m dyntok.report --publish`` and checked
by ``--check``.

A spec (``docs/benchmarks/published.yaml``) names, for each generated block of a markdown file, the records it
is computed from. A block sits between ``<!-- dyntok:NAME:begin -->`` and ``<!-- dyntok:NAME:end -->``; a
table block may also draw its rows as a plot (``plot: PATH.png``; the PNG carries a digest of what it shows,
which ``--check`` compares). Three kinds of record feed a row:

- a run's ``results.json`` (``run: PATH``; several, one per seed, give a mean and a standard deviation),
  its speed-up being the run's own end-of-run measurement; a failed run's record (``status: failed``) is
  reported as failed, with its error;
- a point of a ``python -m dyntok.compare`` record (``compare: PATH``, ``label``, ``config``), measured
  beside the full model in one process;
- the log of a run that failed before runs recorded failures (``log: PATH``, its ``dyntok: error:`` line).

A block ``onnx: [PATH, ...]`` is the latency table of ``benchmarks/onnx_latency.py`` records.

A table block with ``papers_count: true`` adds the papers' MACs count. A row may name a ``reference`` (another row's ``id``: ``method=full`` trained as long); the table then gives
the difference of the means. A row whose records are not there yet says ``not run yet`` with its ``pending``
command; without ``pending`` a missing record is an error.
"""

from __future__ import annotations

import glob
import json
import os
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dyntok.errors import DataError

BEGIN, END = "<!-- dyntok:{}:begin -->", "<!-- dyntok:{}:end -->"


@dataclass
class Measured:
    """One record's numbers: ``metric`` in percent (accuracy, F1), MACs ratios at real length and padded to
    ``max_length``, the measured speed-up (None where not measured), where it comes from, and the machine
    ("2 cores of AMD EPYC") and wall time (s) of a run record."""

    metric: float | None
    macs_ratio: float | None
    padded_macs_ratio: float | None
    speedup: float | None
    source: str
    cpu: str | None = None
    wall_s: float | None = None
    failed: str | None = None
    """The error of a run that failed (its numbers are then None)."""
    paper_macs_ratio: float | None = None
    """The papers' count: the configuration on one input padded to ``max_length`` against the full model there."""


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: no such record") from None
    except ValueError as e:
        raise DataError(f"{path}: not JSON ({e})") from None


def from_run(path: str | Path, split: str | None = None) -> Measured:
    """The numbers of a run's ``results.json`` on ``split`` (default: its first report split); a failed run's
    record gives its error (``failed``) and no numbers.

    Raises:
        DataError: no such file, not JSON, or no such split (naming the file).
    """
    path = Path(path)
    rec = _read_json(path)
    if rec.get("status") != "ok":
        return Measured(None, None, None, None, str(path), failed=str(rec.get("error") or "no error recorded"))
    splits = rec.get("splits") or {}
    split = split or next(iter(splits), None)
    vals = splits.get(split)
    if vals is None:
        raise DataError(f"{path}: no split {split!r} (has {', '.join(splits)})")
    speed = rec.get("speedup") or {}
    machine = rec.get("versions") or {}
    return Measured(100 * vals[rec["main_metric"]], vals["macs_ratio"], vals["padded_macs_ratio"],
                    speed.get("measured_speedup"), str(path),
                    f"{machine.get('cpu_count', '?')} cores of {machine.get('cpu_model') or 'an unknown CPU'}",
                    rec.get("wall_time_s"), paper_macs_ratio=vals.get("paper_macs_ratio"))


def from_compare(path: str | Path, label: str, config: str | None = None, match: dict[str, Any] | None = None
                 ) -> Measured:
    """The point ``label`` (and ``config``, a length configuration as compare describes it, and the fields
    ``match`` gives, e.g. ``{lambda: 4.0}``) of a ``python -m dyntok.compare`` record.

    Raises:
        DataError: no such file, or not exactly one point with that label and configuration.
    """
    path = Path(path)
    match = {**(match or {}), "label": label, **({"config": config} if config is not None else {})}
    points = [p for p in _read_json(path)["points"] if all(p.get(k) == v for k, v in match.items())]
    if len(points) != 1:
        raise DataError(f"{path}: {len(points)} points with {match}; expected one")
    p = points[0]
    metric = next(k for k in ("accuracy", "f1", "mcc", "pearson") if k in p)
    return Measured(100 * p[metric], p["macs_ratio"], p["padded_macs_ratio"], p.get("speedup"), str(path))


def from_log(path: str | Path) -> Measured:
    """A run that failed and wrote no record, from its log: the last ``dyntok: error:`` line.

    Raises:
        DataError: no such file, or no error line in it.
    """
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise DataError(f"{path}: no such log") from None
    errors = [ln.split("dyntok: error:", 1)[1].strip() for ln in lines if "dyntok: error:" in ln]
    if not errors:
        raise DataError(f"{path}: no 'dyntok: error:' line (the log of a failed run is expected)")
    return Measured(None, None, None, None, str(path), failed=errors[-1])


def measure(source: dict[str, Any], root: Path, pending: bool = False) -> list[Measured]:
    """Every record a row's ``source`` names, relative to ``root``: ``{run: PATH or glob}`` (one per seed),
    ``{compare: PATH, label: ..., config: ..., match: {...}}`` or ``{log: PATH}``. With ``pending``, a glob
    that matches nothing gives no records (the row is not run yet).

    Raises:
        DataError: a source of no known kind, or (without ``pending``) a glob that matches nothing.
    """
    if "run" in source:
        paths = sorted(glob.glob(str(root / source["run"])))
        if not paths and not pending:
            raise DataError(f"no record matches {source['run']} under {root}")
        return [from_run(p, source.get("split")) for p in paths]
    if "compare" in source:
        return [from_compare(root / source["compare"], source["label"], source.get("config"), source.get("match"))]
    if "log" in source:
        return [from_log(root / source["log"])]
    raise DataError(f"a row's source needs run:, compare: or log:, got {sorted(source)}")


def _mean_sd(values: list[float], digits: int) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} +- {statistics.stdev(values):.{digits}f}"


def _ratio(x: float) -> str:
    return f"{x:.2f}" if x >= 0.095 else f"{x:.3f}"


def _mean(values: list[float]) -> float:
    return statistics.mean(values)


def _link(source: str, base: Path, i: int) -> str:
    return f"[{i + 1}]({Path(os.path.relpath(source, base)).as_posix()})"


def table(rows: list[dict[str, Any]], root: Path, base: Path, papers_count: bool = False
          ) -> tuple[str, list[dict[str, Any]]]:
    """A results table: one row per spec row (``task``, ``what``, ``command``, ``source``; optional ``id``,
    ``reference``, ``pending``, ``digits``, and ``short`` / ``series``: its name on the plot, where rows of one
    series are joined), the metric as mean +- sd over seeds, MACs ratios (means), the
    median measured speed-up and links to the records (relative to ``base``, the folder of the file the table
    goes into). Where a row names a ``reference``, a column gives the difference of the means; with
    ``papers_count``, a column gives the papers' MACs count (the configuration on a padded input), where the
    record has it.

    Returns:
        the markdown table, and per row with numbers its plotted point (``what``, means and sds).

    Raises:
        DataError: a missing record, or a reference to no earlier row's ``id``.
    """
    with_ref = any(r.get("reference") for r in rows)
    head = ["task", "what the row is", "command", "seeds", "accuracy / F1"] + (["vs reference"] if with_ref else []) \
        + ["MACs ratio, real", "MACs ratio, padded"] + (["MACs ratio, papers' count"] if papers_count else []) \
        + ["measured speed-up", "records"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    means: dict[str, float] = {}
    points = []
    ids: set[str] = set()
    for row in rows:
        ref = row.get("reference")
        if ref and ref not in ids:
            raise DataError(f"row {row['what']!r}: reference {ref!r} is no earlier row's id")
        ids.update([row["id"]] if "id" in row else [])
        ms = measure(row["source"], root, pending="pending" in row)
        ok = [m for m in ms if m.failed is None]
        failed = [m for m in ms if m.failed is not None]
        digits = row.get("digits", 2)
        links = ", ".join(_link(m.source, base, i) for i, m in enumerate(ms)) or "-"
        seeds = str(len(ok)) + (f" ({len(failed)} failed)" if failed and ok else "")
        if not ok:  # the metric cell says why; every other number is "-"
            why = f"failed: {failed[0].failed}" if failed else "not run yet"
            seeds = f"0 ({len(failed)} failed)" if failed else "0"
            cells = [row["task"], row["what"], row["command"], seeds, why, *["-"] * (len(head) - 6), links]
            out.append("| " + " | ".join(cells) + " |")
            continue
        metric = [m.metric for m in ok]
        speeds = [m.speedup for m in ok if m.speedup is not None]
        own = "run" in row["source"]
        speed = (f"{statistics.median(speeds):.2f}x" + (" (run's own)" if own else "")) if speeds else "not measured"
        if "id" in row:
            means[row["id"]] = _mean(metric)
        vs = []
        if with_ref:
            vs = [f"{_mean(metric) - means[ref]:+.{digits}f}" if ref in means else
                  "reference not run yet" if ref else "-"]
        macs, padded = _mean([m.macs_ratio for m in ok]), _mean([m.padded_macs_ratio for m in ok])
        paper = [m.paper_macs_ratio for m in ok if m.paper_macs_ratio is not None]
        papers = [(_ratio(_mean(paper)) if len(paper) == len(ok) else "not recorded")] if papers_count else []
        cells = [row["task"], row["what"], row["command"], seeds, _mean_sd(metric, digits), *vs, _ratio(macs),
                 _ratio(padded), *papers, speed, links]
        out.append("| " + " | ".join(cells) + " |")
        points.append({"what": row.get("series") or row.get("short", row["what"]), "macs": macs, "metric": _mean(metric),
                       "sd": statistics.stdev(metric) if len(metric) > 1 else 0.0})
    return "\n".join(out), points


def main_job(spec: dict[str, Any], root: Path) -> str:
    """README's main-job sentences from the records of README's own command (``gates``) and of ``method=full``
    (``full``, optional until recorded): accuracy as mean +- sd over the seeds, MACs ratios, the median
    speed-up, the median minutes and the CPU they were measured on."""
    gates = [m for m in measure({"run": spec["gates"]}, root) if m.failed is None]
    machines = sorted({m.cpu or "an unknown machine" for m in gates})
    minutes = statistics.median(m.wall_s for m in gates if m.wall_s) / 60
    text = (f"Over {len(gates)} seeds it reaches {_mean_sd([m.metric for m in gates], 2)}% accuracy at "
            f"{statistics.mean(m.macs_ratio for m in gates):.2f}x the full model's MACs at real length "
            f"({statistics.mean(m.padded_macs_ratio for m in gates):.2f}x padded) and runs "
            f"{statistics.median(m.speedup for m in gates if m.speedup):.2f}x faster (median), in "
            f"{minutes:.1f} minutes a run on {' / '.join(machines)}")
    full_glob = spec.get("full")
    full = [m for m in measure({"run": full_glob}, root, pending=True) if m.failed is None] if full_glob else []
    if full:
        text += (f". `method=full`, the same recipe without gates, reaches {_mean_sd([m.metric for m in full], 2)}% "
                 f"over {len(full)} seeds")
    else:
        text += ". `method=full` on the same seeds is not recorded yet"
    text += f" (records: `{spec['gates']}`" + (f", `{full_glob}`" if full else "") + ")."
    if spec.get("install") and (root / spec["install"]).is_file():
        rec = _read_json(root / spec["install"])
        env = rec["versions"]
        text += (f" The install above took {rec['wall_time_s'] / 60:.1f} minutes on {env.get('cpu_count')} cores of "
                 f"{env.get('cpu_model')} ({rec['what']}" + (f"; {rec['note']}" if rec.get("note") else "")
                 + f"; record: `{spec['install']}`).")
    return text


def compare_rows(block: dict[str, Any], root: Path) -> list[dict[str, Any]]:
    """One table row per point of a ``python -m dyntok.compare`` record (``points_of: PATH``, in its order;
    ``labels``: only these), each naming its label and its lambda or length configuration."""
    path = block["points_of"]
    rows = []
    for p in _read_json(root / path)["points"]:
        if block.get("labels") and p["label"] not in block["labels"]:
            continue
        what, src = p["label"], {"compare": path, "label": p["label"]}
        if p.get("lambda") is not None:
            what, src["match"] = f"{what}, lambda {p['lambda']:g}", {"lambda": p["lambda"]}
        elif p.get("config") is not None:
            what, src["config"] = f"{what}, `{p['config']}`", p["config"]
        rows.append({"task": block["task"], "what": what, "series": p["label"], "command": block["command"],
                     "source": src})
    return rows


def onnx_table(records: list[dict[str, Any]]) -> str:
    """The latency table of ``benchmarks/onnx_latency.py`` records (one per dataset): milliseconds per example
    of the full and the dropped model in PyTorch and ONNX Runtime, batched and single requests. MACs ratios:
    at each input's real length (dyntok's baseline) and the papers' count (the configuration run on one input
    padded to ``max_length``, against the full model there)."""
    lines = ["| data | requests | mean tokens | MACs ratio, real | MACs ratio, papers' count | PyTorch full (ms) | "
             "PyTorch dropped (ms) | ONNX full (ms) | ONNX dropped (ms) | speed-up PyTorch | speed-up ONNX | "
             "ONNX speed-up x MACs ratio | ONNX full vs PyTorch full |",
             "|" + "---|" * 13]
    for r in records:
        for mode, row in r["modes"].items():
            ms = row["ms_per_example"]
            lines.append(
                f"| {r['data']} ({r['max_length']}) | {mode} ({row['examples']}) | {row['mean_tokens']:.0f} | "
                f"{row['macs_ratio']:.3f} | {r['macs_ratio_padded']:.3f} | {ms['pytorch_full']:.2f} | "
                f"{ms['pytorch_dropped']:.2f} | {ms['onnx_full']:.2f} | {ms['onnx_dropped']:.2f} | "
                f"{row['speedup']['pytorch']:.2f}x | {row['speedup']['onnx']:.2f}x | "
                f"{row['speedup_per_macs_reduction']['onnx']:.2f} | {row['onnx_full_vs_pytorch_full']:.2f}x |")
    machines = sorted({f"{v.get('cpu_count')} cores of {v.get('cpu_model')}, {r['threads']} threads, ONNX Runtime "
                       f"{v.get('onnxruntime')}, torch {v.get('torch')}" for r in records for v in [r["versions"]]})
    return "\n".join(lines) + "\n\nMeasured on " + "; ".join(machines) + "."


def render(spec: dict[str, Any], root: Path
           ) -> tuple[dict[Path, dict[str, str]], dict[Path, tuple[list[dict[str, Any]], str]]]:
    """{markdown file: {block name: generated text}} for every block of ``spec``, and {PNG: (its points, its
    title)} for the plots table blocks draw."""
    out: dict[Path, dict[str, str]] = {}
    plots: dict[Path, tuple[list[dict[str, Any]], str]] = {}
    for name, block in spec.items():
        base = (root / block["file"]).parent
        if "rows" in block or "points_of" in block:
            rows = block.get("rows") or compare_rows(block, root)
            text, points = table(rows, root, base, papers_count=bool(block.get("papers_count")))
            if "plot" in block:
                plots[root / block["plot"]] = (points, block.get("title", name))
        elif "onnx" in block:
            text = onnx_table([_read_json(root / path) for path in block["onnx"]])
        else:
            text = main_job(block, root)
        out.setdefault(root / block["file"], {})[name] = text
    return out, plots


def plot_digest(points: list[dict[str, Any]], title: str) -> str:
    """What a generated plot shows, as a short digest (stored in the PNG, compared by ``--check``)."""
    import hashlib

    return hashlib.sha256(json.dumps([title, points], sort_keys=True).encode()).hexdigest()[:16]


def draw(points: list[dict[str, Any]], path: Path, title: str) -> None:
    """A table block's rows as points: the metric's mean (error bar: sd over seeds) against the real-length
    MACs ratio, the digest of the data in the PNG's metadata."""
    from dyntok.evaluation.plots import plot_points

    plot_points(points, path, title, digest=plot_digest(points, title))


def stored_digest(path: Path) -> str | None:
    """The digest a generated PNG carries, None for a missing or foreign file."""
    try:
        from PIL import Image

        with Image.open(path) as im:
            return im.text.get("dyntok-digest")  # type: ignore[attr-defined]
    except (OSError, ValueError):
        return None


def replace_block(text: str, name: str, content: str, where: str) -> str:
    """``text`` with the block ``name`` replaced by ``content``.

    Raises:
        DataError: the block's markers are missing or out of order (naming ``where``).
    """
    begin, end = BEGIN.format(name), END.format(name)
    i, j = text.find(begin), text.find(end)
    if i < 0 or j < i:
        raise DataError(f"{where}: no generated block {name!r} (expected {begin} ... {end})")
    return text[:i + len(begin)] + "\n" + content + "\n" + text[j:]


def publish(spec_path: str | Path, root: str | Path = ".", check: bool = False) -> list[str]:
    """Rebuild every generated block ``spec_path`` names (paths relative to ``root``); with ``check``, write
    nothing and return the files whose blocks differ from what they hold.

    Returns:
        the files written (or, with ``check``, out of date).

    Raises:
        DataError: a missing record, spec or block marker.
    """
    import yaml

    root, spec_path = Path(root), Path(spec_path)
    if not spec_path.is_file():
        raise DataError(f"{spec_path}: no such publishing spec")
    try:
        spec = yaml.safe_load(spec_path.read_text())
    except yaml.YAMLError as e:
        raise DataError(f"{spec_path}: not valid YAML ({' '.join(str(e).split())})") from None
    changed = []
    rendered, plots = render(spec, root)
    for png, (points, title) in plots.items():
        if stored_digest(png) != plot_digest(points, title):
            changed.append(str(png))
            if not check:
                draw(points, png, title)
    for path, blocks in rendered.items():
        old = path.read_text()
        new = old
        for name, content in blocks.items():
            new = replace_block(new, name, content, str(path))
        if new != old:
            changed.append(str(path))
            if not check:
                path.write_text(new)
    return changed


