"""Task registry: what each benchmark task is, how its labels look in the files, and how it is scored.

Metric convention (every :func:`dyntok.evaluation.metrics.task_metrics` collection follows it):

* classification: ``preds = logits.argmax(-1)``, an int tensor (B,); ``target`` long (B,) holding the
  label index, i.e. the position of the raw label in ``label_names``.
* regression: ``preds`` float (B,) (the single logit, squeezed); ``target`` float (B,).
* span (SQuAD): ``preds`` the (B, T, 2) start/end logits of B windows, ``target`` their (B,) window numbers
  in the split; the collection holds one :class:`dyntok.evaluation.squad.SquadMetric` that must be bound to the split's
  windows and questions (:func:`dyntok.evaluation.squad.bind_span_metrics`) and computes ``exact_match`` and ``f1``.

File formats (GLUE TSV columns, the movie-review CSV) live in :mod:`dyntok.data`; this module only
says what the task is.
"""

from __future__ import annotations

from dataclasses import dataclass

from dyntok.core.problems import PROBLEMS, Problem
from dyntok.errors import ConfigError


@dataclass(frozen=True)
class TaskSpec:
    """One benchmark task.

    Attributes:
        name: registry key, e.g. ``"sst2"``.
        problem: its :class:`~dyntok.core.problems.Problem` (classification, regression, or span: start and end
            of an answer in a context).
        num_labels: classifier outputs; 1 for regression; 2 (start, end) for span.
        label_names: raw label values as they appear in the files, in label-index order (index 0 first),
            which is the order the Hugging Face ``nyu-mll/glue`` dataset uses; empty for regression and span.
        text_keys: text fields of one example (the hub column names): one for single-sentence tasks,
            two for sentence-pair tasks, (question, context) for span.
        main_metric: metric used for checkpoint selection and reporting (a key of ``metric_names``).
        metric_names: metrics reported for this task.
        test_splits: split names of the final report, e.g. ``("test",)``.
        glue_dir: folder name in the GLUE layout (``"SST-2"``), or None for non-GLUE tasks.
        hub: ``(dataset, config)`` on the Hugging Face hub, or None.
        label_range: inclusive (low, high) of a regression target (STS-B: 0..5); None otherwise.
    """

    name: str
    problem: Problem
    num_labels: int
    label_names: tuple[str, ...]
    text_keys: tuple[str, ...]
    main_metric: str
    metric_names: tuple[str, ...]
    test_splits: tuple[str, ...] = ("test",)
    glue_dir: str | None = None
    hub: tuple[str, str] | None = None
    label_range: tuple[float, float] | None = None

    @property
    def is_pair(self) -> bool:
        """True for sentence-pair tasks (two text fields)."""
        return len(self.text_keys) == 2


def _glue(name: str, glue_dir: str, **kw) -> TaskSpec:
    kw.setdefault("label_names", ("0", "1"))
    kw.setdefault("num_labels", len(kw["label_names"]))
    kw.setdefault("metric_names", ("accuracy",))
    kw.setdefault("main_metric", kw["metric_names"][0])
    kw.setdefault("problem", PROBLEMS["classification"])
    return TaskSpec(name=name, glue_dir=glue_dir, hub=("nyu-mll/glue", name), **kw)


_PAIR = ("sentence1", "sentence2")

TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in (
        _glue("cola", "CoLA", text_keys=("sentence",), metric_names=("mcc",)),
        _glue("sst2", "SST-2", text_keys=("sentence",)),
        _glue("mrpc", "MRPC", text_keys=_PAIR, metric_names=("accuracy", "f1"), main_metric="f1"),
        _glue(
            "qqp", "QQP", text_keys=("question1", "question2"), metric_names=("accuracy", "f1"),
            main_metric="f1",
        ),
        _glue(
            "stsb", "STS-B", text_keys=_PAIR, problem=PROBLEMS["regression"], num_labels=1, label_names=(),
            metric_names=("pearson", "spearman"), label_range=(0.0, 5.0),
        ),
        _glue(
            "mnli", "MNLI", text_keys=("premise", "hypothesis"),
            label_names=("entailment", "neutral", "contradiction"),
            test_splits=("test_matched", "test_mismatched"),
        ),
        _glue("qnli", "QNLI", text_keys=("question", "sentence"), label_names=("entailment", "not_entailment")),
        _glue("rte", "RTE", text_keys=_PAIR, label_names=("entailment", "not_entailment")),
        # WNLI files say 1 = entailment, and the hub's label 1 is "entailment" too
        _glue("wnli", "WNLI", text_keys=_PAIR),
        TaskSpec(
            name="rotten_tomatoes", problem=PROBLEMS["classification"], num_labels=2, label_names=("0", "1"),
            text_keys=("text",), main_metric="accuracy", metric_names=("accuracy",),
        ),
        TaskSpec(
            name="imdb", problem=PROBLEMS["classification"], num_labels=2, label_names=("0", "1"),
            text_keys=("text",), main_metric="accuracy", metric_names=("accuracy",),
        ),
        # SQuAD v1.1: exact match and F1 of the official script, as fractions (dyntok.evaluation.squad)
        TaskSpec(
            name="squad", problem=PROBLEMS["span"], num_labels=2, label_names=(), text_keys=("question", "context"),
            main_metric="f1", metric_names=("exact_match", "f1"), hub=("rajpurkar/squad", "plain_text"),
        ),
    )
}


def get_task(name: str) -> TaskSpec:
    """The registered task called ``name``.

    Raises:
        ConfigError: unknown name (the message lists the choices).
    """
    try:
        return TASKS[name]
    except KeyError:
        raise ConfigError(f"unknown task {name!r}; choose one of: {', '.join(sorted(TASKS))}") from None
