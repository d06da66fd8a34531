"""Building a task model and a method's LightningModule from the Hydra config (``model``, ``method`` groups)."""

from __future__ import annotations

from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf


def build_model(model_cfg: DictConfig, task, backbone_config: dict[str, Any] | None = None) -> Any:
    """The :class:`dyntok.core.model.DynTokModel` a ``model`` config group entry describes, for ``task``;
    ``backbone_config``: the architecture a checkpoint stored, built without its pretrained weights."""
    from dyntok.core.model import DynTokModel

    return DynTokModel.from_pretrained(
        model_cfg.pretrained,
        task.problem,
        num_labels=task.num_labels,
        config=OmegaConf.to_container(model_cfg.config, resolve=True) if model_cfg.get("config") else None,
        significance=model_cfg.significance,
        include_diagonal=model_cfg.include_diagonal,
        head_reduce=model_cfg.head_reduce,
        dropout=model_cfg.dropout,
        restore=model_cfg.get("restore", "output"),
        architecture=backbone_config,
    )


def _target(node: DictConfig) -> tuple[type, dict[str, Any]]:
    """``node._target_`` as a class, and the node's other keys resolved."""
    params = OmegaConf.to_container(node, resolve=True)
    return hydra.utils.get_class(params.pop("_target_")), params


def instantiate(node: DictConfig, **extra: Any) -> Any:
    """Call ``node._target_`` with the node's other keys; errors propagate unwrapped (one clear line)."""
    cls, params = _target(node)
    return cls(**params, **extra)


def test_length_config(cfg: DictConfig | dict[str, Any], num_layers: int):
    """The test-time length configuration a run config sets: ``eval_length_config`` (any method) over
    ``method.length_config``; None when neither is set (the method's own rule).

    Raises:
        ConfigError: a value :meth:`~dyntok.core.lengths.LengthConfig.parse` cannot read (naming its key).
    """
    from dyntok.core.lengths import LengthConfig

    cfg = OmegaConf.create(cfg) if isinstance(cfg, dict) else cfg
    for key, value in (("eval_length_config", cfg.get("eval_length_config")),
                       ("method.length_config", (cfg.get("method") or {}).get("length_config"))):
        if value is not None:
            value = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
            return LengthConfig.parse(value, num_layers, key)
    return None


def build_method(cfg: DictConfig, model, task, run_config: dict[str, Any] | None = None):
    """The method's LightningModule from the ``method`` group, on ``model`` for ``task``; its test-time
    ``length_config`` is :func:`test_length_config`. ``run_config``: the resolved run config the module
    stores in its checkpoints."""
    cls, params = _target(cfg.method)
    params.pop("name", None)
    params["length_config"] = test_length_config(cfg, model.num_layers)
    return cls(model=model, task=task, run_config=run_config, **params)
