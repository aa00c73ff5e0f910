"""Evaluation: declarative tasks, loaders for the files users have, scoring that matches VLMEvalKit, a
resumable runner, and reports with the protocol stored beside every number.

    thyme eval --task vstar --model Kwai-Keye/Thyme-RL --data VStarBench.tsv --out runs/vstar
"""

from thyme.eval.task import EvalSample, TaskSpec, configure_task, get_task, register_task, task_names


def __getattr__(name: str):
    """`run_eval` and `write_report` import the agent stack; load them on first use."""
    if name == "run_eval":
        from thyme.eval.runner import run_eval

        return run_eval
    if name == "write_report":
        from thyme.eval.report import write_report

        return write_report
    raise AttributeError(name)


__all__ = [
    "EvalSample",
    "TaskSpec",
    "configure_task",
    "get_task",
    "register_task",
    "run_eval",
    "task_names",
    "write_report",
]
