"""The Hydra entry point: ``python -m dyntok.run method=gates task=sst2 data_dir=../shared/data/glue``.

Composes the config and hands it to :func:`dyntok.methods.train.train` (DataModule + model + method, fit,
test on the report split(s), ``results.json`` in the run directory); a failing job of a multirun is recorded
and the sweep goes on. Returns the main test metric (what a sweeper optimises).
"""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from dyntok.errors import DyntokError
from dyntok.methods.config import register_schemas
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
        if multirun:
            # One failing job must not stop the sweep: record it and let the others run.
            from lightning.fabric.utilities.rank_zero import rank_zero_only

            from dyntok.evaluation.results import write_results

            if rank_zero_only.rank == 0:  # under SLURM every task of a DDP job gets here
                write_results(hydra_run_dir(), {"task": cfg.task.name, "method": cfg.method.name, "status": "failed",
                                           "error": str(e)})
            log.error("job failed: %s", e)
            return None
        print(f"dyntok: error: {e}", file=sys.stderr)
        sys.exit(2)
    split = record["splits"].get(record.get("main_split") or next(iter(record["splits"]), ""), {})
    return split.get(record["main_metric"])


if __name__ == "__main__":
    main()
