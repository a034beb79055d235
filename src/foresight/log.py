"""Run logging and console progress.

- `RunLogger`: one JSON line per step in metrics.jsonl (the source of truth: plots and reports read
  it), plus TensorBoard and the trackers of `log.report_to` (wandb, trackio, mlflow, ... through
  accelerate's tracking module), and the run's progress bar. On resume the lines past the resumed
  step are dropped, so the file never holds two histories.
- `progress(label, total)`: a labelled progress bar for any long loop (training, evaluation,
  analysis, prepare). On a terminal it is a live rich bar; otherwise (CI logs, `make demo | tee`)
  it prints a plain line every `every` updates, so a log shows life. Bars opened inside `stage(name)`
  are labelled "name · label", and a bar opened while another is live joins the same display.
- Verbosity is the level of the `foresight` logger (`set_verbosity`, the CLI's -q/-v flags): above
  INFO (quiet) hides progress and `say` lines; errors and results are printed by their callers.
  `library_verbosity` makes transformers (and, with -v, every library's info logs) follow it.

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
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from foresight.config_sections import LogConfig
from foresight.errors import UserError

logger = logging.getLogger("foresight")

# The labels of the enclosing `stage`s, and the live display that nested bars join.
_stages: ContextVar[tuple[str, ...]] = ContextVar("foresight_stages", default=())
_live: ContextVar[Progress | None] = ContextVar("foresight_live", default=None)

# Plain (non-terminal) progress prints about this many lines per bar unless told `every`.
PLAIN_LINES_PER_BAR = 10


def set_verbosity(level: int | None) -> None:
    """-1 quiet (errors and results only), 0 normal (progress and info lines), 1 verbose (also
    debug lines), None unset (the library default: not quiet). Sets the `foresight` logger's
    level; library users may set it directly."""
    levels = {-1: logging.WARNING, 0: logging.INFO, 1: logging.DEBUG, None: logging.NOTSET}
    logger.setLevel(levels[level])


def library_verbosity() -> None:
    """Libraries' own logs follow ours: by default transformers' warnings and per-file progress
    bars are off (our labelled progress says enough); with -v, transformers' and every other
    library's info logs are on."""
    from transformers.utils import logging as hf_logging

    if logger.level == logging.DEBUG:  # -v
        hf_logging.set_verbosity_info()
        hf_logging.enable_progress_bar()
        logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    else:
        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()


def _verbosity_flag(level: int):
    """A typer callback for -q (level -1) or -v (1); both in one command line is an error."""

    def apply(value: bool) -> bool:
        if value:
            other = {-1: logging.DEBUG, 1: logging.WARNING}[level]
            if logger.level == other:
                raise UserError("Pass -q (quiet) or -v (verbose), not both.")
            set_verbosity(level)
            library_verbosity()
        return value

    return apply


# The -q/-v flags every command takes (before or after its name). The callbacks set the verbosity
# while the command line is parsed, so the commands never read the values (expose_value=False).
QuietFlag = Annotated[
    bool,
    typer.Option(
        "-q",
        "--quiet",
        callback=_verbosity_flag(-1),
        expose_value=False,
        is_eager=True,
        help="Print only errors and the result.",
    ),
]
VerboseFlag = Annotated[
    bool,
    typer.Option(
        "-v",
        "--verbose",
        callback=_verbosity_flag(1),
        expose_value=False,
        is_eager=True,
        help="Also print the libraries' info logs.",
    ),
]


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


# The keyword each tracker's init takes for the run's own name (the others get none).
RUN_NAME_KEYWORD = {"wandb": "name", "trackio": "name", "mlflow": "run_name"}


def check_trackers(cfg: LogConfig) -> None:
    """Refuse a tracker of log.report_to whose package is not installed, before anything loads."""
    if not cfg.report_to:
        return
    from accelerate.tracking import get_available_trackers

    available = {str(tracker) for tracker in get_available_trackers()}
    for name in cfg.report_to:
        if name not in available:
            raise UserError(
                f"log.report_to names {name}, whose package is not installed; "
                f"pip install {name} or remove it from log.report_to."
            )


def start_trackers(cfg: LogConfig, run_dir: Path, run_config: dict[str, Any]) -> list[Any]:
    """The trackers of log.report_to, started through accelerate's tracking module (its tracker
    classes, as `Accelerator.init_trackers` starts them), with the run's config stored.

    Only the main process creates a RunLogger, so accelerate's own main-process check is switched
    off; its trackers log through accelerate's logger, which needs its process state (PartialState,
    which under torchrun finds the process group already made)."""
    if not cfg.report_to:
        return []
    from accelerate import PartialState
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    check_trackers(cfg)
    PartialState()
    hyperparameters = flat_config(run_config)
    trackers = []
    for name in cfg.report_to:
        tracker_class = LOGGER_TYPE_TO_CLASS[name]
        args = [cfg.project]
        if tracker_class.requires_logging_directory:
            args.append(str(Path(run_dir) / name))
        keyword = RUN_NAME_KEYWORD.get(name)
        kwargs = {keyword: Path(run_dir).name} if keyword else {}
        if name == "wandb" and quiet():  # -q: no banner and no summary from wandb either
            kwargs["settings"] = {"silent": True}
        tracker = tracker_class(*args, **kwargs)
        tracker.main_process_only = False
        try:
            tracker.start()
            tracker.store_init_configuration(hyperparameters)
        # Any failure inside a third-party tracker (login, server, its own settings) is the
        # user's environment, told in one sentence rather than a traceback of its internals.
        except Exception as exc:  # noqa: BLE001
            first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise UserError(
                f"The {name} tracker did not start ({first_line}); fix its settings (for wandb "
                f"without a login: WANDB_MODE=offline) or remove it from log.report_to."
            ) from None
        trackers.append(tracker)
    return trackers


def flat_config(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"optim": {"lr": 1e-3}} -> {"optim.lr": 1e-3}; lists and paths as text (trackers store
    scalars only)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat |= flat_config(value, f"{prefix}{key}.")
        else:
            scalar = value is None or isinstance(value, bool | int | float | str)
            flat[f"{prefix}{key}"] = value if scalar else str(value)
    return flat


class RunLogger:
    """Writes each step's metrics to metrics.jsonl, TensorBoard, the trackers of log.report_to and
    the progress bar. `run_config` (the resolved config as a dict) is what the trackers store."""

    def __init__(
        self,
        run_dir: Path,
        cfg: LogConfig,
        start_step: int,
        total_steps: int,
        run_config: dict[str, Any] | None = None,
    ) -> None:
        self.path = Path(run_dir) / "metrics.jsonl"
        # Resuming before the first checkpoint starts over, step-0 evaluation included.
        last_kept = start_step if start_step > 0 else -1
        truncate_metrics(self.path, last_kept)
        self.file = self.path.open("a")
        self.writer = None
        if cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # imports TensorBoard only when used

            self.writer = SummaryWriter(str(Path(run_dir) / "tb"), purge_step=last_kept + 1)
        self.trackers = start_trackers(cfg, Path(run_dir), run_config or {})
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
        for tracker in self.trackers:
            tracker.log(metrics, step=step)
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
        for tracker in self.trackers:
            tracker.finish()
        if self.bar is not None:
            self.bar.close()


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
