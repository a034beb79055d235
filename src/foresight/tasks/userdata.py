"""User tasks: rows from a file (JSON lines or Parquet, chosen by the suffix: .parquet or .pq is
Parquet, anything else JSON lines) or from a Hugging Face Hub dataset, all read through `datasets`.

    JSON lines  one object per line (blank lines ignored); errors name the line number
    Parquet     one row per record; errors name the row (from 1)
    Hub         task.path `org/name` (no file of that name here): `datasets.load_dataset(path,
                split=task.split or "train")`, through the datasets cache (downloaded when online;
                offline, only a dataset loaded online before is found); errors name the row

Each row is a plain prompt, a conversation prompt or a `messages` conversation, with an answer
(records.py). Splits, in order of precedence: a `split` field on every row (train, val or test);
separate files (task.val_path and task.test_path: then task.path holds the training rows); else the
same prompt hash as the embedded tasks (80/10/10), so a file can grow without moving old prompts
between splits. Val and test are the split's first distinct prompts in file order; train draws with
replacement; split "all" is every row in file order (`foresight eval --task FILE` scores it).
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from foresight.config_sections import TaskConfig
from foresight.errors import UserError
from foresight.hub import is_hub_id, one_line
from foresight.tasks.base import SPLITS, Example, Prompt, Task, check_split, split_of, split_rng
from foresight.tasks.records import parse_line, parse_record, row_split
from foresight.tasks.verifiers import make_verifier

TASK_NAME = "jsonl"
PARQUET_SUFFIXES = (".parquet", ".pq")
# A task.path with one of these suffixes is a file, never a Hub dataset id.
FILE_SUFFIXES = (".jsonl", ".json", ".ndjson", *PARQUET_SUFFIXES)
HUB_DEFAULT_SPLIT = "train"
# With this many distinct prompts, a 10% split is empty with probability 0.9**100 ~ 3e-5.
LINES_FOR_ALL_SPLITS = 100


Row = tuple[str, Example, str | None]  # (where, example, the row's own split or None)


def load_user_task(cfg: TaskConfig, fit: Callable[[list[Row]], list[Row]] | None = None) -> Task:
    """A `Task` over the rows of task.path (a JSONL or Parquet file, or a Hub dataset) or of one
    file per split, scored by the verifier task.verifier names; `fit` may refuse, drop or shorten
    rows (prompts too long for a model's context, train/rollout.py `prompt_fit`)."""
    verify = make_verifier(cfg.verifier)
    numbered = read_rows(cfg.path, cfg.split)
    if cfg.val_path is not None and cfg.test_path is not None:
        numbered = [(where, example, "train") for where, example, _ in numbered]
        for split, split_path in (("val", cfg.val_path), ("test", cfg.test_path)):
            numbered += [(w, e, split) for w, e, _ in read_examples(Path(split_path))]
    check_conversations(cfg, numbered)
    if fit is not None:
        numbered = fit(numbered)
    if cfg.verifier == "number":
        check_numeric_answers(numbered)
    examples = [example for _, example, _ in numbered]
    by_split = split_examples(cfg.path, numbered)

    def sample(split: str, n: int, seed: int) -> list[Example]:
        if split == "all":
            return examples[:n]
        check_split(split)
        if split == "train":
            return split_rng(TASK_NAME, split, seed).choices(by_split["train"], k=n)
        return by_split[split][:n]

    texts = (prompt_chars(example.prompt) + example.solution for example in examples)
    alphabet = "".join(sorted(set("".join(texts))))
    return Task(TASK_NAME, sample, verify, alphabet)


def prompt_chars(prompt: Prompt) -> str:
    """The text a char tokenizer must cover: the prompt, or every message's content."""
    return prompt if isinstance(prompt, str) else "".join(content for _, content in prompt)


def check_conversations(cfg: TaskConfig, numbered: list[Row]) -> None:
    """Refuse the settings that edit a prompt's text when the prompts are conversations."""
    conversation = next((where for where, e, _ in numbered if not isinstance(e.prompt, str)), None)
    if conversation is None:
        return
    if cfg.teacher_prompt_template is not None:
        raise UserError(
            f"task.teacher_prompt_template wraps text prompts, but {conversation} is a "
            "conversation; remove the template or write that prompt as a string."
        )
    if cfg.too_long == "truncate_left":
        raise UserError(
            f"task.too_long truncate_left cuts a text prompt's start, but {conversation} is a "
            "conversation; set task.too_long to drop or error."
        )


def is_hub_dataset(path: str) -> bool:
    """Whether task.path names a Hub dataset: no such path here, a valid `org/name`, and no
    data-file suffix (a missing `data.jsonl` is a typo, not a Hub id)."""
    return Path(path).suffix.lower() not in FILE_SUFFIXES and is_hub_id(path)


def read_rows(path: str, split: str | None) -> list[Row]:
    """The rows of task.path: a Hub dataset's split, or a local file's rows."""
    if is_hub_dataset(path):
        return hub_examples(path, split or HUB_DEFAULT_SPLIT)
    if split is not None:
        raise UserError(
            f"task.split names a split of a Hub dataset, but task.path {path} is a local file "
            "(split by its rows' 'split' field or task.val_path/test_path); remove task.split."
        )
    return read_examples(Path(path))


def is_parquet(path: Path) -> bool:
    return path.suffix.lower() in PARQUET_SUFFIXES


def read_examples(path: Path) -> list[Row]:
    """(where, example, split) for every row, `where` naming its line or row for error messages."""
    kind = "Parquet" if is_parquet(path) else "JSONL"
    if path.is_dir():
        raise UserError(f"task.path {path} is a folder; set it to a JSONL or Parquet file.")
    if not path.is_file():
        raise UserError(
            f"{kind} task file {path} does not exist; set task.path to a JSONL or Parquet file."
        )
    numbered = parquet_examples(path) if is_parquet(path) else jsonl_examples(path)
    if not numbered:
        raise UserError(f"{kind} task file {path} has no examples; add at least one row.")
    return numbered


@contextmanager
def quiet_progress() -> Iterator[None]:
    """`datasets` without its progress bars, restored afterwards."""
    import datasets  # slow to import; only user-data runs need it

    bars_were_on = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if bars_were_on:
            datasets.enable_progress_bars()


def dataset_rows(path: Path, builder: str) -> list[dict]:
    """Rows of `path` through `datasets.load_dataset(builder)`. The Arrow cache goes to a temporary
    folder, dropped once the rows are in memory: an edited file can never hit a stale cache."""
    import datasets

    with quiet_progress(), tempfile.TemporaryDirectory(prefix="foresight-data-") as cache:
        table = datasets.load_dataset(builder, data_files=str(path), split="train", cache_dir=cache)
        return table.to_list()


def hub_rows(name: str, split: str) -> list[dict]:
    """Rows of a Hub dataset's split through `datasets.load_dataset(name, split=split)` and its own
    cache (HF_DATASETS_CACHE), so an offline run finds a dataset an online run loaded."""
    import datasets
    from datasets.exceptions import DatasetNotFoundError

    try:
        with quiet_progress():
            return datasets.load_dataset(name, split=split).to_list()
    except ConnectionError:  # not in the datasets cache, and offline or the Hub unreachable
        why = "offline" if datasets.config.HF_HUB_OFFLINE else "the Hub could not be reached"
        raise UserError(
            f"task.path '{name}' is neither a local file nor a dataset in the Hugging Face "
            f"datasets cache ({why}); load it once online, or give a JSONL or Parquet file."
        ) from None
    except DatasetNotFoundError:
        raise UserError(
            f"task.path '{name}' is neither a local file nor a dataset on the Hugging Face Hub (or "
            "it is private or gated: log in with `hf auth login`); fix the name or give a file."
        ) from None
    except ValueError as exc:  # an unknown split, or a dataset with several configurations
        raise UserError(
            f"datasets could not read split '{split}' of task.path '{name}' ({one_line(exc)}); "
            "set task.split to one of its splits, or export the rows to a JSONL or Parquet file."
        ) from None


def hub_examples(name: str, split: str) -> list[Row]:
    rows = hub_rows(name, split)
    label = f"Hub dataset {name} (split {split})"
    if not rows:
        raise UserError(f"{label} has no rows; set task.split to a split with rows.")
    check_columns(label, rows[0])
    return table_examples(label, rows)


def table_examples(label: str, rows: list[dict]) -> list[Row]:
    """(where, example, split) of a table's rows, numbered from 1."""
    numbered = []
    for n, row in enumerate(rows, 1):
        where = f"{label} row {n}"
        numbered.append((where, parse_record(where, row), row_split(where, row)))
    return numbered


def read_errors() -> tuple[type[Exception], ...]:
    """What `datasets` raises for a file it cannot parse: its own wrapper, pyarrow's errors (e.g.
    ArrowInvalid, also a ValueError) and pandas' ValueError from its JSON fallback."""
    from datasets.exceptions import DatasetGenerationError
    from pyarrow import ArrowException

    return DatasetGenerationError, ArrowException, ValueError, OSError


def jsonl_examples(path: Path) -> list[Row]:
    """JSON lines through `datasets`; the raw line is consulted where `datasets` loses information
    (a missing key and a null both read as None; ints in a float column read as floats)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise UserError(f"JSONL task file {path} is not UTF-8 text; re-save it as UTF-8.") from None
    numbered_lines = [(n, line) for n, line in enumerate(lines, start=1) if line.strip()]
    try:
        rows = dataset_rows(path, "json") if numbered_lines else []
    except read_errors():
        rows = None
    if rows is None or len(rows) != len(numbered_lines):
        # A malformed line (named by parse_line), or a valid file datasets' reader rejects (it
        # fails on columns of mixed JSON types when the file also has blank lines).
        rows = [None] * len(numbered_lines)
    examples = []
    for (number, line), row in zip(numbered_lines, rows):
        where = f"{path} line {number}"
        if row is None or needs_raw_line(row):
            row = parse_line(where, line)
        examples.append((where, parse_record(where, row), row_split(where, row)))
    return examples


def needs_raw_line(row: dict) -> bool:
    """Whether `datasets`' row may differ from the line: a missing key or a null (both None), or a
    float answer (the line may hold the int 5, which the exact verifier must see as '5')."""
    no_prompt = row.get("prompt") is None and row.get("messages") is None
    return no_prompt or row.get("answer") is None or isinstance(row["answer"], float)


def parquet_examples(path: Path) -> list[Row]:
    try:
        rows = dataset_rows(path, "parquet")
    except read_errors() as exc:
        raise UserError(
            f"Parquet task file {path} could not be read ({type(exc).__name__}); write it with "
            "pandas.DataFrame.to_parquet or datasets.Dataset.to_parquet."
        ) from None
    if rows:
        check_columns(f"Parquet task file {path}", rows[0])
    return table_examples(str(path), rows)


def check_columns(label: str, row: dict) -> None:
    """A table (Parquet, Hub) needs a prompt column ('prompt' or 'messages') and 'answer'."""
    if "prompt" not in row and "messages" not in row:
        raise UserError(
            f"{label} has no 'prompt' column (nor 'messages'); it needs 'prompt' or 'messages', "
            "and 'answer'."
        )
    if "answer" not in row:
        raise UserError(f"{label} has no 'answer' column; it needs 'prompt' and 'answer'.")


def check_numeric_answers(numbered: list[Row]) -> None:
    """The `number` verifier compares floats, so every answer must parse as a finite number."""
    for where, example, _ in numbered:
        try:
            value = float(example.answer)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise UserError(
                f"{where} has answer '{example.answer}', which is not a number; "
                "fix it or use task.verifier=exact."
            )


def split_examples(path: str, numbered: list[Row]) -> dict[str, list[Example]]:
    """Examples per split in file order (each row's own split, when every row has one, else the
    prompt hash); val/test keep the first line of each repeated prompt."""
    given = [split for _, _, split in numbered]
    if any(given) and not all(given):
        where = next(where for where, _, split in numbered if split is None)
        raise UserError(f"{where} has no 'split' while other rows have one; give every row one.")
    by_split: dict[str, list[Example]] = {split: [] for split in SPLITS}
    seen: set[Prompt] = set()
    for (_, example, split), hashed in zip(numbered, (split_of(e.prompt) for _, e, _ in numbered)):
        split = split or hashed
        if split != "train" and example.prompt in seen:
            continue
        seen.add(example.prompt)
        by_split[split].append(example)
    for split, members in by_split.items():
        if not members:
            how = (
                "give some rows that split"
                if all(given)
                else f"add lines until it has about {LINES_FOR_ALL_SPLITS} distinct prompts (a "
                "hash of each prompt sends 10% to val and 10% to test), or give the splits as "
                "files (task.val_path, task.test_path) or a 'split' field"
            )
            raise UserError(f"Task file {path} has no prompts in its '{split}' split; {how}.")
    return by_split
