"""Experiment loggers as dyntok configures them (``logger=wandb``)."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger


class WandbLogger(_LightningWandbLogger):
    """Lightning's Weights & Biases logger, minus the ``anonymous`` argument Lightning 2.6 always hands to
    ``wandb.init`` (as None): wandb 0.31 then prints "The anonymous setting has no effect" on every run.
    Arguments: as Lightning's ``WandbLogger``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._wandb_init.pop("anonymous", None)  # Lightning's private init kwargs: the one place it is set
