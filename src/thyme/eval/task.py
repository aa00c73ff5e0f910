"""What an evaluation task is: a small declarative spec with a version, and the registry of them.

A task names how to read its data (`load`), how to turn a sample into the question the model sees
(`prompt`: the benchmark wrapper), how to read a prediction out of the model's answer (`extract`) and how
to score it (`score`). Everything that changes a number changes `version`, and the version is stored with
every result (the protocol card), so numbers from different harness versions are never mixed silently.

    from thyme.eval import get_task, EvalSample
    task = get_task("vstar")
    for sample in task.load(Path("VStarBench.tsv"), cache_dir):
        question = task.prompt(sample)                    # what Agent.run receives
        prediction = task.extract(trajectory.answer, sample)
        correct = task.score(prediction, sample)          # 1.0 / 0.0 (or partial credit)

Tasks are registered by name (`register_task`); the built-in ones live in `thyme.eval.tasks` and
`thyme.eval.tasks_vqa`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class EvalSample:
    """One benchmark item, with its image materialised as a file.

    id:       unique within the task and stable across runs (the resume key).
    question: the raw question, before the benchmark wrapper.
    answer:   the gold answer (an option letter for MCQ, "yes"/"no", a number, a short text).
    image:    the image file (loaders decode base64 images into their cache directory), or None.
    choices:  MCQ options {letter: text}, or None.
    category: the breakdown the report groups by (a benchmark's sub-task, a toy-world difficulty...).
    hint:     an MCQ hint, when the benchmark has one.
    meta:     anything else a metric or the report needs (answer type, tolerance, source row...).
    error:    why the sample's input cannot be used (its image does not decode fully), or None; the runner
              scores such a sample 0 as an input error and never sends it to the model.
    """

    id: str
    question: str
    answer: str
    image: Path | None = None
    choices: Mapping[str, str] | None = None
    category: str = ""
    hint: str | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)
    error: str | None = None


Loader = Callable[[Path | None, Path], Iterator[EvalSample]]


@dataclass(frozen=True)
class TaskSpec:
    """One benchmark, declaratively.

    load(data, cache_dir):   the samples of the data file/dir the user has (None: the task's own data, e.g.
                             the toy world generates it); images are written under cache_dir.
    prompt(sample):          the question text the agent receives (the wrapper).
    extract(answer, sample): the prediction from the trajectory's final answer (None when there is none).
    score(prediction, sample): credit in [0, 1].
    data_hint:               what to pass as --data (file names users have), for error messages and --help.
    judge:                   the metric can use an LLM judge when one is configured.
    aggregate(records):      the benchmark's headline metrics from the scored result records (POPE's F1,
                             HallusionBench's aAcc/fAcc/qAcc), when they are not the mean score.
    scoring:                 the scoring choices in effect ({"mcq_matching": "vlmevalkit"}), recorded in the
                             protocol card; the defaults are VLMEvalKit's behaviour.
    rescore(**choices):      the same task with other scoring choices (`configure_task` calls it).
    """

    name: str
    version: str
    description: str
    load: Loader
    prompt: Callable[[EvalSample], str]
    extract: Callable[[str | None, EvalSample], str | None]
    score: Callable[[str | None, EvalSample], float]
    data_hint: str = ""
    judge: bool = False
    aggregate: Callable[[Sequence[Mapping[str, Any]]], dict[str, float]] | None = None
    scoring: Mapping[str, str] = field(default_factory=dict)
    rescore: Callable[..., TaskSpec] | None = None

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("-", "_").replace("_", "a").isalnum():
            raise ValueError(f"task name {self.name!r} must be letters, digits, '-' or '_'")
        if not self.version:
            raise ValueError(f"task {self.name!r} needs a version (bump it whenever a number would change)")
        if self.scoring and self.rescore is None:
            raise ValueError(f"task {self.name!r} has scoring choices but no rescore to apply other ones")


_TASKS: dict[str, TaskSpec] = {}


def register_task(spec: TaskSpec, *, replace: bool = False) -> TaskSpec:
    """Add a task to the registry (a name is taken once unless `replace`)."""
    if spec.name in _TASKS and not replace:
        raise ValueError(f"a task named {spec.name!r} is already registered; pass replace=True to override")
    _TASKS[spec.name] = spec
    return spec


def configure_task(spec: TaskSpec, **choices: str) -> TaskSpec:
    """`spec` with scoring choices changed (`configure_task(task, mcq_matching="lenient")`); a choice the
    task does not have is an error naming the ones it has."""
    unknown = sorted(set(choices) - set(spec.scoring))
    if unknown:
        has = ", ".join(sorted(spec.scoring)) or "none"
        raise ValueError(f"task {spec.name} has no scoring choice {', '.join(unknown)} (its choices: {has})")
    if all(spec.scoring[k] == v for k, v in choices.items()):
        return spec
    assert spec.rescore is not None  # __post_init__: a task with scoring choices has rescore
    return spec.rescore(**{**spec.scoring, **choices})


def get_task(name: str) -> TaskSpec:
    """The registered task called `name`; the error lists the known ones."""
    _load_builtin()
    try:
        return _TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(sorted(_TASKS))}") from None


def task_names() -> list[str]:
    _load_builtin()
    return sorted(_TASKS)


def _load_builtin() -> None:
    import importlib

    for module in ("thyme.eval.tasks", "thyme.eval.tasks_vqa"):  # register the built-in tasks on first import
        importlib.import_module(module)
