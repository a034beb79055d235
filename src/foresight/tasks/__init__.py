"""Tasks: embedded reasoning families (generator + strict verifier each) and user rows (a JSONL or
Parquet file, or a Hugging Face Hub dataset; userdata.py).

`load_task(cfg.task)` is the one entry point; `TASKS` maps each embedded family's name to its
factory `(difficulty | None) -> Task`.
"""

from __future__ import annotations

from collections.abc import Callable

from foresight.config_sections import TaskConfig
from foresight.errors import UserError
from foresight.tasks.arith import make_arith
from foresight.tasks.base import Example, Task
from foresight.tasks.modchain import make_modchain
from foresight.tasks.userdata import TASK_NAME as JSONL_NAME
from foresight.tasks.userdata import Row, load_user_task

__all__ = ["TASKS", "Example", "Task", "load_task"]

TASKS: dict[str, Callable[[int | None], Task]] = {"arith": make_arith, "modchain": make_modchain}


def load_task(cfg: TaskConfig, fit: Callable[[list[Row]], list[Row]] | None = None) -> Task:
    """The task `cfg` names: an embedded family at its difficulty, or user rows (whose prompts
    `fit` may check against a model's context; embedded prompts are short by design)."""
    if cfg.name == JSONL_NAME:
        if cfg.difficulty is not None:
            raise UserError("task.difficulty applies only to embedded tasks; remove it for jsonl.")
        return load_user_task(cfg, fit)
    if cfg.name not in TASKS:
        valid = ", ".join([*TASKS, JSONL_NAME])
        raise UserError(f"Unknown task '{cfg.name}'; set task.name to one of: {valid}.")
    if cfg.verifier != "exact":
        # Embedded families always check their own '#<answer>' format strictly.
        raise UserError(
            f"task.verifier applies only to jsonl tasks; remove it for the '{cfg.name}' task."
        )
    return TASKS[cfg.name](cfg.difficulty)
