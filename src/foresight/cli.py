"""The `foresight` command line: each command loads a config or arguments and calls one library function.

Run: foresight --help
     foresight train configs/tiny.yaml --set optim.lr=1e-3 --set train.steps=20
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from foresight.analyze_command import analyze_command
from foresight.errors import UserError

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


def quiet_libraries() -> None:
    """Silence transformers' per-file progress bars; our own progress line is enough."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


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
) -> None:
    """Train (OPD or SFT) from a YAML config."""
    from foresight.config import load_config
    from foresight.train.loop import train as run_training

    if allow_vocab_mismatch:  # stored in the config, so the run folder records it
        set_ = [*set_, "model.allow_vocab_mismatch=true"]
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
) -> None:
    """Distill the committed base toward the committed teacher and print the accuracies."""
    if real:
        from foresight.demo_real import run_real_demo

        run_real_demo(config or Path("configs/real.yaml"), set_, out or Path("runs/demo-real"))
        return
    from foresight.demo import run_demo

    run_demo(config or Path("configs/demo.yaml"), set_, out or Path("runs/demo"), effopd)


@app.command()
def prepare(
    task: Annotated[str, typer.Option(help="Embedded task name, 'all', or a JSONL file.")] = "all",
    out: Annotated[Path, typer.Option(help="Folder for <task>/{base,teacher}.")] = Path("models"),
    verifier: Annotated[str, typer.Option(help="Verifier of a JSONL task.")] = "exact",
    size: Annotated[str, typer.Option(help="Model size: tiny or small.")] = "tiny",
    seed: int = 0,
    base_steps: Annotated[int, typer.Option(help="0 = the task's default.")] = 0,
    teacher_steps: Annotated[int, typer.Option(help="0 = the task's default.")] = 0,
    overwrite: Annotated[
        bool, typer.Option(help="Replace models that `foresight prepare` wrote in OUT/<task>.")
    ] = False,
) -> None:
    """Build base student and teacher models for embedded tasks or a JSONL task."""
    from foresight.config import TaskConfig
    from foresight.models import MODEL_SIZES
    from foresight.prepare import prepare_task
    from foresight.tasks import TASKS

    if size not in MODEL_SIZES:
        raise UserError(f"Unknown model size '{size}'; use one of {', '.join(MODEL_SIZES)}.")
    if task.endswith(USER_FILE_SUFFIXES):
        targets = [(Path(task).stem, TaskConfig(name="jsonl", path=Path(task), verifier=verifier))]
    else:
        names = list(TASKS) if task == "all" else [task]
        targets = [(name, TaskConfig(name=name)) for name in names]
    for name, task_cfg in targets:
        summary = prepare_task(
            task_cfg,
            out / name,
            size,
            seed,
            base_steps or None,
            teacher_steps or None,
            overwrite=overwrite,
        )
        typer.echo(
            f"{name}: base {summary['base_accuracy']:.3f}, teacher {summary['teacher_accuracy']:.3f}"
            f" -> {out / name}"
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
) -> None:
    """Train OPD, RL and SFT from one base over seeds, analyze them, report the paper's claims."""
    from foresight.compare.run import compare

    quiet_libraries()
    compare(config, quick=quick, overrides=set_, overwrite=overwrite)


@app.command("import-gguf")
def import_gguf_(
    file: Annotated[Path, typer.Argument(help="GGUF model file (quantized or not).")],
    out_dir: Annotated[Path, typer.Argument(help="New Hugging Face model folder.")],
    overwrite: Annotated[bool, typer.Option(help="Replace a non-empty OUT_DIR.")] = False,
) -> None:
    """Convert a GGUF model file into an ordinary HF folder (float32 safetensors + tokenizer)."""
    import time

    from foresight.gguf_import import import_gguf

    started = time.perf_counter()
    folder = import_gguf(file, out_dir, overwrite)
    typer.echo(f"imported {file} -> {folder} in {time.perf_counter() - started:.0f} s")


@app.command("eval")
def eval_(
    model: Annotated[Path, typer.Argument(help="Model folder.")],
    task: Annotated[
        str, typer.Option(help="Embedded task name or a JSONL/Parquet file.")
    ] = "arith",
    verifier: Annotated[str, typer.Option(help="Verifier of a JSONL task.")] = "exact",
    split: Annotated[
        str | None,
        typer.Option(
            help="val, test (hash split), or all; default: all rows of a file, else test."
        ),
    ] = None,
    n: Annotated[
        int | None, typer.Option(min=1, help="Prompts scored; default: every row, or 500.")
    ] = None,
    teacher: Annotated[
        Path | None, typer.Option(help="Also report reverse KL to this teacher.")
    ] = None,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 64,
) -> None:
    """Accuracy of a model on a task's held-out split (and KL to a teacher)."""
    import json

    from foresight.config import TaskConfig
    from foresight.models import check_pair, load_model, load_tokenizer
    from foresight.tasks import load_task
    from foresight.train.evaluate import evaluate

    user_file = task.endswith(USER_FILE_SUFFIXES)
    split = split or ("all" if user_file else "test")
    if split not in ("val", "test", "all") or (split == "all" and not user_file):
        raise UserError(f"Unknown split '{split}'; use val or test (or all, for a task file).")
    task_cfg = (
        TaskConfig(name="jsonl", path=Path(task), verifier=verifier)
        if user_file
        else TaskConfig(name=task)
    )
    loaded = load_task(task_cfg)
    n = n or (sys.maxsize if user_file else 500)
    rows = len(loaded.sample(split, n, 0))
    from foresight.lora import load_for_eval

    student, tokenizer = load_for_eval(model)  # a model folder or a LoRA checkpoint of a run
    teacher_model = None
    if teacher is not None:
        teacher_model = load_model(teacher, "teacher")
        check_pair(tokenizer, load_tokenizer(teacher, "teacher"), student, teacher_model)
    scores = evaluate(
        student, tokenizer, loaded, split, n, max_new_tokens, 256, teacher=teacher_model
    )
    typer.echo(f"scored {rows} prompts of {task} (split {split})", err=True)
    typer.echo(json.dumps({**scores, "eval/prompts": rows}))


def main() -> None:
    quiet_libraries()
    try:
        app()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
