"""`foresight eval`: accuracy of a model on a task's held-out split (and KL to a teacher), with a
run's own eval settings when given its config or one of its checkpoints.

    foresight eval models/arith/teacher --n 100            # the task's test split, 64 new tokens
    foresight eval runs/opd/checkpoints/step-000040        # the run's task and eval settings
    foresight eval MODEL --config runs/opd --split test    # a run's settings, one replaced
    foresight eval MODEL --json                            # one JSON line instead of a table

The main app registers `eval_command` with `app.command("eval")(eval_command)`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated

import typer

from foresight.config_sections import TaskConfig
from foresight.errors import UserError
from foresight.log import QuietFlag, VerboseFlag, say, stage

# A --task ending so is a user file (tasks/userdata.py), not an embedded task's name.
USER_FILE_SUFFIXES = (".jsonl", ".parquet", ".pq")


def eval_command(
    model: Annotated[Path, typer.Argument(help="Model folder (or a checkpoint of a run).")],
    config: Annotated[
        Path | None,
        typer.Option(
            help="YAML config or run folder whose task and eval settings to use (eval.n_prompts, "
            "eval.split, eval.batch_size, rollout.max_new_tokens); default: MODEL's own "
            "config.yaml when MODEL is a checkpoint of ours."
        ),
    ] = None,
    task: Annotated[
        str | None,
        typer.Option(
            help="Embedded task name, a JSONL/Parquet file or a Hub dataset id (org/name); "
            "default: the config's, else arith."
        ),
    ] = None,
    verifier: Annotated[str, typer.Option(help="Verifier of a JSONL task.")] = "exact",
    split: Annotated[
        str | None,
        typer.Option(
            help="val, test (hash split), or all; default: the config's eval.split, else all rows "
            "of a file, else test."
        ),
    ] = None,
    n: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Prompts scored; default: the config's eval.n_prompts, else every row or 500.",
        ),
    ] = None,
    teacher: Annotated[
        Path | None, typer.Option(help="Also report reverse KL to this teacher.")
    ] = None,
    max_new_tokens: Annotated[
        int | None,
        typer.Option(
            min=1, help="Completion cap; default: the config's rollout.max_new_tokens, else 64."
        ),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(
            min=1, help="Prompts per generation batch; default: eval.batch_size, else 256."
        ),
    ] = None,
    json_: Annotated[
        bool, typer.Option("--json", help="Print one JSON object instead of a table.")
    ] = False,
    quiet: QuietFlag = False,
    verbose: VerboseFlag = False,
) -> None:
    """Accuracy of a model on a held-out split (and KL to a teacher), as its run evaluates."""
    import json

    from foresight.lora import load_for_eval
    from foresight.models import check_pair, load_model, load_tokenizer
    from foresight.tasks import load_task
    from foresight.train.evaluate import evaluate

    settings = eval_settings(
        model,
        config,
        task,
        verifier,
        split=split,
        n=n,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
    )
    loaded = load_task(settings.task)
    rows = len(loaded.sample(settings.split, settings.n, 0))
    student, tokenizer = load_for_eval(model)  # a model folder or a LoRA checkpoint of a run
    teacher_model = None
    if teacher is not None:
        teacher_model = load_model(teacher, "teacher")
        check_pair(tokenizer, load_tokenizer(teacher, "teacher"), student, teacher_model)
    with stage("eval"):
        scores = evaluate(
            student,
            tokenizer,
            loaded,
            settings.split,
            settings.n,
            settings.max_new_tokens,
            settings.batch_size,
            teacher=teacher_model,
            sampled=settings.sampled,
            seed=settings.seed,
        )
    task_name = task or settings.task.name
    source = f", eval settings of {settings.source}" if settings.source else ""
    say(f"scored {rows} prompts of {task_name} (split {settings.split}{source})")
    result = {**scores, "eval/prompts": rows}
    if json_:
        typer.echo(json.dumps(result))
        return
    print_table(f"{model} on {task_name}, split {settings.split}", result)


def print_table(title: str, metrics: dict[str, float]) -> None:
    """Metrics as a two-column rich table on stdout."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    Console().print(table)


@dataclass(frozen=True)
class EvalSettings:
    """What `foresight eval` scores, and where the settings came from (None: the command's own)."""

    task: TaskConfig
    split: str
    n: int
    max_new_tokens: int
    batch_size: int
    sampled: bool = True
    seed: int = 0
    source: Path | None = None


def eval_settings(
    model: Path, config: Path | None, task: str | None, verifier: str, **flags: object
) -> EvalSettings:
    """The run's task and eval settings, as training evaluates (from --config, a YAML or a run
    folder, else MODEL's own config.yaml), each replaced by a flag given (`flags` not None);
    without a config, the task's test split (all rows of a file), 500 prompts, 64 new tokens."""
    from foresight.config import load_config

    source = config
    if source is not None and source.is_dir():
        source = source / "config.yaml"
        if not source.is_file():
            raise UserError(f"{config} holds no config.yaml; pass a run folder or a YAML config.")
    elif source is None and (model / "config.yaml").is_file():
        source = model / "config.yaml"  # a checkpoint of ours carries its run's config
    if source is None:
        task_cfg = task_config(task or "arith", verifier)
        whole_file = task_cfg.name == "jsonl"
        split, n = ("all", sys.maxsize) if whole_file else ("test", 500)
        settings = EvalSettings(task_cfg, split, n, 64, 256)
    else:
        cfg = load_config(source)
        settings = EvalSettings(
            task_config(task, verifier) if task else cfg.task,
            cfg.eval.split,
            cfg.eval.n_prompts,
            cfg.rollout.max_new_tokens,  # what training's evaluation generates
            cfg.eval.batch_size,
            cfg.eval.sampled,
            cfg.train.seed,
            source,
        )
    settings = replace(
        settings, **{key: value for key, value in flags.items() if value is not None}
    )
    if settings.split not in ("val", "test", "all") or (
        settings.split == "all" and settings.task.name != "jsonl"
    ):
        raise UserError(
            f"Unknown split '{settings.split}'; use val or test (or all, for a task file)."
        )
    return settings


def task_config(task: str, verifier: str) -> TaskConfig:
    """An embedded task's name, or a user's JSONL/Parquet file or Hub dataset id (`org/name`, its
    train split) read with `verifier`."""
    from foresight.tasks.userdata import is_hub_dataset  # the [train] extra's modules, on use

    if task.endswith(USER_FILE_SUFFIXES) or ("/" in task and is_hub_dataset(task)):
        return TaskConfig(name="jsonl", path=task, verifier=verifier)
    return TaskConfig(name=task)
