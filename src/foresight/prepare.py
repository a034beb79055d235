"""Build the embedded base student and teacher of a task, reproducibly, from nothing.

Mirrors the paper's set-up, where the teacher is a stronger tuned version of the student's own base:
one supervised run on the task's worked solutions from a fresh tiny model; its early checkpoint is the
weak **base**, its final one the strong **teacher**. Same architecture, same tokenizer.

Run: foresight prepare --out models            (all embedded tasks)
     foresight prepare --task my_task.jsonl    (a user's task; its lines need a 'solution')
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from foresight.config import Config, TaskConfig
from foresight.errors import UserError
from foresight.models import build_char_tokenizer, build_tiny_model, load_model, load_tokenizer
from foresight.run_folder import check_removable
from foresight.tasks import load_task
from foresight.train.evaluate import evaluate
from foresight.train.loop import train

# Optimizer steps of the supervised run at which the base and the teacher are taken, per task.
# Chosen so that the base is weak (well over 30 points below the teacher) and the teacher strong.
SCHEDULES: dict[str, tuple[int, int]] = {"arith": (150, 600), "modchain": (110, 600)}
DEFAULT_SCHEDULE = (150, 600)
PREPARE_MARKER = "prepare.json"  # written last: marks a folder of models that prepare wrote
MODEL_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
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
    base_step: int,
    seed: int,
    max_new_tokens: int,
) -> Config:
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
                "checkpoint_every": steps,
                "checkpoint_at": [base_step],
            },
            "eval": {"every": max(1, steps // 5), "n_prompts": 128, "sampled": False},
            "log": {"tensorboard": False},
        }
    )


def prepare_task(
    task_cfg: TaskConfig,
    out_dir: Path,
    size: str = "tiny",
    seed: int = 0,
    base_steps: int | None = None,
    teacher_steps: int | None = None,
    max_new_tokens: int = 64,
    overwrite: bool = False,
) -> dict[str, float | str]:
    """Train base and teacher for one task into out_dir/{base,teacher}; return their accuracies.

    Everything is built in a scratch folder beside `out_dir` and moved into place at the end, so a
    killed prepare never leaves half a model pair; existing models are replaced only with
    `overwrite`, and only when `prepare` wrote them (prepare.json inside)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        if not overwrite:
            raise UserError(
                f"{out_dir} already holds files; pass --overwrite to replace models that "
                "`foresight prepare` wrote there, or choose another --out."
            )
        check_removable(out_dir, PREPARE_MARKER)
    task = load_task(task_cfg)
    default_base, default_teacher = SCHEDULES.get(task_cfg.name, DEFAULT_SCHEDULE)
    base_steps, teacher_steps = base_steps or default_base, teacher_steps or default_teacher
    if base_steps >= teacher_steps:
        raise UserError(
            f"base steps ({base_steps}) must be fewer than teacher steps ({teacher_steps})."
        )
    if not all(e.solution for e in task.sample("train", 64, seed)):
        raise UserError(
            f"Task '{task.name}' has examples without a 'solution'; prepare needs worked "
            "solutions to train on (add a 'solution' field to every JSONL line)."
        )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_scratch(out_dir)
    with tempfile.TemporaryDirectory(
        prefix=f".{out_dir.name}.tmp-{os.getpid()}-", dir=out_dir.parent
    ) as scratch:
        staged = Path(scratch) / "out"
        init_dir = Path(scratch) / "init"
        tokenizer = build_char_tokenizer(task.alphabet)
        build_tiny_model(len(tokenizer), size, seed).save_pretrained(init_dir)
        tokenizer.save_pretrained(init_dir)
        cfg = sft_config(
            task_cfg,
            init_dir,
            Path(scratch) / "run",
            teacher_steps,
            base_steps,
            seed,
            max_new_tokens,
        )
        run_dir = train(cfg)
        copy_model_files(run_dir / "checkpoints" / f"step-{base_steps:06d}", staged / "base")
        copy_model_files(run_dir / "checkpoints" / f"step-{teacher_steps:06d}", staged / "teacher")
        summary = summarize(task, staged, size, seed, base_steps, teacher_steps, max_new_tokens)
        if out_dir.exists():
            shutil.rmtree(out_dir)  # checked above: empty, or models prepare wrote
        os.rename(staged, out_dir)
    return summary


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


def summarize(task, out_dir: Path, size, seed, base_steps, teacher_steps, max_new_tokens) -> dict:
    """Held-out accuracy of the pair, written to out_dir/prepare.json (the folder's marker)."""
    summary: dict[str, float | str] = {
        "task": task.name,
        "size": size,
        "seed": seed,
        "base_steps": base_steps,
        "teacher_steps": teacher_steps,
    }
    for role in ("base", "teacher"):
        model = load_model(out_dir / role, role)
        scores = evaluate(
            model,
            load_tokenizer(out_dir / role, role),
            task,
            "test",
            500,
            max_new_tokens,
            256,
            sampled=False,
        )
        summary[f"{role}_accuracy"] = scores["eval/accuracy"]
    (out_dir / PREPARE_MARKER).write_text(json.dumps(summary, indent=1) + "\n")
    return summary
