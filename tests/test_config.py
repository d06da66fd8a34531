"""Typed configs: each block's dataclass defaults are what the command line composes, and a bad value names
its dotted key."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import dyntok.run  # noqa: F401  (registers the typed config nodes the YAML files extend)
from dyntok.data.config import DataConfig
from dyntok.errors import ConfigError
from dyntok.methods.config import (
    CheckpointConfig,
    GatesConfig,
    LengthDropConfig,
    SearchConfig,
    SpeedupConfig,
    TrainingConfig,
)
from dyntok.options import build_options

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "dyntok" / "conf"

# Keys a YAML file fills from another group on purpose (the model's learning rate, the task's length, the
# regularizer group, the run's seed and data folder): everything else is the dataclass default.
FROM_OTHER_GROUPS = {"lr", "max_length", "regularizer", "task", "tokenizer", "data_dir", "seed", "doc_stride",
                     "max_answer_length", "n_best"}


def _compose(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def _block(cfg, path: str):
    return OmegaConf.select(cfg, path)


@pytest.mark.parametrize(("overrides", "path", "classes"), [
    (["method=full"], "method", (TrainingConfig,)),
    (["method=gates"], "method", (TrainingConfig, GatesConfig)),
    (["method=lengthdrop"], "method", (TrainingConfig, LengthDropConfig)),
    (["method=lengthdrop"], "method.search", (SearchConfig,)),
    ([], "data", (DataConfig,)),
    ([], "speedup", (SpeedupConfig,)),
    ([], "checkpoint", (CheckpointConfig,)),
])
def test_dataclass_defaults_are_what_the_command_line_composes(overrides, path, classes):
    node = _block(_compose(overrides), path)
    checked = 0
    for cls in classes:
        for f in dataclasses.fields(cls):
            if f.name == "search" or f.name in FROM_OTHER_GROUPS and OmegaConf.is_interpolation(node, f.name):
                continue
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            composed = node[f.name]
            composed = OmegaConf.to_container(composed) if OmegaConf.is_config(composed) else composed
            assert composed == default, f"{path}.{f.name}: composes {composed!r}, the dataclass says {default!r}"
            checked += 1
    assert checked >= 3


@pytest.mark.parametrize(("cls", "prefix", "key", "bad"), [
    (TrainingConfig, "method", "warmup_ratio", 1.5),
    (GatesConfig, "method", "mu_ramp", [0.9, 0.1]),
    (GatesConfig, "method", "layer_weighting", "quadratic"),
    (LengthDropConfig, "method", "length_drop_prob", 1.0),
    (LengthDropConfig, "method", "kd_direction", "sideways"),
    (SearchConfig, "method.search", "budget", 1.5),
    (SearchConfig, "method.search", "fill", "new_only"),
    (SpeedupConfig, "speedup", "repeats", 0),
    (CheckpointConfig, "checkpoint", "every_n_train_steps", 0),
])
def test_a_bad_value_names_its_dotted_key(cls, prefix, key, bad):
    with pytest.raises(ConfigError, match=rf"{prefix}\.{key}"):
        build_options(cls, {key: bad}, prefix)


def test_an_unknown_key_names_its_block():
    with pytest.raises(ConfigError, match="method.search"):
        build_options(SearchConfig, {"budjet": 0.5}, "method.search")


def test_a_data_value_out_of_range_stops_the_run_naming_the_key(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "dyntok.run", "debug=fast", "data.batch_size=0",
                           f"hydra.run.dir={tmp_path}"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 2 and "data.batch_size" in proc.stderr, proc.stderr[-2000:]


def test_each_search_and_gates_default_is_written_once():
    """The low-level classes take their defaults from the config dataclasses (or the dataclasses from them):
    no second literal that could drift."""
    import inspect

    from dyntok.core.gates import RankGates
    from dyntok.methods.evolution import EvolutionarySearch

    search = inspect.signature(EvolutionarySearch).parameters
    for name in ("population", "iterations", "mutations", "crossovers", "mutation_prob", "seed", "init", "fill",
                 "parents", "racing"):
        assert search[name].default == getattr(SearchConfig, name), name
    assert search["length_drop_prob"].default == LengthDropConfig.length_drop_prob
    gates = inspect.signature(RankGates).parameters
    for ours, theirs in (("parametrization", "parametrization"), ("gate_init", "init"),
                         ("straight_through", "straight_through"), ("threshold", "threshold"),
                         ("skip_first", "skip_first"), ("min_keep", "min_keep"), ("rank_scale", "rank_scale"),
                         ("rank_bins", "bins")):
        assert gates[theirs].default == getattr(GatesConfig, ours), ours


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("override", [*(f"experiment={e}" for e in _options("experiment")),
                                      *(f"debug={d}" for d in _options("debug")),
                                      *(f"callbacks={c}" for c in _options("callbacks")),
                                      *(f"trainer={t}" for t in _options("trainer"))])
def test_every_experiment_and_group_option_composes_and_instantiates(override):
    from dyntok.core.model import DynTokModel
    from dyntok.data.tasks import get_task
    from dyntok.methods.build import build_method, instantiate
    from tests.conftest import TINY_BERT

    cfg = _compose([override, "data_dir=/nowhere"])
    if override.startswith("experiment="):  # <task>_<method>: the recipe runs the method it is named for
        named = override.split("_", 1)[1]
        assert cfg.method.name == {"search": "lengthdrop", "gates_target": "gates"}.get(named, named)
    task = get_task(cfg.task.name)
    model = DynTokModel.from_pretrained(None, task.problem, task.num_labels, config=TINY_BERT)
    module = build_method(cfg, model, task)
    assert module.method_name == cfg.method.name
    dm = instantiate(cfg.data)  # options checked; nothing is read before setup()
    assert dm.task.name == cfg.task.name
    for node in (cfg.get("callbacks") or {}).values():
        if node is not None:
            instantiate(node)
    OmegaConf.to_container(cfg.trainer, resolve=True)


# a tiny architecture of each hub model's type: the group's options are built without downloading weights
_TINY_ARCH = {"bert": dict(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=64),
              "roberta": dict(vocab_size=50265, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                              intermediate_size=64),
              "distilbert": dict(vocab_size=30522, dim=32, n_layers=2, n_heads=4, hidden_dim=64)}
_HUB_TYPE = {"bert_base": "bert", "distilbert": "distilbert", "roberta_base": "roberta"}


@pytest.mark.parametrize("override", [*(f"{g}={o}" for g in ("method", "task", "model", "regularizer", "logger",
                                                            "device") for o in _options(g)),
                                      *(f"hydra/launcher={o}" for o in _options("hydra/launcher"))])
def test_every_option_of_every_other_group_instantiates(override, tmp_path):
    """Each option of the method, task, model, regularizer, logger, device and launcher groups, as a run composes
    it, builds what it names (the method's module, the task's DataModule and head, the model, the logger, the
    trainer's arguments, the launcher)."""
    import lightning as L
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from dyntok.core.model import DynTokModel
    from dyntok.data.tasks import get_task
    from dyntok.methods.build import build_method, build_model, instantiate
    from dyntok.methods.train import _trainer_kwargs
    from tests.conftest import TINY_BERT

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[override, "data_dir=/nowhere"], return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(tmp_path)
    HydraConfig.instance().set_config(cfg)
    group, option = override.split("=")
    task = get_task(cfg.task.name)
    if group == "model":
        kind = _HUB_TYPE.get(option)
        arch = {"model_type": kind, **_TINY_ARCH[kind]} if kind else None
        model = build_model(cfg.model, task, backbone_config=arch)  # minilm: the packaged weights; tiny: random
        assert model.encoder.backbone.config.model_type == (kind or "bert")
    else:
        model = DynTokModel.from_pretrained(None, task.problem, task.num_labels, config=TINY_BERT)
    module = build_method(cfg, model, task)
    assert module.method_name == cfg.method.name
    assert instantiate(cfg.data).task.name == task.name
    if cfg.logger.get("_target_"):
        logger = instantiate(cfg.logger)
        assert Path(logger.save_dir) == tmp_path
    kw = _trainer_kwargs(cfg)
    if kw["accelerator"] == "cpu":
        L.Trainer(**kw, logger=False, enable_checkpointing=False)
    else:  # no GPU here: the arguments are what the device option says
        assert kw["precision"] == "bf16-mixed" and kw["deterministic"] is False
    if group == "hydra/launcher":
        launcher = instantiate(cfg.hydra.launcher)
        assert type(launcher).__name__.lower().startswith(option)


def test_the_main_job_drops_tokens():
    cfg = _compose([])
    assert cfg.method.name == "gates" and cfg.task.name == "rotten_tomatoes" and cfg.speedup.enabled


def test_debug_fast_is_a_smoke_run_of_a_token_dropping_method(tmp_path):
    env = {**__import__("os").environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "dyntok.run", "debug=fast", "method=gates",
                           f"hydra.run.dir={tmp_path}"], capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "results.json").exists() and "measured_speedup" in proc.stdout
