"""User tasks from a file of prompts, read through the `datasets` library: JSON lines or Parquet,
chosen by the file's suffix (.parquet or .pq is Parquet; anything else is JSON lines).

    JSON lines  one {"prompt": str, "answer": str | number, "solution": str} object per line
                (`solution` optional, blank lines ignored); errors name the line number
    Parquet     columns prompt, answer and optionally solution; errors name the row (from 1)

Splits, in order of precedence: a `split` field on every row (train, val or test); separate files
(task.val_path and task.test_path: then task.path holds the training rows); else the same prompt
hash as the embedded tasks (80/10/10), so a file can grow without moving old prompts between splits.
Val and test are the split's first distinct prompts in file order; train draws with replacement;
split "all" is every row in file order (`foresight eval --task FILE` scores it).
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Callable
from pathlib import Path

from foresight.errors import UserError
from foresight.tasks.base import SPLITS, Example, Task, check_split, split_of, split_rng
from foresight.tasks.verifiers import make_verifier

TASK_NAME = "jsonl"
PARQUET_SUFFIXES = (".parquet", ".pq")
# With this many distinct prompts, a 10% split is empty with probability 0.9**100 ~ 3e-5.
LINES_FOR_ALL_SPLITS = 100


Row = tuple[str, Example, str | None]  # (where, example, the row's own split or None)


def load_user_task(
    path: Path,
    verifier_spec: str,
    val_path: Path | None = None,
    test_path: Path | None = None,
    fit: Callable[[list[Row]], list[Row]] | None = None,
) -> Task:
    """A `Task` over the rows of a JSONL or Parquet file (or one file per split), checked by the
    verifier `verifier_spec` names; `fit` may refuse, drop or shorten rows (prompts too long for a
    model's context, train/rollout.py `prompt_fit`)."""
    verify = make_verifier(verifier_spec)
    numbered = read_examples(Path(path))
    if val_path is not None and test_path is not None:
        numbered = [(where, example, "train") for where, example, _ in numbered]
        for split, split_path in (("val", val_path), ("test", test_path)):
            numbered += [(w, e, split) for w, e, _ in read_examples(Path(split_path))]
    if fit is not None:
        numbered = fit(numbered)
    if verifier_spec == "number":
        check_numeric_answers(numbered)
    examples = [example for _, example, _ in numbered]
    by_split = split_examples(path, numbered)

    def sample(split: str, n: int, seed: int) -> list[Example]:
        if split == "all":
            return examples[:n]
        check_split(split)
        if split == "train":
            return split_rng(TASK_NAME, split, seed).choices(by_split["train"], k=n)
        return by_split[split][:n]

    texts = (example.prompt + example.solution for example in examples)
    alphabet = "".join(sorted(set("".join(texts))))
    return Task(TASK_NAME, sample, verify, alphabet)


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


def dataset_rows(path: Path, builder: str) -> list[dict]:
    """Rows of `path` through `datasets.load_dataset(builder)`. The Arrow cache goes to a temporary
    folder, dropped once the rows are in memory: an edited file can never hit a stale cache."""
    import datasets  # slow to import; only user-data runs need it

    bars_were_on = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        with tempfile.TemporaryDirectory(prefix="foresight-data-") as cache:
            table = datasets.load_dataset(
                builder, data_files=str(path), split="train", cache_dir=cache
            )
            return table.to_list()
    finally:
        if bars_were_on:
            datasets.enable_progress_bars()


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
    return (
        row.get("prompt") is None or row.get("answer") is None or isinstance(row["answer"], float)
    )


def parquet_examples(path: Path) -> list[Row]:
    try:
        rows = dataset_rows(path, "parquet")
    except read_errors() as exc:
        raise UserError(
            f"Parquet task file {path} could not be read ({type(exc).__name__}); write it with "
            "pandas.DataFrame.to_parquet or datasets.Dataset.to_parquet."
        ) from None
    for key in ("prompt", "answer"):
        if rows and key not in rows[0]:
            raise UserError(
                f"Parquet task file {path} has no '{key}' column; it needs 'prompt' and 'answer'."
            )
    return [
        (f"{path} row {n}", parse_record(f"{path} row {n}", row), row_split(f"{path} row {n}", row))
        for n, row in enumerate(rows, 1)
    ]


def parse_line(where: str, line: str) -> dict:
    """One JSON line -> its object; a line that is not a JSON object is a UserError naming it."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise UserError(f"{where} is not valid JSON ({exc.msg}); fix or delete the line.") from None
    if not isinstance(record, dict):
        raise UserError(f'{where} is not a JSON object; write {{"prompt": ..., "answer": ...}}.')
    return record


def row_split(where: str, record: dict) -> str | None:
    """The row's own `split` field (train, val or test), or None when it has none."""
    split = record.get("split")
    if split is not None and split not in SPLITS:
        raise UserError(f"{where} has split '{split}'; use train, val or test (or drop the field).")
    return split


def parse_record(where: str, record: dict) -> Example:
    """One row -> Example; answers that are numbers become their str()."""
    for key in ("prompt", "answer"):
        if key not in record:
            raise UserError(f"{where} lacks '{key}'; every line needs 'prompt' and 'answer' keys.")
    prompt, answer = record["prompt"], record["answer"]
    solution = record.get("solution")
    solution = "" if solution is None else solution  # datasets reads a missing key as None
    if not isinstance(prompt, str):
        raise UserError(f"{where} has a non-string 'prompt'; write the prompt as a JSON string.")
    # bool is an int subclass, but `true` is almost surely a mistake for an answer.
    if isinstance(answer, bool) or not isinstance(answer, str | int | float):
        raise UserError(f"{where} has an 'answer' that is not a string or number; write one.")
    if not isinstance(solution, str):
        raise UserError(f"{where} has a non-string 'solution'; write it as a string or omit it.")
    return Example(prompt, str(answer), solution)


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


def split_examples(path: Path, numbered: list[Row]) -> dict[str, list[Example]]:
    """Examples per split in file order (each row's own split, when every row has one, else the
    prompt hash); val/test keep the first line of each repeated prompt."""
    given = [split for _, _, split in numbered]
    if any(given) and not all(given):
        where = next(where for where, _, split in numbered if split is None)
        raise UserError(f"{where} has no 'split' while other rows have one; give every row one.")
    by_split: dict[str, list[Example]] = {split: [] for split in SPLITS}
    seen: set[str] = set()
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
