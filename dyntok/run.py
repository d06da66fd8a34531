"""The Hydra entry point: ``python -m dyntok.run method=gates task=sst2 data_dir=../shared/data/glue``.

Composes the config and hands it to :func:`dyntok.methods.train.train` (DataModule + model + method, fit,
test on the report split(s), ``results.json`` in the run directory). A failing run is recorded too
(``status: failed`` and the error in ``results.json``); in a multirun the sweep goes on. Returns the main test metric (what a sweeper optimises).
"""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from dyntok.errors import DyntokError, user_message
from dyntok.methods.schemas import register_schemas
from dyntok.methods.train import hydra_run_dir, train

log = logging.getLogger("dyntok")


def run_id(overrides: str) -> str:
    """Folder name of a run: ``default`` without overrides, else a short hash of them (``hydra.run.dir``)."""
    import hashlib

    return hashlib.sha1(overrides.encode()).hexdigest()[:10] if overrides else "default"


if not OmegaConf.has_resolver("run_id"):
    OmegaConf.register_new_resolver("run_id", run_id)
register_schemas()  # the typed nodes the shipped YAML files extend


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry; bad input ends with one line naming what is wrong (exit status 2)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        record = train(cfg)
    except DyntokError as e:
        message = user_message(e, "trust_checkpoint=true")
        record_failure(cfg, message)
        if multirun:  # one failing job must not stop the sweep
            log.error("job failed: %s", e)
            return None
        print(f"dyntok: error: {message}", file=sys.stderr)
        sys.exit(2)
    split = record["splits"].get(record.get("main_split") or next(iter(record["splits"]), ""), {})
    return split.get(record["main_metric"])


def record_failure(cfg: DictConfig, message: str) -> None:
    """Write a failed run's ``results.json`` (``status: failed``, the error, seed, overrides, versions, command
    and machine), so a budget the search cannot reach or a missing file is a record, not a gap. A run folder
    that already holds a successful record keeps it (rank zero writes; the error is printed either way)."""
    import json

    from lightning.fabric.utilities.rank_zero import rank_zero_only

    from dyntok.evaluation.results import RESULTS_FILE, environment, write_results

    if rank_zero_only.rank != 0:  # under SLURM every task of a DDP job gets here
        return
    run_dir = hydra_run_dir()
    try:
        if json.loads((run_dir / RESULTS_FILE).read_text()).get("status") == "ok":
            return
    except (OSError, ValueError):
        pass
    from hydra.core.hydra_config import HydraConfig

    write_results(run_dir, {"task": cfg.task.name, "method": cfg.method.name, "label": cfg.get("label"),
                            "status": "failed", "error": message, "seed": cfg.get("seed"),
                            "overrides": list(HydraConfig.get().overrides.task), "versions": environment()})


def composition_error(error: BaseException) -> str:
    """A Hydra or OmegaConf error (a bad override, a wrongly typed value) as one line: what Hydra says and the
    first line of its cause (``Error merging override regularizer.lambda=abc: Value 'abc' ... Float``)."""
    text = str(error).split("Config search path")[0]  # Hydra's list of its search path: not for the user
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    parts = [" ".join(lines) if lines else type(error).__name__]  # e.g. "Could not find ... Available options: ..."
    cause = error.__cause__
    if cause is not None and str(cause).strip():
        parts.append(str(cause).strip().splitlines()[0])
    return ": ".join(parts)


def cli() -> None:
    """``python -m dyntok.run`` and ``dyntok``: :func:`main`, with a config that does not compose (a bad
    override, a wrongly typed value) reported as one ``dyntok: error:`` line (exit status 2).
    ``HYDRA_FULL_ERROR=1`` shows Hydra's own report with the stack trace instead."""
    import os

    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    full = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra then re-raises what it would print in several lines
    try:
        main()
    except (HydraException, OmegaConfBaseException) as e:
        if full:
            raise
        print(f"dyntok: error: {composition_error(e)}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    cli()
