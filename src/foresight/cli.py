"""The `foresight` command line: each command loads a config or arguments and calls one library function.

Run: foresight --help
     foresight train configs/tiny.yaml --set optim.lr=1e-3 --set train.steps=20
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated

import typer

from foresight.analyze_command import analyze_command
from foresight.config import TaskConfig
from foresight.errors import UserError
from foresight.log import QuietFlag, VerboseFlag, say, set_verbosity, stage

app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
    help="On-policy distillation, foresight analysis and EffOPD.",
)
app.command("analyze")(analyze_command)
# A --task ending so is a user file (tasks/userdata.py), not an embedded task's name.
USER_FILE_SUFFIXES = (".jsonl", ".parquet", ".pq")

SetOption = Annotated[
    list[str], typer.Option("--set", help="Override a config value: section.key=value.")
]


def library_verbosity() -> None:
    """Libraries' own logs follow ours: by default transformers' warnings and per-file progress
    bars are off (our labelled progress says enough); with -v, transformers' and every other
    library's info logs are on."""
    from transformers.utils import logging as hf_logging

    if logging.getLogger("foresight").level <= logging.DEBUG:  # -v
        hf_logging.set_verbosity_info()
        hf_logging.enable_progress_bar()
        logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    else:
        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()


def _show_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"foresight {version('foresight')}")
        raise typer.Exit()


@app.callback()
def options(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_show_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
    quiet: QuietFlag = False,
    verbose: VerboseFlag = False,
) -> None:
    # -q/-v given before the command were applied by their callbacks; after it, by the command's.
    library_verbosity()


@app.command()
def train(
    config: Annotated[Path, typer.Argument(help="YAML config (see configs/).")],
    set_: SetOption = [],
    resume: Annotated[bool, typer.Option(help="Continue the run in train.out_dir.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Delete train.out_dir first.")] = False,
    allow_vocab_mismatch: Annotated[
        bool,
        typer.Option(help="Allow a teacher with another vocabulary, read through model.vocab_map."),
    ] = False,
    quiet: QuietFlag = False,
    verbose: VerboseFlag = False,
) -> None:
    """Train (OPD, RL (GRPO) or SFT) from a YAML config."""
    from foresight.config import load_config
    from foresight.train.loop import train as run_training

    if allow_vocab_mismatch:  # stored in the config, so the run folder records it
        set_ = [*set_, "model.allow_vocab_mismatch=true"]
    with stage("train"):
        run_dir = run_training(load_config(config, set_), resume=resume, overwrite=overwrite)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks for the run
        typer.echo(f"run folder: {run_dir}")


@app.command()
def demo(
    config: Annotated[
        Path | None,
        typer.Option(help="Demo config (default configs/demo.yaml, or configs/real.yaml)."),
    ] = None,
    set_: SetOption = [],
    out: Annotated[
        Path | None,
        typer.Option(
            help="Run folder, default runs/demo or runs/demo-real (a free name is picked)."
        ),
    ] = None,
    effopd: Annotated[bool, typer.Option(help="Also run EffOPD beside plain OPD.")] = True,
    real: Annotated[
        bool,
        typer.Option(
            "--real",
            help="Self-distill a told behavior into a LoRA student of SmolLM2-135M-Instruct "
            "(needs `make models/smollm2-135m-instruct`).",
        ),
    ] = False,
    quiet: QuietFlag = False,
    verbose: VerboseFlag = False,
) -> None:
    """Distill the committed base toward the committed teacher and print the accuracies."""
    if real:
        from foresight.demo_real import run_real_demo

        with stage("demo --real"):
            run_real_demo(config or Path("configs/real.yaml"), set_, out or Path("runs/demo-real"))
        return
    from foresight.demo import run_demo

    with stage("demo"):
        run_demo(config or Path("configs/demo.yaml"), set_, out or Path("runs/demo"), effopd)


@app.command()
def prepare(
    task: Annotated[
        str, typer.Option(help="Embedded task name, 'all', or a JSONL/Parquet file.")
    ] = "all",
    out: Annotated[Path, typer.Option(help="Folder for <task>/{base,teacher}.")] = Path("models"),
    verifier: Annotated[str, typer.Option(help="Verifier of a JSONL task.")] = "exact",
    size: Annotated[str, typer.Option(help="Model size: tiny or small.")] = "tiny",
    seed: int = 0,
    base_accuracy: Annotated[
        float | None,
        typer.Option(
            help="The base is the earliest checkpoint whose validation accuracy reaches this "
            "(0-1). Default: a fifth of the teacher's, so the base answers some prompts (its "
            "samples carry signal) yet leaves 4/5 of the teacher's accuracy to distill (30 "
            "points or more for a teacher at 0.375 or above)."
        ),
    ] = None,
    teacher_steps: Annotated[
        int,
        typer.Option(
            help="SFT steps; the last checkpoint is the teacher, and one every 1/60 of the run "
            "is validated as a candidate base."
        ),
    ] = 600,
    overwrite: Annotated[
        bool, typer.Option(help="Replace models that `foresight prepare` wrote in OUT/<task>.")
    ] = False,
    quiet: QuietFlag = False,
    verbose: VerboseFlag = False,
) -> None:
    """Build base student and teacher models for embedded tasks or a JSONL/Parquet task."""
    from foresight.models import MODEL_SIZES
    from foresight.prepare import prepare_task, task_label
    from foresight.tasks import TASKS

    if size not in MODEL_SIZES:
        raise UserError(f"Unknown model size '{size}'; use one of {', '.join(MODEL_SIZES)}.")
    for task_cfg in [task_config(name, verifier) for name in (TASKS if task == "all" else [task])]:
        name = task_label(task_cfg)
        with stage("prepare"):
            summary = prepare_task(
                task_cfg, out / name, size, seed, base_accuracy, teacher_steps, overwrite=overwrite
            )
        typer.echo(
            f"{name}: base step {summary['base_step']} ({summary['base_accuracy']:.3f}), teacher "
            f"step {teacher_steps} ({summary['teacher_accuracy']:.3f}), test accuracy -> "
            f"{out / name}"
        )


@app.command("compare")
def compare_(
    config: Annotated[Path, typer.Argument(help="Compare YAML (see configs/compare.yaml).")] = Path(
        "configs/compare.yaml"
    ),
    quick: Annotated[
        bool, typer.Option(help="1 seed, short runs (compare.quick): minutes on a CPU.")
    ] = False,
    set_: SetOption = [],
    overwrite: Annotated[bool, typer.Option(help="Delete the comparison's folder first.")] = False,
    quiet: QuietFlag = False,
    verbose: VerboseFlag = False,
) -> None:
    """Train OPD, RL and SFT from one base over seeds, analyze them, report the paper's claims."""
    from foresight.compare.run import compare

    with stage("compare"):
        compare(config, quick=quick, overrides=set_, overwrite=overwrite)


@app.command("import-gguf")
def import_gguf_(
    file: Annotated[Path, typer.Argument(help="GGUF model file (quantized or not).")],
    out_dir: Annotated[Path, typer.Argument(help="New Hugging Face model folder.")],
    overwrite: Annotated[bool, typer.Option(help="Replace a non-empty OUT_DIR.")] = False,
    quiet: QuietFlag = False,
    verbose: VerboseFlag = False,
) -> None:
    """Convert a GGUF model file into an ordinary HF folder (float32 safetensors + tokenizer)."""
    import time

    from foresight.gguf_import import import_gguf

    started = time.perf_counter()
    folder = import_gguf(file, out_dir, overwrite)
    typer.echo(f"imported {file} -> {folder} in {time.perf_counter() - started:.0f} s")


@app.command("eval")
def eval_(
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
            help="Embedded task name or a JSONL/Parquet file; default: the config's, else arith."
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
    """Accuracy of a model on a task's held-out split (and KL to a teacher), with the run's eval
    settings when given its config."""
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
    """An embedded task's name, or a user's JSONL/Parquet file read with `verifier`."""
    if task.endswith(USER_FILE_SUFFIXES):
        return TaskConfig(name="jsonl", path=Path(task), verifier=verifier)
    return TaskConfig(name=task)


# Modules of `pip install 'foresight[train]'`; `pip install foresight` (analyze only) lacks them.
TRAINING_EXTRAS = ("accelerate", "peft", "datasets", "gguf", "math_verify", "tensorboard")


def main() -> None:
    set_verbosity(0)  # -q/-v flags change it while the command line is parsed
    try:
        app()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except ModuleNotFoundError as err:
        if (err.name or "").partition(".")[0] not in TRAINING_EXTRAS:
            raise
        command = next((arg for arg in sys.argv[1:] if not arg.startswith("-")), "this command")
        print(
            f"error: foresight {command} needs the training extras ({err.name} is not "
            "installed): pip install 'foresight[train]'",
            file=sys.stderr,
        )
        sys.exit(2)
