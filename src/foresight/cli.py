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
from foresight.eval_command import eval_command, task_config
from foresight.log import QuietFlag, VerboseFlag, library_verbosity, set_verbosity, stage

app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
    help="On-policy distillation, foresight analysis and EffOPD.",
)
app.command("analyze")(analyze_command)
app.command("eval")(eval_command)

SetOption = Annotated[
    list[str], typer.Option("--set", help="Override a config value: section.key=value.")
]


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
        str,
        typer.Option(
            help="Embedded task name, 'all', a JSONL/Parquet file or a Hub dataset id (org/name)."
        ),
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
    lr_scales: Annotated[
        str | None,
        typer.Option(
            help="Learning-rate regimes: comma-separated multipliers of every method's lr, e.g. "
            "1,0.1; one full comparison each and a claims table with a column per regime."
        ),
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Delete the comparison's folder first.")] = False,
    quiet: QuietFlag = False,
    verbose: VerboseFlag = False,
) -> None:
    """Train OPD, RL and SFT from one base over seeds, analyze them, report the paper's claims."""
    from foresight.compare.plan import parse_lr_scales
    from foresight.compare.run import compare

    if lr_scales is not None:  # after --set, so the option wins over a compare.lr_scales= there
        set_ = [*set_, f"compare.lr_scales={parse_lr_scales(lr_scales)}"]
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
    finally:
        set_verbosity(None)  # back to the library default, for a caller in the same process
