"""Published numbers generated from committed records, never typed: README's results table and main-job
sentence, rebuilt by ``python -m dyntok.report --publish`` and checked by ``--check``.

A spec (``docs/benchmarks/published.yaml``) names, for each generated block of a markdown file, the records it
is computed from. A block sits between ``<!-- dyntok:NAME:begin -->`` and ``<!-- dyntok:NAME:end -->``.
Two kinds of record feed a row:

- a run's ``results.json`` (``run: PATH``; several, one per seed, give a mean and a standard deviation),
  its speed-up being the run's own end-of-run measurement;
- a point of a ``python -m dyntok.compare`` record (``compare: PATH``, ``label``, ``config``), measured
  beside the full model in one process.
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

    metric: float
    macs_ratio: float
    padded_macs_ratio: float
    speedup: float | None
    source: str
    cpu: str | None = None
    wall_s: float | None = None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: no such record") from None
    except ValueError as e:
        raise DataError(f"{path}: not JSON ({e})") from None


def from_run(path: str | Path, split: str | None = None) -> Measured:
    """The numbers of a run's ``results.json`` on ``split`` (default: its first report split).

    Raises:
        DataError: no such file, not JSON, a failed run, or no such split (naming the file).
    """
    path = Path(path)
    rec = _read_json(path)
    if rec.get("status") != "ok":
        raise DataError(f"{path}: the run failed ({rec.get('error')}); a failed run is reported as such")
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
                    rec.get("wall_time_s"))


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


def measure(source: dict[str, Any], root: Path) -> list[Measured]:
    """Every record a row's ``source`` names, relative to ``root``: ``{run: PATH or glob}`` (one per seed) or
    ``{compare: PATH, label: ..., config: ..., match: {...}}``.

    Raises:
        DataError: a source of neither kind, or a glob that matches nothing.
    """
    if "run" in source:
        paths = sorted(glob.glob(str(root / source["run"])))
        if not paths:
            raise DataError(f"no record matches {source['run']} under {root}")
        return [from_run(p, source.get("split")) for p in paths]
    if "compare" in source:
        return [from_compare(root / source["compare"], source["label"], source.get("config"), source.get("match"))]
    raise DataError(f"a row's source needs run: or compare:, got {sorted(source)}")


def _mean_sd(values: list[float], digits: int) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} +- {statistics.stdev(values):.{digits}f}"


def _ratio(x: float) -> str:
    return f"{x:.2f}" if x >= 0.095 else f"{x:.3f}"


def table(rows: list[dict[str, Any]], root: Path, base: Path) -> str:
    """README's results table: one row per spec row (``task``, ``what``, ``command``, ``source``), the metric
    as mean +- sd over seeds, MACs ratios (means), the median measured speed-up and links to the records
    (relative to ``base``, the folder of the file the table goes into)."""
    out = ["| task | what the row is | command | seeds | accuracy / F1 | MACs ratio, real | MACs ratio, padded "
           "| measured speed-up | records |", "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        ms = measure(row["source"], root)
        speeds = [m.speedup for m in ms if m.speedup is not None]
        own = "run" in row["source"]
        speed = (f"{statistics.median(speeds):.2f}x" + (" (run's own)" if own else "")) if speeds else "not measured"
        digits = row.get("digits", 2)
        links = ", ".join(f"[{i + 1}]({Path(os.path.relpath(m.source, base)).as_posix()})" for i, m in enumerate(ms))
        out.append(f"| {row['task']} | {row['what']} | {row['command']} | {len(ms)} | "
                   f"{_mean_sd([m.metric for m in ms], digits)} | "
                   f"{_ratio(statistics.mean(m.macs_ratio for m in ms))} | "
                   f"{_ratio(statistics.mean(m.padded_macs_ratio for m in ms))} | {speed} | {links} |")
    return "\n".join(out)


def main_job(spec: dict[str, Any], root: Path) -> str:
    """README's main-job sentences from the records of README's own command (``gates``) and of ``method=full``
    (``full``, optional until recorded): accuracy as mean +- sd over the seeds, MACs ratios, the median
    speed-up, the median minutes and the CPU they were measured on."""
    gates = measure({"run": spec["gates"]}, root)
    machines = sorted({m.cpu or "an unknown machine" for m in gates})
    minutes = statistics.median(m.wall_s for m in gates if m.wall_s) / 60
    text = (f"Over {len(gates)} seeds it reaches {_mean_sd([m.metric for m in gates], 2)}% accuracy at "
            f"{statistics.mean(m.macs_ratio for m in gates):.2f}x the full model's MACs at real length "
            f"({statistics.mean(m.padded_macs_ratio for m in gates):.2f}x padded) and runs "
            f"{statistics.median(m.speedup for m in gates if m.speedup):.2f}x faster (median), in "
            f"{minutes:.1f} minutes a run on {' / '.join(machines)}")
    full_glob = spec.get("full")
    full = measure({"run": full_glob}, root) if full_glob and glob.glob(str(root / full_glob)) else []
    if full:
        text += (f". `method=full`, the same recipe without gates, reaches {_mean_sd([m.metric for m in full], 2)}% "
                 f"over {len(full)} seeds")
    else:
        text += ". `method=full` on the same seeds is not recorded yet"
    return text + f" (records: `{spec['gates']}`" + (f", `{full_glob}`" if full else "") + ")."


def render(spec: dict[str, Any], root: Path) -> dict[Path, dict[str, str]]:
    """{markdown file: {block name: generated text}} for every block of ``spec``."""
    out: dict[Path, dict[str, str]] = {}
    for name, block in spec.items():
        base = (root / block["file"]).parent
        text = table(block["rows"], root, base) if "rows" in block else main_job(block, root)
        out.setdefault(root / block["file"], {})[name] = text
    return out


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
    spec = yaml.safe_load(spec_path.read_text())
    changed = []
    for path, blocks in render(spec, root).items():
        old = path.read_text()
        new = old
        for name, content in blocks.items():
            new = replace_block(new, name, content, str(path))
        if new != old:
            changed.append(str(path))
            if not check:
                path.write_text(new)
    return changed


