"""Tests of user tasks from JSONL and Parquet files (read through `datasets`): loading, splits,
sampling, alphabet and every bad-input error.

Run: .venv/bin/python -m pytest tests/tasks -q
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from datasets import Dataset

from foresight.config_sections import TaskConfig
from foresight.errors import UserError
from foresight.tasks import load_task
from foresight.tasks.base import split_of


def write_lines(path: Path, records: list[object]) -> Path:
    path.write_text("\n".join(json.dumps(record) for record in records) + "\n")
    return path


def question_records(n: int) -> list[dict]:
    return [{"prompt": f"q{i}?", "answer": i, "solution": f"think {i}#{i}"} for i in range(n)]


@pytest.fixture
def data_path(tmp_path: Path) -> Path:
    return write_lines(tmp_path / "data.jsonl", question_records(300))


def load(path: Path, verifier: str = "exact"):
    return load_task(TaskConfig(name="jsonl", path=path, verifier=verifier))


def test_loads_splits_by_hash_and_samples(data_path):
    task = load(data_path)
    val, test = task.sample("val", 1000, 0), task.sample("test", 1000, 0)
    train = task.sample("train", 500, 0)
    assert 0 < len(val) < 300 and 0 < len(test) < 300
    for split, examples in (("val", val), ("test", test), ("train", train)):
        assert {split_of(example.prompt) for example in examples} == {split}
    assert len(train) == 500
    expected_val = [r["prompt"] for r in question_records(300) if split_of(r["prompt"]) == "val"]
    assert [example.prompt for example in val] == expected_val  # file order
    assert task.sample("val", 3, 9) == val[:3]
    assert task.sample("train", 50, 1) == task.sample("train", 50, 1)
    assert task.sample("train", 50, 1) != task.sample("train", 50, 2)


def test_answers_become_strings_and_solutions_are_optional(tmp_path):
    records = question_records(300)
    records[0] = {"prompt": "x", "answer": 2.5}
    records.append({"prompt": "y", "answer": "  text "})
    task = load(write_lines(tmp_path / "data.jsonl", records))
    examples = {
        example.prompt: example
        for split in ("train", "val", "test")
        for example in task.sample(split, 2000, 0)
    }
    assert examples["x"].answer == "2.5" and examples["x"].solution == ""
    assert examples["y"].answer == "  text "
    assert examples["q5?"].answer == "5"


def test_blank_lines_are_ignored_and_val_test_are_distinct(tmp_path):
    records = question_records(300)
    text = "\n\n".join(json.dumps(record) for record in records + records) + "\n\n  \n"
    path = tmp_path / "data.jsonl"
    path.write_text(text)
    task = load(path)
    for split in ("val", "test"):
        prompts = [example.prompt for example in task.sample(split, 1000, 0)]
        assert len(prompts) == len(set(prompts))


def test_alphabet_is_every_char_of_prompts_and_solutions(tmp_path):
    records = question_records(300) + [{"prompt": "é!", "answer": "Z"}]
    task = load(write_lines(tmp_path / "data.jsonl", records))
    texts = "".join(r["prompt"] + r.get("solution", "") for r in records)
    assert task.alphabet == "".join(sorted(set(texts)))
    assert "Z" not in task.alphabet


def test_verifier_is_chosen_by_name(data_path):
    assert load(data_path, "exact").verify("think#7", "7")
    assert not load(data_path, "exact").verify("think#7.0", "7")
    assert load(data_path, "number").verify("think#7.0", "7")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", r"line 3 is not valid JSON"),
        ('["prompt", "answer"]', r"line 3 is not a JSON object"),
        ('{"answer": 1}', r"line 3 lacks 'prompt'"),
        ('{"prompt": "p"}', r"line 3 lacks 'answer'"),
        ('{"prompt": 5, "answer": 1}', r"line 3 has a non-string 'prompt'"),
        ('{"prompt": "p", "answer": null}', r"line 3 has an 'answer' that is not"),
        ('{"prompt": "p", "answer": true}', r"line 3 has an 'answer' that is not"),
        ('{"prompt": "p", "answer": 1, "solution": 2}', r"line 3 has a non-string 'solution'"),
    ],
)
def test_bad_lines_name_their_line_number(tmp_path, line, message):
    good = [json.dumps(record) for record in question_records(300)]
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join([good[0], "", line, *good[1:]]) + "\n")
    with pytest.raises(UserError, match=message):
        load(path)


def test_missing_empty_and_tiny_files_raise(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load(tmp_path / "absent.jsonl")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(UserError, match="has no examples"):
        load(empty)
    tiny = write_lines(tmp_path / "tiny.jsonl", question_records(3))
    with pytest.raises(UserError, match=r"tiny.jsonl has no prompts in its '\w+' split.*about 100"):
        load(tiny)


def test_number_verifier_needs_numeric_answers(tmp_path):
    records = question_records(300)
    records[4] = {"prompt": "p", "answer": "four"}
    path = write_lines(tmp_path / "data.jsonl", records)
    with pytest.raises(UserError, match="line 5 has answer 'four', which is not a number"):
        load(path, "number")
    assert load(path, "exact").name == "jsonl"


def test_bad_verifier_spec_raises(data_path):
    with pytest.raises(UserError, match="is not known"):
        load(data_path, "fuzzy")


def write_parquet(path: Path, records: list[dict]) -> Path:
    Dataset.from_list(records).to_parquet(str(path))
    return path


def test_parquet_round_trip_equals_jsonl(tmp_path):
    records = question_records(300)
    from_jsonl = load(write_lines(tmp_path / "data.jsonl", records))
    from_parquet = load(write_parquet(tmp_path / "data.parquet", records))
    for split, n in (("train", 200), ("val", 1000), ("test", 1000)):
        assert from_parquet.sample(split, n, 3) == from_jsonl.sample(split, n, 3)
    assert from_parquet.alphabet == from_jsonl.alphabet


def test_parquet_without_solution_column_and_with_float_answers(tmp_path):
    records = [{"prompt": f"half of {i}?", "answer": i / 2} for i in range(300)]
    task = load(write_parquet(tmp_path / "data.pq", records), "math")
    example = task.sample("val", 1, 0)[0]
    assert example.solution == "" and float(example.answer) * 2 == int(example.prompt[8:-1])
    assert task.verify(r"\boxed{\frac{3}{2}}", "1.5")


def test_int_answers_stay_ints_beside_floats_in_jsonl(tmp_path):
    # datasets reads a column of ints and floats as floats; the exact verifier must still see '5'.
    records = question_records(300)
    records[0] = {"prompt": "x", "answer": 2.5}
    task = load(write_lines(tmp_path / "data.jsonl", records))
    examples = {e.prompt: e for split in SPLIT_NAMES for e in task.sample(split, 2000, 0)}
    assert examples["q5?"].answer == "5" and examples["x"].answer == "2.5"


SPLIT_NAMES = ("train", "val", "test")


@pytest.mark.parametrize(
    ("records", "message"),
    [
        ([{"question": "p", "answer": 1}], r"data.parquet has no 'prompt' column"),
        ([{"prompt": "p", "answer": None}], r"data.parquet row 1 has an 'answer' that is not"),
        ([{"prompt": "p", "answer": True}], r"data.parquet row 1 has an 'answer' that is not"),
    ],
)
def test_bad_parquet_rows_name_the_problem(tmp_path, records, message):
    with pytest.raises(UserError, match=message):
        load(write_parquet(tmp_path / "data.parquet", records))


def test_a_file_that_is_not_parquet_raises(tmp_path):
    path = tmp_path / "data.parquet"
    path.write_text('{"prompt": "p", "answer": 1}\n')
    with pytest.raises(UserError, match="could not be read"):
        load(path)


def test_bad_files_exit_2_from_the_cli(tmp_path, monkeypatch, capsys):
    from foresight.cli import main

    path = tmp_path / "data.parquet"
    path.write_bytes(b"PAR1 not really")
    monkeypatch.setattr(
        sys, "argv", ["foresight", "eval", "models/arith/base", "--task", str(path)]
    )
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 2
    assert "could not be read" in capsys.readouterr().err


def test_mixed_answer_types_with_blank_lines_still_load(tmp_path):
    # datasets' JSON reader rejects this valid file (mixed types + blank lines): read line by line.
    records = question_records(300)
    records[0] = {"prompt": "x", "answer": 2.5}
    records[1] = {"prompt": "y", "answer": "text"}
    dense = load(write_lines(tmp_path / "dense.jsonl", records))
    sparse_path = tmp_path / "sparse.jsonl"
    sparse_path.write_text("\n\n".join(json.dumps(record) for record in records) + "\n")
    sparse = load(sparse_path)
    for split in SPLIT_NAMES:
        assert sparse.sample(split, 500, 4) == dense.sample(split, 500, 4)
