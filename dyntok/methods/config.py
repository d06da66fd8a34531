"""Typed options of the methods: one dataclass per group of options, each field with its unit, default and
source, and each range check once (``__post_init__``). The Hydra config nodes built from them
(:mod:`dyntok.methods.schemas`) make a misspelt key or a value of the wrong type fail at composition, and a
value out of range fail when the method is built.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

from dyntok.core.gates import RankGates
from dyntok.data.config import DataConfig
from dyntok.errors import ConfigError
from dyntok.options import build_options, check_choice


@dataclass
class TrainingConfig:
    """What every method trains with (:class:`dyntok.methods.base.TaskModule`)."""

    lr: float = 2e-5
    """Peak learning rate of the encoder and head (AdamW, linear warm-up then linear decay); configs use the
    model's recommended ``model.lr``."""
    weight_decay: float = 0.01
    """AdamW weight decay, not on biases and LayerNorm weights."""
    warmup_ratio: float = 0.1
    """Share of the training steps spent warming the learning rate up, in [0, 1)."""
    length_config: Any = None
    """The length configuration the trained model is tested and served with (a ratio, a per-layer list,
    ``{unit, values}``), or null: the method's own rule."""

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.weight_decay < 0 or not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"method.lr must be > 0, method.weight_decay >= 0 and method.warmup_ratio in [0, 1), "
                              f"got {self.lr}, {self.weight_decay}, {self.warmup_ratio}")


@dataclass
class SearchConfig:
    """The LengthDrop evolutionary search (Kim & Cho 2021, Sec. 3.3; :mod:`dyntok.methods.search`)."""

    enabled: bool = True
    """Search after training; false tests ``method.length_config`` or the loaded run's choice."""
    split: str = "validation"
    """Split the genes are scored on: carved from training data (the paper scores on dev)."""
    max_examples: int | None = 1000
    """Examples of the split scored per gene (questions for span tasks); null: all."""
    min_length: int = 0
    """Score only examples of at least this many tokens (SST-2: its sentences, not its phrases)."""
    rescore_examples: int = 0
    """> 0: genes within ``rescore_margin`` of the frontier are scored again on this many further examples
    of the split, and the frontier and choice come from those scores (not in the paper)."""
    rescore_margin: float = 0.01
    """Metric points below the frontier a gene may be to be re-scored."""
    population: int = 20
    """Initial genes besides the smallest and the full one (paper: 20)."""
    iterations: int = 30
    """Evolution iterations (paper's code: 100; the README's recipe: 30)."""
    mutations: int = 30
    """New in-bounds mutants per iteration (paper: 30)."""
    crossovers: int = 30
    """New in-bounds crossovers per iteration (paper: 30)."""
    mutation_prob: float = 0.5
    """Probability that a mutation resamples each layer (paper: 0.5)."""
    seed: int = 0
    """The search's own random seed."""
    store: str | None = None
    """JSON-lines file of evaluated genes (resume; shared by searches of one model); null: the run folder's."""
    budget: float = 0.4
    """The budget the tested configuration must meet, in ``budget_unit``."""
    budget_unit: str = "ratio"
    """``ratio`` (of the full model's MACs), ``gmacs`` (per example) or ``ms`` (measured per example)."""
    budget_baseline: str = "real"
    """MACs at each input's real length (``real``, dyntok's) or of the configuration on an input padded to
    ``max_length`` (``padded``, the papers' count); results report both."""
    init: str = "retention"
    """Initial population: evenly spaced in mean retention for this model's layers and length (``retention``,
    the authors' rule), their code as written with its retention fixed at 12 layers x 384 tokens
    (``authors_code``), or evenly spaced in constant ratio (``ratio``, dyntok's earlier one)."""
    fill: str = "population"
    """Offspring: draw until that many in-bounds genes not in the current population were accepted
    (``population``, the authors'; one scored before is replayed free), genes never scored in this search
    (``unseen``, dyntok's earlier rule), or make that many draws (``attempts``)."""
    parents: str = "population"
    """Parents: the population (frontier plus the most expensive gene) as it grows during an iteration
    (``population``, the authors') or the Pareto frontier fixed at the iteration's start (``frontier``)."""
    precision: str = "fp32"
    """Numeric precision of the scoring passes: ``fp32``, or ``bf16`` (``torch.autocast``; several times faster
    on CPUs with AMX / AVX-512 BF16 and on GPUs; not in the paper). Latency is always measured in fp32."""
    racing: bool = False
    """Score each new gene in stages and stop once it cannot reach the frontier (classification accuracy
    only; not in the paper). False scores every gene on every example, as the authors."""
    racing_start: float = 0.25
    """Share of the search examples racing scores before its first look (then a look after every batch)."""
    racing_z: float = 3.0
    """Racing stops a gene when accuracy + racing_z binomial standard errors is below the frontier."""
    cache_mb: float = 1024
    """Bound (MB) on the layers the search keeps to share between genes, for the whole process: the search,
    the re-scoring and the curves each release their cache before the next fills (0: none; the scores are the
    same)."""
    eval_batch_size: int = 128
    """Batch size of the scoring passes."""
    curves: bool = True
    """Also score the frontier and the constant-ratio curves on the report split (the paper's figure)."""

    def __post_init__(self) -> None:
        check_choice("method.search.budget_unit", self.budget_unit, ("ratio", "gmacs", "ms"))
        check_choice("method.search.budget_baseline", self.budget_baseline, ("real", "padded"))
        check_choice("method.search.init", self.init, ("retention", "ratio"))
        check_choice("method.search.fill", self.fill, ("population", "unseen", "attempts"))
        check_choice("method.search.parents", self.parents, ("population", "frontier"))
        check_choice("method.search.precision", self.precision, ("fp32", "bf16"))
        if not 0 < self.racing_start < 1 or self.racing_z <= 0:
            raise ConfigError(f"method.search.racing_start must be in (0, 1) and method.search.racing_z > 0, got "
                              f"{self.racing_start} and {self.racing_z}")
        if self.budget <= 0 or (self.budget_unit == "ratio" and self.budget > 1):
            raise ConfigError(f"method.search.budget={self.budget} out of range for budget_unit={self.budget_unit} "
                              "(ratio: (0, 1]; gmacs and ms: > 0)")
        if self.rescore_examples < 0 or (self.rescore_examples and self.max_examples is None):
            raise ConfigError(f"method.search.rescore_examples={self.rescore_examples}: must be >= 0, and > 0 needs "
                              "method.search.max_examples (the re-scoring examples follow those)")
        if self.rescore_margin < 0 or self.cache_mb < 0:
            raise ConfigError(f"method.search.rescore_margin and method.search.cache_mb must be >= 0, got "
                              f"{self.rescore_margin} and {self.cache_mb}")


@dataclass
class LengthDropConfig:
    """LengthDrop training (Kim & Cho 2021, Sec. 3.1-3.2; :class:`dyntok.methods.lengthdrop.LengthDropModule`)."""

    length_drop_prob: float = 0.35
    """p, the LengthDrop bound: l_j ~ UniformInt[ceil((1-p) l_{j-1}), l_{j-1}] (paper: 0.2, which floors a
    6-layer model at 0.53x MACs; 0.35 floors it near 0.33x)."""
    length_unit: str = "ratio"
    """``ratio`` (l_0 the batch's longest input, each example keeps its share; dyntok) or ``tokens`` (l_0 =
    ``max_length``, an input of n tokens keeps min(l_j, n); the authors')."""
    max_length: int = DataConfig.max_length
    """The padded input length (``task.max_length``): l_0 of ``tokens`` and the genes' reference."""
    layer_drop: float = 0.2
    """Probability of skipping each layer in the full model and the random sub-models (paper: 0.2)."""
    layer_drop_smallest: bool = True
    """The smallest sub-model takes LayerDrop too, its chain stepping only at layers that run (the authors'
    ``sample_layer_configuration`` draws the layers first for every sub-model); false: it runs every layer."""
    num_sandwich: int = 2
    """Random sub-models per step besides the full and the smallest (paper: 2)."""
    kd_direction: str = "forward"
    """In-place distillation KL(teacher || student) (``forward``) or the original code's KL(student ||
    teacher) (``reverse``)."""
    finetune_epochs: int = 0
    """First epochs of plain fine-tuning (both stages from one command); 0 from a fine-tuned ``init_from``."""
    search: SearchConfig = field(default_factory=SearchConfig)
    """The search after training."""

    def __post_init__(self) -> None:
        if isinstance(self.search, dict):
            self.search = build_options(SearchConfig, self.search, "method.search")
        if not 0.0 < self.length_drop_prob < 1.0:
            raise ConfigError(f"method.length_drop_prob must be in (0, 1), got {self.length_drop_prob}")
        check_choice("method.length_unit", self.length_unit, ("ratio", "tokens"))
        if self.max_length < 2:
            raise ConfigError(f"method.max_length must be >= 2, got {self.max_length}")
        if not 0.0 <= self.layer_drop < 1.0:
            raise ConfigError(f"method.layer_drop must be in [0, 1), got {self.layer_drop}")
        if self.num_sandwich < 0 or self.finetune_epochs < 0:
            raise ConfigError(f"method.num_sandwich and method.finetune_epochs must be >= 0, got {self.num_sandwich} "
                              f"and {self.finetune_epochs}")
        check_choice("method.kd_direction", self.kd_direction, ("forward", "reverse"))


# the gates' own options default to RankGates' arguments (one place)
_RANK_GATES = {name: p.default for name, p in inspect.signature(RankGates).parameters.items()}


@dataclass
class GatesConfig:
    """Trainable rank gates with the bi-modal regularizer (Jeong & Kwak 2021, as reconstructed in :mod:`dyntok.core.gates`;
    :class:`dyntok.methods.gates.GatesModule`, :class:`dyntok.core.gates.RankGates`)."""

    regularizer: Any = field(default_factory=lambda: {"lambda": 2.5, "mu": 300.0})
    """``{lambda, mu}``: loss = task + lambda R_sparse + mu R_bimodal (the ``regularizer`` group)."""
    gate_lr: float = 5e-3
    """Learning rate of the gates (Adam, no weight decay, constant unless ``gate_lr_schedule``)."""
    gate_lr_schedule: str = "constant"
    """``constant``, or ``linear``: warm-up then linear decay like the encoder (PoWER-BERT's retention
    parameters)."""
    max_length: int = DataConfig.max_length
    """T_max, ranks gated (``task.max_length``)."""
    parametrization: str = _RANK_GATES["parametrization"]
    """Gates as raw values clipped to [0, 1] (``clip``, PoWER-BERT) or ``sigmoid`` of a logit."""
    gate_init: float = _RANK_GATES["init"]
    """Initial gate value in (0, 1]."""
    straight_through: bool = _RANK_GATES["straight_through"]
    """Training forward uses the hard gates (g > threshold) with the soft gradient."""
    threshold: float = _RANK_GATES["threshold"]
    """A gate above it keeps its rank at inference."""
    skip_first: int = _RANK_GATES["skip_first"]
    """The first layers carry no gates (keep every token)."""
    min_keep: float = _RANK_GATES["min_keep"]
    """Every gated layer keeps at least this share of each input's tokens (0: none; not in the paper)."""
    layer_weighting: str = "linear"
    """w_j of R_sparse: ``linear`` (j, PoWER-BERT), ``uniform`` or ``reverse`` (L - j + 1)."""
    sparsity: str = "gates"
    """L1 on the gate vectors (``gates``) or on the masks the tokens see (``tokens``)."""
    rank_scale: str = _RANK_GATES["rank_scale"]
    """A gate per rank (``absolute``, T_max of them) or per share of the input's tokens (``relative``)."""
    rank_bins: int = _RANK_GATES["bins"]
    """Gates per layer with ``rank_scale=relative``."""
    freeze_gates_steps: int = 0
    """Training steps before the gates start to move."""
    mu_ramp: Any = field(default_factory=lambda: [0.5, 0.9])
    """[start, end] shares of training: mu is 0 before start, linear up to end, then constant ([0, 0]: constant)."""
    distill: float = 0.0
    """Weight in [0, 1] of distillation from the frozen ``init_from`` model (not in the paper)."""
    rank_distill: float = 0.0
    """Weight (>= 0) of ranking distillation from the frozen ``init_from`` model (ToP, Li et al. 2023): every
    gated layer's significance order is pulled towards the teacher's last-layer order
    (:func:`dyntok.methods.base.ranking_distillation_loss`); 0: off, as the paper."""
    target_macs: float | None = None
    """A MACs ratio in (0, 1] to train to instead of a fixed lambda: lambda becomes a Lagrange multiplier of
    (MACs ratio - target), updated by dual ascent (ToP, Li et al. 2023; CoFi, Xia et al. 2022, Eq. 6), so the
    regularizer keeps its shape (``sparsity``, ``layer_weighting``) and its strength follows the target.
    Needs ``regularizer.lambda=0`` and ``straight_through`` (training then sees the hard ratio). At
    ``target_freeze`` the gates are cut to the target on the training inputs' lengths and frozen
    (:meth:`dyntok.methods.target.MacsTarget.calibrate`): inference meets the target, not only the
    training batches' expectation, and the encoder trains on after the cut. A bi-modal term
    (``regularizer.mu``) still applies; it can lock gates before the target is reached, so
    ``experiment=sst2_gates_target`` sets it to 0 and lets the cut set the gates to 0 or 1."""
    target_warmup: float = 0.3
    """Share of the first stage (``trainer.max_epochs``) over which the target falls linearly from 1 to
    ``target_macs`` (CoFi's Lagrangian warm-up): the multiplier does not wind up while the gates travel to the
    threshold."""
    target_min_length: int = 0
    """The cut meets the target on the training inputs of at least this many tokens (SST-2: its sentences,
    not its phrases, as ``search.min_length``)."""
    target_freeze: float = 0.7
    """Share of the first stage after which a target run's gates are cut to the target and frozen; encoder
    and head train on with that configuration for the rest (and any ``retrain_epochs``)."""
    target_baseline: str = "real"
    """The target's baseline: the full model at each input's ``real`` length, or ``padded`` to ``max_length``."""
    multiplier_lr: float = 0.05
    """Dual ascent step: each training step the multiplier moves by this times the batch's (MACs ratio -
    target), weighted by its baseline MACs over the mean batch's (negative below the target: the gates are
    pushed open again)."""
    retrain_epochs: int = 0
    """Epochs after ``trainer.max_epochs`` (the first stage) that fine-tune encoder and head with the gates
    frozen at their hard values (0: one stage, as the paper)."""

    def __post_init__(self) -> None:
        lam, mu = float(self.regularizer.get("lambda", 0.0)), float(self.regularizer.get("mu", 0.0))
        if lam < 0 or mu < 0:
            raise ConfigError(f"regularizer.lambda and regularizer.mu must be >= 0, got {lam} and {mu}")
        ramp = list(self.mu_ramp)
        if len(ramp) != 2 or not 0.0 <= ramp[0] <= ramp[1] <= 1.0:
            raise ConfigError(f"method.mu_ramp must be [start, end] with 0 <= start <= end <= 1, got {self.mu_ramp}")
        check_choice("method.sparsity", self.sparsity, ("gates", "tokens"))
        check_choice("method.layer_weighting", self.layer_weighting, ("linear", "uniform", "reverse"))
        check_choice("method.gate_lr_schedule", self.gate_lr_schedule, ("constant", "linear"))
        if not 0.0 <= self.distill <= 1.0:
            raise ConfigError(f"method.distill must be in [0, 1], got {self.distill}")
        if self.rank_distill < 0:
            raise ConfigError(f"method.rank_distill must be >= 0, got {self.rank_distill}")
        check_choice("method.target_baseline", self.target_baseline, ("real", "padded"))
        if not 0.0 <= self.target_warmup <= 1.0:
            raise ConfigError(f"method.target_warmup must be a share of training in [0, 1], got {self.target_warmup}")
        if self.target_min_length < 0:
            raise ConfigError(f"method.target_min_length must be a token count >= 0, got {self.target_min_length}")
        if not 0.0 < self.target_freeze <= 1.0:
            raise ConfigError(f"method.target_freeze must be a share of training in (0, 1], got {self.target_freeze}")
        if self.retrain_epochs < 0:
            raise ConfigError(f"method.retrain_epochs must be >= 0, got {self.retrain_epochs}")
        if self.target_macs is not None:
            if not 0.0 < self.target_macs <= 1.0:
                raise ConfigError(f"method.target_macs must be a MACs ratio in (0, 1], got {self.target_macs}")
            if lam > 0:
                raise ConfigError(f"method.target_macs={self.target_macs} and regularizer.lambda={lam} are both set: "
                                  "the target's multiplier replaces lambda (give regularizer.lambda=0)")
            if not self.straight_through:
                raise ConfigError("method.target_macs needs method.straight_through=true: the controller must see "
                                  "the hard ratio inference will run")
            if self.multiplier_lr <= 0:
                raise ConfigError(f"method.multiplier_lr must be > 0, got {self.multiplier_lr}")


@dataclass
class SpeedupConfig:
    """The speed-up a run measures after testing (:func:`dyntok.methods.train.measure_speedup`): the tested
    model against the same weights running every token, in one process, on the first report split."""

    enabled: bool = True
    """Measure it (it prints beside the metrics and MACs ratios and goes into ``results.json``)."""
    max_examples: int | None = 512
    """Examples timed: a seeded subset of the report split (null: all), in length-sorted batches of
    ``data.eval_batch_size``."""
    repeats: int = 3
    """Timed passes per model, taking turns; the fastest of each counts."""

    def __post_init__(self) -> None:
        if self.repeats < 1 or (self.max_examples is not None and self.max_examples < 1):
            raise ConfigError(f"speedup.repeats and speedup.max_examples must be >= 1, got {self.repeats} and "
                              f"{self.max_examples}")


@dataclass
class CheckpointConfig:
    """What a run writes under ``<run>/checkpoints`` (``checkpoint.*``; :mod:`dyntok.methods.callbacks`)."""

    save_top_k: int = 1
    """Best checkpoints kept by the validation metric (``best-<step>.ckpt``; -1: all, 0: none)."""
    save_last: bool = True
    """Write ``last.ckpt``, the point a rerun of the same command resumes from."""
    every_n_train_steps: int | None = 200
    """Also write ``last.ckpt`` every this many optimizer steps inside an epoch (null: only after each
    validation and at each epoch's end); a killed run loses at most that many steps."""
    keep_all: bool = False
    """After the run has tested, keep ``best-*.ckpt`` and ``last.ckpt`` (optimizer state included) beside
    ``final.ckpt``; false keeps ``final.ckpt`` only: what ``dyntok.load``, compare, export, ``init_from`` and a
    rerun of the same command (which then tests it again) need."""

    def __post_init__(self) -> None:
        if self.save_top_k < -1:
            raise ConfigError(f"checkpoint.save_top_k must be >= -1, got {self.save_top_k}")
        if self.every_n_train_steps is not None and self.every_n_train_steps < 1:
            raise ConfigError(f"checkpoint.every_n_train_steps must be >= 1 or null, got {self.every_n_train_steps}")


@dataclass
class PowerBertConfig:
    """PoWER-BERT's configuration search and re-training (Goyal et al. 2020;
    :class:`dyntok.methods.powerbert.PowerBertModule`). Defaults: its SST-2 settings (IBM/PoWER-BERT
    ``main.py``, ``training.py``, README)."""

    regularizer_lambda: float = 2e-4
    """lambda of the regularizer lambda * sum_j j * sum_k r_j[k] (unnormalised; SST-2: 2e-4)."""
    retention_lr: float = 5e-4
    """Learning rate of the retention values (``LR_SOFT_EXTRACT``; SST-2: 5e-4), warm-up then linear decay
    like the encoder's (their ``AdamWarmup``)."""
    max_length: int = DataConfig.max_length
    """N, retention values per layer and the padded length the configuration is counted at
    (``task.max_length``; their SST-2 pads to 64)."""
    retrain_epochs: int = 1
    """Epochs of the re-training stage with hard extraction, after ``trainer.max_epochs`` of the
    configuration search."""

    def __post_init__(self) -> None:
        if self.regularizer_lambda < 0 or self.retention_lr <= 0 or self.max_length < 1 or self.retrain_epochs < 0:
            raise ConfigError(
                "method.regularizer_lambda must be >= 0, method.retention_lr > 0, method.max_length >= 1 and "
                f"method.retrain_epochs >= 0, got {self.regularizer_lambda}, {self.retention_lr}, "
                f"{self.max_length}, {self.retrain_epochs}")
