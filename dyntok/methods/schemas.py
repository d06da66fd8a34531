"""The Hydra config nodes: the typed option blocks of :mod:`dyntok.methods.config` as method nodes with their
``_target_``, the ``data`` node, and their registration in Hydra's ConfigStore (``schema/method/<name>``,
``schema/data``, ...), where the shipped YAML files extend them.
"""

from __future__ import annotations

from dataclasses import dataclass

from dyntok.data.config import DataConfig
from dyntok.methods.config import (
    CheckpointConfig,
    GatesConfig,
    LengthDropConfig,
    PowerBertConfig,
    SpeedupConfig,
    TrainingConfig,
)


@dataclass
class _Method:
    name: str = "full"
    """The method's name in results and run folders."""


@dataclass
class FullNode(TrainingConfig, _Method):
    """``method=full``."""

    _target_: str = "dyntok.methods.full.FullFineTuning"


@dataclass
class GatesNode(GatesConfig, TrainingConfig, _Method):
    """``method=gates``."""

    _target_: str = "dyntok.methods.gates.GatesModule"


@dataclass
class LengthDropNode(LengthDropConfig, TrainingConfig, _Method):
    """``method=lengthdrop``."""

    _target_: str = "dyntok.methods.lengthdrop.LengthDropModule"


@dataclass
class PowerBertNode(PowerBertConfig, TrainingConfig, _Method):
    """``method=powerbert``."""

    _target_: str = "dyntok.methods.powerbert.PowerBertModule"


@dataclass
class DataNode(DataConfig):
    """The ``data`` node: :class:`dyntok.data.DynTokDataModule`'s options."""

    _target_: str = "dyntok.data.DynTokDataModule"


# dyntok's methods by their ``method=`` name: the only classes a checkpoint may name
METHOD_NODES: dict[str, type] = {"full": FullNode, "gates": GatesNode, "lengthdrop": LengthDropNode,
                                 "powerbert": PowerBertNode}


def register_schemas() -> None:
    """Put the nodes into Hydra's ConfigStore (``schema/method/{full,gates,lengthdrop,powerbert}``, ``schema/data``,
    ``schema/speedup``, ``schema/checkpoint``),
    where the shipped YAML files extend them. Idempotent."""
    from hydra.core.config_store import ConfigStore
    from omegaconf import DictConfig

    cs = ConfigStore.instance()
    for name, node in METHOD_NODES.items():
        cs.store(group="schema/method", name=name, node=node)
    # lambda is a Python keyword, so no dataclass field: a dict node whose values must be floats
    cs.store(group="schema", name="regularizer",
             node=DictConfig(GatesConfig.__dataclass_fields__["regularizer"].default_factory(), element_type=float,
                             key_type=str))
    cs.store(group="schema", name="data", node=DataNode)
    cs.store(group="schema", name="speedup", node=SpeedupConfig)
    cs.store(group="schema", name="checkpoint", node=CheckpointConfig)


register_schemas()
