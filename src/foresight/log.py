"""Run logging: one JSON line per step in metrics.jsonl, TensorBoard scalars, a live progress bar.

metrics.jsonl is the source of truth (plots and reports read it); TensorBoard is a convenience.
On resume the lines past the resumed step are dropped, so the file never holds two histories.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from foresight.config import LogConfig


def truncate_metrics(path: Path, last_step: int) -> None:
    """Keep only the lines of steps <= last_step (the state a resumed run continues from); a line
    cut short by a kill is dropped. Rewritten through a temporary file, so a crash loses nothing."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= last_step:
                kept.append(line)
        except json.JSONDecodeError:
            continue
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text("".join(line + "\n" for line in kept))
    os.replace(temporary, path)


class RunLogger:
    """Writes each step's metrics to metrics.jsonl, TensorBoard and the progress line."""

    def __init__(self, run_dir: Path, cfg: LogConfig, start_step: int, total_steps: int) -> None:
        self.path = Path(run_dir) / "metrics.jsonl"
        # Resuming before the first checkpoint starts over, step-0 evaluation included.
        last_kept = start_step if start_step > 0 else -1
        truncate_metrics(self.path, last_kept)
        self.file = self.path.open("a")
        self.writer = None
        if cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # imports TensorBoard only when used

            self.writer = SummaryWriter(str(Path(run_dir) / "tb"), purge_step=last_kept + 1)
        self.last_accuracy = float("nan")
        self.progress = None
        if cfg.progress:
            self.progress = Progress(
                TextColumn("step"),
                MofNCompleteColumn(),
                BarColumn(),
                TextColumn("{task.fields[line]}"),
                TimeRemainingColumn(),
            )
            self.task = self.progress.add_task(
                "train", total=total_steps, completed=start_step, line=""
            )
            self.progress.start()

    def log(self, step: int, metrics: dict[str, float]) -> None:
        # Strict JSON: a non-finite value is written as null (bare NaN breaks strict readers).
        record = {"step": step, **{k: v if math.isfinite(v) else None for k, v in metrics.items()}}
        self.file.write(json.dumps(record, allow_nan=False) + "\n")
        self.file.flush()
        if self.writer is not None:
            for key, value in metrics.items():
                self.writer.add_scalar(key, value, step)
        self.last_accuracy = metrics.get("eval/accuracy", self.last_accuracy)
        if self.progress is not None:
            line = (
                f"loss {metrics.get('loss', float('nan')):.4f}  "
                f"kl {metrics.get('kl/mean', float('nan')):.4f}  acc {self.last_accuracy:.3f}"
            )
            self.progress.update(self.task, completed=step, line=line)

    def close(self) -> None:
        self.file.close()
        if self.writer is not None:
            self.writer.close()
        if self.progress is not None:
            self.progress.stop()


def read_metrics(run_dir: Path) -> list[dict[str, float]]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
