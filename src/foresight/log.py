"""Run logging and console progress.

- `RunLogger`: one JSON line per step in metrics.jsonl (the source of truth: plots and reports read
  it), plus TensorBoard and the trackers of `log.report_to` (wandb, trackio, mlflow, ... through
  accelerate's tracking module), and the run's progress bar. On resume the lines past the resumed
  step are dropped, so the file never holds two histories.
- `progress(label, total)`: a labelled progress bar for any long loop (training, evaluation,
  analysis, prepare). On a terminal it is a live rich bar; otherwise (CI logs, `make demo | tee`)
  it prints a plain line every `every` updates, so a log shows life. Bars opened inside `stage(name)`
  are labelled "name · label", and a bar opened while another is live joins the same display.
- Verbosity is the level of the `foresight` logger (`set_verbosity`, the CLI's -q/-v): above INFO
  (quiet) hides progress and `say` lines; errors and results are printed by their callers.

Progress and `say` lines go to stderr: stdout carries only each command's result.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from foresight.config import LogConfig

logger = logging.getLogger("foresight")

# The labels of the enclosing `stage`s, and the live display that nested bars join.
_stages: ContextVar[tuple[str, ...]] = ContextVar("foresight_stages", default=())
_live: ContextVar[Progress | None] = ContextVar("foresight_live", default=None)

# Plain (non-terminal) progress prints about this many lines per bar unless told `every`.
PLAIN_LINES_PER_BAR = 10


def set_verbosity(level: int) -> None:
    """-1 quiet (errors and results only), 0 normal (progress and info lines), 1 verbose (also
    debug lines). Sets the `foresight` logger's level; library users may set it directly."""
    logger.setLevel({-1: logging.WARNING, 0: logging.INFO, 1: logging.DEBUG}[level])


def quiet() -> bool:
    """Whether progress and info lines are hidden (the `foresight` logger is set above INFO; unset,
    as in plain library use, means not quiet)."""
    return logger.level > logging.INFO


def say(text: str) -> None:
    """An info line on stderr, labelled with the enclosing stages; hidden when quiet."""
    if not quiet():
        print(_labelled(text), file=sys.stderr, flush=True)


@contextmanager
def stage(name: str) -> Iterator[None]:
    """Label the bars and `say` lines opened inside: stage("demo") -> "demo · step 3/40"."""
    token = _stages.set((*_stages.get(), name))
    try:
        yield
    finally:
        _stages.reset(token)


def _labelled(label: str) -> str:
    return " · ".join((*_stages.get(), label))


class Bar:
    """One labelled progress bar over `total` units; see the module docstring. Use `progress()`,
    or call `close()` yourself when the bar outlives one block (RunLogger)."""

    def __init__(self, label: str, total: int, every: int | None = None, completed: int = 0):
        self.label, self.total, self.completed = _labelled(label), total, completed
        self.every = every or max(1, math.ceil(total / PLAIN_LINES_PER_BAR))
        self.started = time.perf_counter()
        self.hidden = quiet()
        self.console = Console(stderr=True)
        self.live: Progress | None = None
        self.owns_live = False
        if self.hidden or not self.console.is_terminal:
            return
        self.live = _live.get()
        if self.live is None:  # the outermost bar owns the display; nested bars add a row to it
            self.live = Progress(
                TextColumn("{task.description}"),
                MofNCompleteColumn(),
                BarColumn(),
                TextColumn("{task.fields[note]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=self.console,
            )
            self.live.start()
            self.owns_live = True
            self.token = _live.set(self.live)
        self.task = self.live.add_task(self.label, total=total, completed=completed, note="")

    def update(self, completed: int, note: str = "") -> None:
        """Set the units done; `note` is shown beside the count (e.g. the step's loss)."""
        before, self.completed = self.completed, completed
        if self.hidden:
            return
        if self.live is not None:
            self.live.update(self.task, completed=completed, note=note)
        elif completed // self.every > before // self.every or (completed >= self.total > before):
            self.print_line(note)

    def advance(self, units: int = 1, note: str = "") -> None:
        self.update(self.completed + units, note)

    def print_line(self, note: str = "") -> None:
        """The plain line: 'label done/total · note · elapsed'."""
        parts = [f"{self.label} {self.completed}/{self.total}"]
        parts += [note] if note else []
        parts.append(f"{time.perf_counter() - self.started:.0f} s")
        print(" · ".join(parts), file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.live is None:
            return
        if self.owns_live:
            self.live.stop()
            _live.reset(self.token)
        else:
            self.live.remove_task(self.task)
        self.live = None


@contextmanager
def progress(label: str, total: int, every: int | None = None) -> Iterator[Bar]:
    """A labelled progress bar for a loop of `total` units; `every`: plain-line interval without a
    terminal (default: about ten lines per bar).

        with progress("reading checkpoints", len(folders)) as bar:
            for folder in folders:
                ...
                bar.advance()
    """
    bar = Bar(label, total, every)
    try:
        yield bar
    finally:
        bar.close()


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
        self.bar = None
        if cfg.progress:
            self.bar = Bar("step", total_steps, cfg.progress_every or None, start_step)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        # Strict JSON: a non-finite value is written as null (bare NaN breaks strict readers).
        record = {"step": step, **{k: v if math.isfinite(v) else None for k, v in metrics.items()}}
        self.file.write(json.dumps(record, allow_nan=False) + "\n")
        self.file.flush()
        if self.writer is not None:
            for key, value in metrics.items():
                self.writer.add_scalar(key, value, step)
        self.last_accuracy = metrics.get("eval/accuracy", self.last_accuracy)
        if self.bar is not None and step > 0:
            note = (
                f"loss {metrics.get('loss', float('nan')):.4f}  "
                f"kl {metrics.get('kl/mean', float('nan')):.4f}  acc {self.last_accuracy:.3f}"
            )
            self.bar.update(step, note)

    def close(self) -> None:
        self.file.close()
        if self.writer is not None:
            self.writer.close()
        if self.bar is not None:
            self.bar.close()


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
