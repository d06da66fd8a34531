"""Reading dyntok checkpoints: initialising one method from another's weights, and checking they fit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from dyntok.errors import CheckpointError, UntrustedCheckpointError


def run_checkpoint(run_dir: str | Path) -> Path:
    """The checkpoint that stands for a run folder's results.

    In order: ``checkpoints/final.ckpt`` (the weights and length configuration the run tested); the weights
    its ``results.json`` says were tested (``best_checkpoint``, or the final ``last*.ckpt``); its best; its
    last; else the same names anywhere below ``run_dir`` (a folder of runs with one checkpoint).

    Raises:
        CheckpointError: no checkpoint there.
    """
    import json

    run_dir = Path(run_dir)
    ckpts = run_dir / "checkpoints"  # read directly: a symlinked folder counts (rglob would skip it)
    if (ckpts / "final.ckpt").is_file():
        return ckpts / "final.ckpt"
    lasts = sorted(ckpts.glob("last*.ckpt"), key=lambda p: p.stat().st_mtime)  # last-v1: older Lightning naming
    results = run_dir / "results.json"
    if results.is_file():
        try:
            rec = json.loads(results.read_text())
        except ValueError:
            rec = {}
        best = rec.get("best_checkpoint")
        if rec.get("tested_weights") == "best" and best and Path(best).is_file():
            return Path(best)
        if rec.get("tested_weights") == "final" and lasts:
            return lasts[-1]
    cands = sorted(ckpts.glob("best-*.ckpt")) or lasts
    if not cands:
        cands = sorted(run_dir.rglob("final.ckpt")) or sorted(run_dir.rglob("best-*.ckpt")) or \
            sorted(run_dir.rglob("last.ckpt"))
    if not cands:
        raise CheckpointError(f"no checkpoint (final.ckpt, best-*.ckpt or last.ckpt) under {run_dir}")
    return cands[-1]


def model_weights(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The task model's weights (``model.*`` of a checkpoint's state dict), keys without the prefix."""
    return {k[len("model."):]: v for k, v in state["state_dict"].items() if k.startswith("model.")}


def load_file(path: str | Path, trust_checkpoint: bool = False) -> Any:
    """``torch.load`` of a checkpoint file onto the CPU: tensors and plain containers only, unless
    ``trust_checkpoint`` (unpickling an arbitrary object can run code, and checkpoints are shared between
    people). Every checkpoint dyntok writes loads this way.

    Raises:
        UntrustedCheckpointError: the file holds another type (named in the message, with the opt-in).
        CheckpointError: the file is missing, empty, not written by ``torch.save``, or cannot be read.
    """
    import pickle

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    with path.open("rb") as f:
        head = f.read(4)
    if not head:
        raise CheckpointError(f"{path}: the file is empty (0 bytes): a copy or a save that did not finish; use "
                              "another checkpoint of the run (checkpoints/final.ckpt, last.ckpt, best-*.ckpt)")
    if head != _ZIP_MAGIC and head[:1] != _PICKLE_PROTO:
        raise CheckpointError(f"{path}: not a PyTorch checkpoint (a file written by torch.save starts with a zip "
                              f"or pickle header; this one starts with {head!r})")
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust_checkpoint)
    except pickle.UnpicklingError as e:
        if "Weights only load failed" not in str(e):
            raise CheckpointError(f"cannot read checkpoint {path}: {str(e).splitlines()[0]}") from None
        refused = next((line.strip() for line in str(e).splitlines() if "GLOBAL" in line or "Unsupported" in line),
                       "an object")
        raise UntrustedCheckpointError(path, refused) from None
    except Exception as e:  # noqa: BLE001 - any other failure to read means the same thing to the user
        raise CheckpointError(f"cannot read checkpoint {path}: {str(e).splitlines()[0] if str(e) else e!r}") from None


_ZIP_MAGIC, _PICKLE_PROTO = b"PK\x03\x04", b"\x80"  # torch.save's formats (zip since torch 1.6; legacy pickle)


def read_checkpoint(path: str | Path, trust_checkpoint: bool = False) -> dict[str, Any]:
    """Load a Lightning checkpoint written by dyntok (a ``.ckpt`` file, or a run folder: :func:`run_checkpoint`)
    with :func:`load_file`.

    Raises:
        CheckpointError: the file is missing, unreadable, refused, or not a dyntok checkpoint.
    """
    path = Path(path)
    if path.is_dir():
        path = run_checkpoint(path)
    state = load_file(path, trust_checkpoint)
    if "state_dict" not in state or "dyntok" not in state:
        raise CheckpointError(f"{path} is not a dyntok checkpoint (no 'dyntok' metadata)")
    state["path"] = str(path)
    return state


def upgrade_config(config: dict[str, Any]) -> dict[str, Any]:
    """A run config stored by an earlier dyntok in today's form (a copy): gates runs before the method node
    carried its ``regularizer`` took it from the top-level group; ``method.search.fill=new`` (genes never
    scored in this search) is today's ``unseen``."""
    import copy

    config = copy.deepcopy(config)
    method = config.get("method") or {}
    if method.get("name") == "gates" and "regularizer" not in method and "regularizer" in config:
        method["regularizer"] = config["regularizer"]
    search = method.get("search") or {}
    if search.get("fill") == "new":
        search["fill"] = "unseen"
    return config


# checkpoints written before the method name was stored name the module's class instead
_LEGACY_METHODS = {"FullFineTuning": "full", "GatesModule": "gates", "LengthDropModule": "lengthdrop"}


def stored_run_config(state: dict[str, Any]) -> dict[str, Any]:
    """The run config a checkpoint stores, in today's form (:func:`upgrade_config`), once its method is known
    to be one of dyntok's own: the method it records by name (``full``, ``gates``, ``lengthdrop``,
    ``powerbert``) with that method's class as ``method._target_``. Nothing the file names is imported.

    Raises:
        CheckpointError: no run config stored, or a method (name or class) that is not dyntok's.
    """
    from dyntok.methods.schemas import METHOD_NODES

    meta, path = state["dyntok"], state.get("path", "checkpoint")
    cfg = meta.get("config")
    if not cfg:
        raise CheckpointError(f"{path}: no run config stored; "
                              "evaluate it with python -m dyntok.run train=false init_from=...")
    cfg = upgrade_config(cfg)
    name, node = method_of(meta), cfg.get("method") or {}
    if name not in METHOD_NODES:
        raise CheckpointError(f"{path}: refused: the checkpoint records method {name!r}; dyntok loads only its own "
                              f"methods ({', '.join(METHOD_NODES)})")
    target = METHOD_NODES[name]._target_
    if node.get("name", name) != name or node.get("_target_", target) != target:
        raise CheckpointError(f"{path}: refused: its method config names {node.get('name')!r} with class "
                              f"{node.get('_target_')!r}; a method={name} checkpoint builds {target} only")
    node["_target_"] = target
    return cfg


def method_of(meta: dict[str, Any]) -> str:
    """The ``method=`` name a checkpoint's ``dyntok`` metadata records (``full``, ``gates``, ...)."""
    name = str(meta.get("method"))
    return _LEGACY_METHODS.get(name, name)


def restore(module, state: dict[str, Any], path: str, strict: bool = True) -> None:
    """Put a checkpoint's weights and what its method chose (``on_load_checkpoint``: e.g. the length
    configuration) into ``module``: the one restore of ``dyntok.load``, ``init_from=`` from the same method and
    the best checkpoint before testing. ``strict=False`` tolerates weights the checkpoint has and the module
    does not (a frozen teacher kept out of the state dict).

    Raises:
        CheckpointError: weights of ``module`` missing from the checkpoint (naming ``path``).
    """
    missing, unexpected = module.load_state_dict(state["state_dict"], strict=False)
    if missing or (strict and unexpected):
        what = f"weights missing for {missing[:5]}" if missing else f"unexpected weights {unexpected[:5]}"
        raise CheckpointError(f"{path}: {what}")
    module.on_load_checkpoint(state)


def _check_model_and_task(state: dict[str, Any], module, model_name: str | None = None) -> dict[str, Any]:
    meta = state["dyntok"]
    saved_model = ((meta.get("config") or {}).get("model") or {}).get("name")
    if model_name and saved_model and saved_model != model_name:
        raise CheckpointError(f"{state['path']}: checkpoint is for model={saved_model}, this run has model={model_name}")
    if meta.get("num_layers") != module.model.num_layers or meta.get("hidden_size") != module.model.encoder.hidden_size:
        raise CheckpointError(
            f"{state['path']}: checkpoint model has {meta.get('num_layers')} layers x {meta.get('hidden_size')}, "
            f"this model {module.model.num_layers} x {module.model.encoder.hidden_size} (another model=?)"
        )
    if meta.get("num_labels") != module.model.num_labels or meta.get("problem") != module.task.problem.name:
        raise CheckpointError(
            f"{state['path']}: checkpoint is for task {meta.get('task')} ({meta.get('problem')}, "
            f"{meta.get('num_labels')} labels), this run is {module.task.name} "
            f"({module.task.problem}, {module.model.num_labels} labels)"
        )
    return meta


def check_resumable(path: str | Path, module, model_name: str | None = None, trust_checkpoint: bool = False) -> None:
    """Refuse to resume training (``ckpt_path=`` or ``last.ckpt``) from another method, model or task, or from
    a checkpoint without training state (weights only).

    Raises:
        CheckpointError: naming the checkpoint and what differs.
    """
    state = read_checkpoint(path, trust_checkpoint)
    meta = _check_model_and_task(state, module, model_name)
    if method_of(meta) != module.method_name:
        raise CheckpointError(
            f"{state['path']}: checkpoint of method={method_of(meta)} cannot resume "
            f"method={module.method_name} (start from it with init_from= instead)"
        )
    if "optimizer_states" not in state or "loops" not in state:
        raise CheckpointError(
            f"{state['path']}: holds weights only (no optimizer or loop state: a run's final.ckpt, or a "
            "weights-only save), so training cannot resume from it; rerun the run's own command to resume from "
            f"its checkpoints/last.ckpt, or start a new run from these weights with init_from={state['path']}")


def load_init_weights(module, path: str | Path, model_name: str | None = None, trust_checkpoint: bool = False
                      ) -> dict[str, Any]:
    """Copy the task model's weights from a dyntok checkpoint into ``module`` (``init_from=``).

    From the same method everything is loaded (gates too, the length configuration it chose, and the test-time
    configuration its run set, unless this run sets its own: the rule of ``dyntok.load``); from a
    ``method=full`` checkpoint only the ``model.*`` weights, which is how gates and LengthDrop start from
    a fine-tuned model. Any other pairing would silently drop what the checkpoint learned, so it is refused.

    Raises:
        CheckpointError: another model (name, depth or width), task head, method, or missing weights.
    """
    state = read_checkpoint(path, trust_checkpoint)
    meta = _check_model_and_task(state, module, model_name)
    source = method_of(meta)
    if source not in (module.method_name, "full"):
        raise CheckpointError(
            f"{state['path']}: a method={source} checkpoint cannot initialise method={module.method_name} (only "
            f"the same method or method=full can); evaluate it with method={source}"
        )
    if source == module.method_name:
        # Same method: everything it learned (gates too), and what it chose (length configuration).
        restore(module, state, state["path"], strict=False)
        if module.length_config is None:  # as dyntok.load: the configuration the source was tested with
            from dyntok.methods.build import test_length_config

            module.length_config = test_length_config(upgrade_config(meta.get("config") or {}),
                                                      module.model.num_layers)
    else:
        missing, _ = module.model.load_state_dict(model_weights(state), strict=False)
        if missing:
            raise CheckpointError(f"{state['path']}: missing weights {missing[:5]}")
    return meta
