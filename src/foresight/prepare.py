"""Build the embedded base student and teacher of a task, reproducibly, from nothing.

Mirrors the paper's set-up, where the teacher is a stronger tuned version of the student's own base:
one supervised run on the task's worked solutions from a fresh tiny model, with a checkpoint (and a
validation score) every `teacher_steps / 60` steps, rounded up. Its last checkpoint is the strong
**teacher**; the weak **base** is the earliest checkpoint whose validation accuracy reaches a
target (by default a fifth of the teacher's). Same architecture, same tokenizer.

Run: foresight prepare --out models            (all embedded tasks)
     foresight prepare --task my_task.jsonl    (a user's task; its lines need a 'solution')
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path

from foresight.checkpoint import list_checkpoints
from foresight.config import Config
from foresight.config_sections import TaskConfig
from foresight.errors import UserError
from foresight.log import progress, read_metrics, say, stage
from foresight.models import build_char_tokenizer, build_tiny_model, load_model, load_tokenizer
from foresight.run_folder import check_removable
from foresight.tasks import Task, load_task
from foresight.train.evaluate import evaluate
from foresight.train.loop import train

TEACHER_STEPS = 600  # optimizer steps of the supervised run; enough for 1.0 on arith and modchain
CHECKPOINTS = 60  # saved (and validated) checkpoints the base is chosen from, evenly spaced
# Default target of the base's validation accuracy, as a fraction of the teacher's: the base then
# answers some prompts (its own samples carry signal for OPD) and leaves four fifths of the
# teacher's accuracy to distill, 30 points or more whenever the teacher reaches 0.375.
BASE_FRACTION = 0.2
MIN_GAP = 0.3  # base and teacher closer than this (test accuracy) leave little to distill: warn
VAL_PROMPTS, TEST_PROMPTS = 256, 500
PREPARE_MARKER = "prepare.json"  # written last: marks a folder of models that prepare wrote
MODEL_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)


def task_label(task_cfg: TaskConfig) -> str:
    """The task's own name: an embedded task's name, or the stem of the user's file."""
    return Path(task_cfg.path).stem if task_cfg.path is not None else task_cfg.name


def base_target(teacher_val_accuracy: float, base_accuracy: float | None) -> float:
    """The validation accuracy the base must reach: the user's, else a BASE_FRACTION of the
    teacher's."""
    return BASE_FRACTION * teacher_val_accuracy if base_accuracy is None else base_accuracy


def choose_base(curve: list[tuple[int, float]], target: float) -> tuple[int, float]:
    """The earliest checkpoint before the teacher's whose validation accuracy reaches `target`.

    curve: (step, validation accuracy) of every saved checkpoint in step order; the last one is the
    teacher. Returns (step, accuracy) of the base; raises UserError when no earlier one reaches
    it."""
    *candidates, (teacher_step, teacher_accuracy) = curve
    for step, accuracy in candidates:
        if accuracy >= target:
            return step, accuracy
    best_step, best = max(candidates, key=lambda point: point[1])
    # Rounded down, so the suggested value is one the best checkpoint does reach.
    reachable = math.floor(best * 1000) / 1000
    raise UserError(
        f"No checkpoint before the teacher's (step {teacher_step}, validation accuracy "
        f"{teacher_accuracy:.3f}) reached validation accuracy {target:.3f}: the best reached "
        f"{best:.3f} at step {best_step}; pass --base-accuracy {reachable:.3f} or lower, or more "
        "--teacher-steps for a stronger run."
    )


def gap_warning(name: str, base_accuracy: float, teacher_accuracy: float) -> str | None:
    """The one-line warning when base and teacher end less than MIN_GAP apart, else None."""
    if round(teacher_accuracy - base_accuracy, 9) >= MIN_GAP:  # 0.7 - 0.4 is 30 points, not less
        return None
    return (
        f"warning: {name}: base {base_accuracy:.3f} and teacher {teacher_accuracy:.3f} (test "
        f"accuracy) are under {MIN_GAP * 100:.0f} points apart, which leaves little to distill; "
        "pass a lower --base-accuracy, or more --teacher-steps or --size small for a stronger "
        "teacher."
    )


def copy_model_files(checkpoint: Path, destination: Path) -> None:
    """Copy the HF model and tokenizer files of a checkpoint (not its optimizer state)."""
    if destination.exists():
        shutil.rmtree(destination)
    destination.mkdir(parents=True)
    for name in MODEL_FILES:
        if (checkpoint / name).is_file():
            shutil.copy2(checkpoint / name, destination / name)


def sft_config(
    task_cfg: TaskConfig,
    init_dir: Path,
    run_dir: Path,
    steps: int,
    seed: int,
    max_new_tokens: int,
) -> Config:
    """The supervised run: a checkpoint and a validation score every steps / CHECKPOINTS steps."""
    every = math.ceil(steps / CHECKPOINTS)  # at most CHECKPOINTS of them, whatever the length
    return Config.model_validate(
        {
            "model": {"student": str(init_dir), "teacher": None},
            "task": task_cfg.model_dump(mode="json"),
            "rollout": {"prompts_per_step": 128, "max_new_tokens": max_new_tokens},
            "optim": {"lr": 3e-3, "warmup_steps": 50, "schedule": "cosine", "weight_decay": 0.01},
            # One thread: the reduction order, hence the bits of the result, then match on any machine.
            "train": {
                "method": "sft",
                "steps": steps,
                "seed": seed,
                "out_dir": str(run_dir),
                "threads": 1,
                "checkpoint_every": every,
            },
            "eval": {"every": every, "n_prompts": VAL_PROMPTS, "split": "val", "sampled": False},
            "log": {"tensorboard": False},
        }
    )


def validation_curve(run_dir: Path) -> list[tuple[int, float]]:
    """(step, validation accuracy) of each saved checkpoint of the run, in step order."""
    scored = {r["step"]: r["eval/accuracy"] for r in read_metrics(run_dir) if "eval/accuracy" in r}
    return [(step, scored[step]) for step, _ in list_checkpoints(run_dir)]


def prepare_task(
    task_cfg: TaskConfig,
    out_dir: Path,
    size: str = "tiny",
    seed: int = 0,
    base_accuracy: float | None = None,
    teacher_steps: int = TEACHER_STEPS,
    max_new_tokens: int = 64,
    overwrite: bool = False,
) -> dict:
    """Train base and teacher for one task into out_dir/{base,teacher} and write prepare.json.

    base_accuracy: the validation accuracy the base must reach (None: BASE_FRACTION of the
    teacher's). Everything is built in a scratch folder beside `out_dir` and moved into place at
    the end, so a killed prepare never leaves half a model pair; existing models are replaced only
    with `overwrite`, and only when `prepare` wrote them (prepare.json inside)."""
    out_dir = Path(out_dir)
    task = checked_request(task_cfg, out_dir, base_accuracy, teacher_steps, seed, overwrite)
    name = task_label(task_cfg)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_scratch(out_dir)
    with (
        stage(name),
        tempfile.TemporaryDirectory(
            prefix=f".{out_dir.name}.tmp-{os.getpid()}-", dir=out_dir.parent
        ) as scratch,
    ):
        staged = Path(scratch) / "out"
        run_dir = train_run(
            task, task_cfg, Path(scratch), size, seed, teacher_steps, max_new_tokens
        )
        curve = validation_curve(run_dir)
        teacher_step, teacher_val = curve[-1]
        target = base_target(teacher_val, base_accuracy)
        base_step, base_val = choose_base(curve, target)
        say(
            f"base: step {base_step}, the earliest checkpoint with validation accuracy >= "
            f"{target:.3f} ({base_val:.3f}; the teacher {teacher_val:.3f})"
        )
        for role, step in (("base", base_step), ("teacher", teacher_step)):
            copy_model_files(run_dir / "checkpoints" / f"step-{step:06d}", staged / role)
        summary = {
            "task": name,
            "size": size,
            "seed": seed,
            "teacher_steps": teacher_steps,
            "base_target": target,
            "base_step": base_step,
            "base_val_accuracy": base_val,
            "teacher_val_accuracy": teacher_val,
            **held_out_accuracies(task, staged, max_new_tokens),
            "val_curve": [[step, accuracy] for step, accuracy in curve],
        }
        # Written last: prepare.json marks a complete folder that prepare wrote.
        (staged / PREPARE_MARKER).write_text(json.dumps(summary, indent=1) + "\n")
        if out_dir.exists():
            shutil.rmtree(out_dir)  # checked above: empty, or models prepare wrote
        os.rename(staged, out_dir)
    warning = gap_warning(name, summary["base_accuracy"], summary["teacher_accuracy"])
    if warning is not None:
        print(warning, file=sys.stderr, flush=True)
    return summary


def checked_request(
    task_cfg: TaskConfig,
    out_dir: Path,
    base_accuracy: float | None,
    teacher_steps: int,
    seed: int,
    overwrite: bool,
) -> Task:
    """The loaded task, once everything that can refuse the request without training has passed."""
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        if not overwrite:
            raise UserError(
                f"{out_dir} already holds files; pass --overwrite to replace models that "
                "`foresight prepare` wrote there, or choose another --out."
            )
        check_removable(out_dir, PREPARE_MARKER)
    if base_accuracy is not None and not 0.0 <= base_accuracy <= 1.0:
        raise UserError(f"--base-accuracy {base_accuracy} is not a fraction; pass one in [0, 1].")
    if teacher_steps < 2:
        raise UserError(
            f"--teacher-steps {teacher_steps} leaves no checkpoint before the teacher's to be the "
            "base; pass 2 or more."
        )
    task = load_task(task_cfg)
    if not all(e.solution for e in task.sample("train", 64, seed)):
        raise UserError(
            f"Task '{task.name}' has examples without a 'solution'; prepare needs worked "
            "solutions to train on (add a 'solution' field to every JSONL line)."
        )
    return task


def train_run(
    task: Task,
    task_cfg: TaskConfig,
    scratch: Path,
    size: str,
    seed: int,
    steps: int,
    max_new_tokens: int,
) -> Path:
    """The supervised run from a fresh model in scratch/init; returns its run folder."""
    init_dir = scratch / "init"
    tokenizer = build_char_tokenizer(task.alphabet)
    build_tiny_model(len(tokenizer), size, seed).save_pretrained(init_dir)
    tokenizer.save_pretrained(init_dir)
    say(f"SFT of a fresh {size} model for {steps} steps; its last checkpoint is the teacher")
    with stage("SFT base+teacher"):
        return train(sft_config(task_cfg, init_dir, scratch / "run", steps, seed, max_new_tokens))


def remove_dead_scratch(out_dir: Path) -> None:
    """Delete scratch folders of `out_dir` left by prepare processes that were killed."""
    for leftover in out_dir.parent.glob(f".{out_dir.name}.tmp-*"):
        pid = leftover.name.removeprefix(f".{out_dir.name}.tmp-").split("-")[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(leftover, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def held_out_accuracies(task: Task, out_dir: Path, max_new_tokens: int) -> dict[str, float]:
    """Greedy accuracy of out_dir/{base,teacher} on TEST_PROMPTS of the task's test split."""
    scores = {}
    with progress("test accuracy", 2) as bar:
        for role in ("base", "teacher"):
            model, tokenizer = (
                load_model(out_dir / role, role),
                load_tokenizer(out_dir / role, role),
            )
            accuracy = evaluate(
                model, tokenizer, task, "test", TEST_PROMPTS, max_new_tokens, 256, sampled=False
            )["eval/accuracy"]
            scores[f"{role}_accuracy"] = accuracy
            bar.advance(note=f"{role} {accuracy:.3f}")
    return scores
