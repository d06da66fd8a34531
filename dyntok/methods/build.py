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


def build_method(cfg: DictConfig, model, task, run_config: dict[str, Any] | None = None):
    """The method's LightningModule from the ``method`` group, on ``model`` for ``task``; the run's
    ``eval_length_config`` (when set) is its test-time ``length_config``. ``run_config``: the resolved run
    config the module stores in its checkpoints."""
    cls, params = _target(cfg.method)
    params.pop("name", None)
    from dyntok.core.lengths import LengthConfig

    # the test-time configuration: the run's eval_length_config (any method) over the method's own
    for key, value in (("method.length_config", params.get("length_config")),
                       ("eval_length_config", cfg.get("eval_length_config"))):
        if value is not None:
            value = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
            params["length_config"] = LengthConfig.parse(value, model.num_layers, key)
    return cls(model=model, task=task, run_config=run_config, **params)
