#!/usr/bin/env bash
# README's install, timed on a fresh copy of HEAD in a new virtual environment with pip's cache off (as on a fresh
# machine: every wheel downloaded), the record written to docs/benchmarks/install/install.json (commit, dirty
# flag, command, machine, minutes). Usage: benchmarks/install_time.sh   (a few minutes; network needed)
set -euo pipefail
ROOT=$(pwd)
PY=${PYTHON:-.venv/bin/python}
OUT=docs/benchmarks/install/install.json
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
git archive HEAD | tar -x -C "$TMP"
INSTALL='python3 -m venv .venv && .venv/bin/pip install torch==2.13.0 && .venv/bin/pip install -e ".[dev]"'
echo "$(date -u +%H:%M:%S) timing README's install in $TMP: $INSTALL" >&2
start=$(date +%s.%N)
(cd "$TMP" && PIP_NO_CACHE_DIR=1 bash -c "$INSTALL" > "$TMP/install.log" 2>&1) || { tail -20 "$TMP/install.log"; exit 1; }
end=$(date +%s.%N)
mkdir -p "$(dirname "$OUT")"
"$PY" - "$OUT" "$start" "$end" "$INSTALL" <<'PYEOF'
import json, sys
from dyntok.evaluation.results import environment
out, start, end, install = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
env = environment()
env["command"] = "benchmarks/install_time.sh"
rec = {"what": "README's install on a fresh copy of HEAD, new virtual environment, pip cache off",
       "install_command": install, "wall_time_s": end - start, "seed": None, "versions": env}
open(out, "w").write(json.dumps(rec, indent=2) + "\n")
print(f"install: {(end - start) / 60:.1f} minutes -> {out}")
PYEOF
