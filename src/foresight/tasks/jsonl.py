"""User tasks from a JSONL file: one {"prompt": str, "answer": str | number, "solution": str} object
per line (`solution` optional, blank lines ignored).

Lines are split by the same prompt hash as the embedded tasks (80/10/10), so a file can grow without
moving old prompts between splits. Val and test are the split's first distinct prompts in file
order; train draws with replacement.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from foresight.errors import UserError
from foresight.tasks.base import SPLITS, Example, Task, check_split, split_of, split_rng
from foresight.tasks.verifiers import make_verifier

TASK_NAME = "jsonl"
# With this many distinct prompts, a 10% split is empty with probability 0.9**100 ~ 3e-5.
LINES_FOR_ALL_SPLITS = 100


def load_jsonl_task(path: Path, verifier_spec: str) -> Task:
    """A `Task` over the lines of a JSONL file, checked by the verifier `verifier_spec` names."""
    verify = make_verifier(verifier_spec)
    numbered = read_examples(Path(path))
    if verifier_spec == "number":
        check_numeric_answers(path, numbered)
    examples = [example for _, example in numbered]
    by_split = split_examples(path, examples)

    def sample(split: str, n: int, seed: int) -> list[Example]:
        check_split(split)
        if split == "train":
            return split_rng(TASK_NAME, split, seed).choices(by_split["train"], k=n)
        return by_split[split][:n]

    texts = (example.prompt + example.solution for example in examples)
    alphabet = "".join(sorted(set("".join(texts))))
    return Task(TASK_NAME, sample, verify, alphabet)


def read_examples(path: Path) -> list[tuple[int, Example]]:
    """(line number, example) for every non-blank line; any malformed line is a UserError."""
    if not path.is_file():
        raise UserError(f"JSONL task file {path} does not exist; set task.path to a JSONL file.")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise UserError(f"JSONL task file {path} is not UTF-8 text; re-save it as UTF-8.") from None
    numbered = [
        (number, parse_line(path, number, line))
        for number, line in enumerate(lines, start=1)
        if line.strip()
    ]
    if not numbered:
        raise UserError(f"JSONL task file {path} has no examples; add one JSON object per line.")
    return numbered


def parse_line(path: Path, number: int, line: str) -> Example:
    """One line -> Example; answers that are JSON numbers become their str()."""
    where = f"{path} line {number}"
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise UserError(f"{where} is not valid JSON ({exc.msg}); fix or delete the line.") from None
    if not isinstance(record, dict):
        raise UserError(f'{where} is not a JSON object; write {{"prompt": ..., "answer": ...}}.')
    for key in ("prompt", "answer"):
        if key not in record:
            raise UserError(f"{where} lacks '{key}'; every line needs 'prompt' and 'answer' keys.")
    prompt, answer, solution = record["prompt"], record["answer"], record.get("solution", "")
    if not isinstance(prompt, str):
        raise UserError(f"{where} has a non-string 'prompt'; write the prompt as a JSON string.")
    # bool is an int subclass, but `true` is almost surely a mistake for an answer.
    if isinstance(answer, bool) or not isinstance(answer, str | int | float):
        raise UserError(f"{where} has an 'answer' that is not a string or number; write one.")
    if not isinstance(solution, str):
        raise UserError(f"{where} has a non-string 'solution'; write it as a string or omit it.")
    return Example(prompt, str(answer), solution)


def check_numeric_answers(path: Path, numbered: list[tuple[int, Example]]) -> None:
    """The `number` verifier compares floats, so every answer must parse as a finite number."""
    for number, example in numbered:
        try:
            value = float(example.answer)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise UserError(
                f"{path} line {number} has answer '{example.answer}', which is not a number; "
                "fix it or use task.verifier=exact."
            )


def split_examples(path: Path, examples: list[Example]) -> dict[str, list[Example]]:
    """Examples per split in file order; val/test keep the first line of each repeated prompt."""
    by_split: dict[str, list[Example]] = {split: [] for split in SPLITS}
    seen: set[str] = set()
    for example in examples:
        split = split_of(example.prompt)
        if split != "train" and example.prompt in seen:
            continue
        seen.add(example.prompt)
        by_split[split].append(example)
    for split, members in by_split.items():
        if not members:
            raise UserError(
                f"JSONL task file {path} has no prompts in its '{split}' split (a hash of each "
                f"prompt sends 10% to val and 10% to test), so add lines until it has about "
                f"{LINES_FOR_ALL_SPLITS} distinct prompts."
            )
    return by_split
