"""The one results format: ``results.json`` in each run directory.

Every method, the report, the plots and the sweeps read and write this. One record::

    {"task": "sst2", "method": "gates", "model": "minilm", "status": "ok",
     "splits": {"test": {"accuracy": 0.91, "examples": 872, "macs_per_example": 1.2e9,
                          "macs_ratio": 0.38, "padded_macs_ratio": 0.12, ...}},
     "main_metric": "accuracy", "length_config": {...} | null, "extra": {...},
     "wall_time_s": 812.3, "versions": {...}, "config": {...}}
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

RESULTS_FILE = "results.json"


def cpu_model() -> str | None:
    """The CPU's model name (``/proc/cpuinfo``), None where it cannot be read."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), None)
    except OSError:
        return None


def command_line() -> str:
    """This process's command line as it can be rerun: ``python -m dyntok.run key=value ...`` for a module run
    with ``-m``, else the script and its arguments (shell-quoted)."""
    import shlex
    import sys

    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    prog = ["python", "-m", spec.name] if spec is not None and spec.name else ["python", sys.argv[0]]
    return shlex.join([*prog, *sys.argv[1:]])


def environment(device: Any = None) -> dict[str, Any]:
    """Where a result was produced: versions of dyntok, torch, transformers, Lightning and Python, the git
    commit and whether tracked files differed from it (``git_dirty``; both None outside a dyntok checkout),
    the command line, the platform, CPU model, core count and torch threads, the accelerator (a CUDA GPU's
    name, else None) and the device given. ``results.json`` keeps it under ``versions``; every benchmark
    record carries it too."""
    import lightning
    import torch
    import transformers

    import dyntok

    commit = dirty = None
    root = Path(__file__).resolve().parents[2]
    try:
        # a source checkout only: an installed package's folder may sit inside some other repository
        if "name = \"dyntok\"" not in (root / "pyproject.toml").read_text():
            raise OSError("not a dyntok checkout")
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = bool(subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True,
            timeout=10, check=True).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    env: dict[str, Any] = {
        "dyntok": dyntok.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "lightning": lightning.__version__,
        "python": platform.python_version(),
        "git_commit": commit,
        "git_dirty": dirty,
        "command": command_line(),
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "accelerator": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    if device is not None:
        device = torch.device(device)
        env["device"] = str(device)
        if device.type == "cuda":
            env["gpu"] = torch.cuda.get_device_name(device)
    return env


def _clean(x: Any) -> Any:
    """JSON-safe: tensors and numpy scalars to floats, NaN/inf to None."""
    if hasattr(x, "item") and callable(x.item) and getattr(x, "ndim", 0) == 0:
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    return x


def write_results(run_dir: str | os.PathLike, record: dict[str, Any]) -> Path:
    """Write ``record`` to ``run_dir/results.json`` atomically (a killed run never leaves half a file)."""
    path = Path(run_dir) / RESULTS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(_clean(record), indent=2, sort_keys=False))
    os.replace(tmp, path)
    return path


def read_results(paths: Iterable[str | os.PathLike] | str | os.PathLike) -> list[dict[str, Any]]:
    """Every ``results.json`` under the given files or folders (searched recursively), each with ``path``."""
    if isinstance(paths, str | os.PathLike):
        paths = [paths]
    out = []
    for p in paths:
        p = Path(p)
        files = [p] if p.is_file() else sorted(p.rglob(RESULTS_FILE))
        for f in files:
            rec = json.loads(f.read_text())
            rec["path"] = str(f.parent)
            out.append(rec)
    return out


CONTROLLER_KEYS = ("multiplier", "expected_macs_ratio", "hard_macs_ratio", "target_macs")


def controller_trace(run_dir: str | os.PathLike) -> dict[str, list[tuple[int, float]]]:
    """A compute target's per-step log (``train/<key>`` for :data:`CONTROLLER_KEYS`, as
    :class:`dyntok.methods.gates.GatesModule` logs it) read from the run's CSV logger (``metrics.csv`` under
    ``run_dir``): {key: [(step, value)]}.

    Raises:
        FileNotFoundError: the run has no ``metrics.csv`` (it needs ``logger=csv``).
    """
    import csv

    files = sorted(Path(run_dir).rglob("metrics.csv"))
    if not files:
        raise FileNotFoundError(f"{run_dir}: no metrics.csv (the controller trace needs logger=csv)")
    trace: dict[str, list[tuple[int, float]]] = {k: [] for k in CONTROLLER_KEYS}
    with open(files[-1], newline="") as f:
        for row in csv.DictReader(f):
            for k in CONTROLLER_KEYS:
                v = row.get(f"train/{k}")
                if v not in (None, ""):
                    trace[k].append((int(row["step"]), float(v)))
    return trace


def flat_rows(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (run, split): task, method, model, split, metrics and compute, for tables and plots."""
    rows = []
    for r in records:
        for split, vals in (r.get("splits") or {}).items():
            row = {"task": r.get("task"), "method": r.get("method"), "model": r.get("model"), "split": split}
            row.update({"label": r.get("label", r.get("method"))})
            row.update(vals)
            rows.append(row)
        if not r.get("splits"):
            rows.append({"task": r.get("task"), "method": r.get("method"), "status": r.get("status"),
                         "error": r.get("error")})
    return rows


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def format_table(rows: list[dict[str, Any]], columns: list[str] | None = None, sep: str | None = None) -> str:
    """A markdown table of ``rows`` (floats to 4 significant digits, None as ``-``); with ``sep`` (e.g. a tab)
    plain delimited text instead, every value exact (lists joined by commas), for files other programs read."""
    if not rows:
        return "(no results)" if sep is None else ""
    if columns is None:
        columns = []
        for r in rows:
            columns += [k for k in r if k not in columns]
    if sep is not None:
        def raw(v: Any) -> str:
            return ",".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)

        return "\n".join([sep.join(columns), *(sep.join(raw(r.get(c)) for c in columns) for r in rows)]) + "\n"
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |")
    return "\n".join(lines)
