"""Chat-format user rows: `messages` rows and list prompts become conversations (a last assistant
message is the solution), rendered with the student tokenizer's chat template; OPD trains on them;
a tokenizer without a template, and the settings that edit a prompt's text, are refused.

Run: .venv/bin/python -m pytest tests/tasks/test_chat_data.py -q
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from builders import micro_config
from test_templates import ALPHABET, TEMPLATE, with_template

from foresight.config_sections import TaskConfig
from foresight.errors import UserError
from foresight.log import read_metrics
from foresight.models import load_tokenizer
from foresight.tasks import load_task
from foresight.tasks.base import split_of
from foresight.train import loop
from foresight.train.rollout import encode_prompts
from foresight.train.setup import setup

SYSTEM = "Add one."


def chat_record(i: int) -> dict:
    """A `messages` row: system and user turns, then the assistant's worked reply."""
    return {
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": f"{i}+1="},
            {"role": "assistant", "content": f"{i}+1={i + 1}#{i + 1}"},
        ],
        "answer": i + 1,
    }


def write_lines(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


@pytest.fixture(scope="module")
def chat_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("chat")
    return {
        "student": with_template(root / "student", 0, TEMPLATE),
        "teacher": with_template(root / "teacher", 1, TEMPLATE),
        "plain": with_template(root / "plain", 0, None),
    }


@pytest.fixture
def chat_file(tmp_path) -> Path:
    return write_lines(tmp_path / "chat.jsonl", [chat_record(i) for i in range(300)])


def every_example(task) -> dict:
    return {e.prompt: e for split in ("train", "val", "test") for e in task.sample(split, 2000, 0)}


def test_messages_rows_are_conversations_with_the_last_reply_as_solution(chat_file):
    task = load_task(TaskConfig(name="jsonl", path=chat_file))
    conversation = (("system", SYSTEM), ("user", "5+1="))
    example = every_example(task)[conversation]
    assert example.answer == "6" and example.solution == "5+1=6#6"
    for split in ("val", "test", "train"):  # a conversation's split is the hash of its JSON
        assert {split_of(e.prompt) for e in task.sample(split, 50, 0)} == {split}
    assert set(SYSTEM) <= set(task.alphabet) and "[" not in task.alphabet  # contents only


def test_parquet_messages_rows_equal_the_jsonl_ones(chat_file, tmp_path):
    from datasets import Dataset

    parquet = tmp_path / "chat.parquet"
    Dataset.from_list([chat_record(i) for i in range(300)]).to_parquet(str(parquet))
    from_jsonl = load_task(TaskConfig(name="jsonl", path=chat_file))
    from_parquet = load_task(TaskConfig(name="jsonl", path=parquet))
    for split in ("train", "val", "test"):
        assert from_parquet.sample(split, 100, 1) == from_jsonl.sample(split, 100, 1)


def test_list_prompts_and_open_conversations_mix_with_text_rows(tmp_path):
    def turn(role: str, content: str) -> dict:
        return {"role": role, "content": content}

    records = [{"prompt": f"q{i}?", "answer": i} for i in range(300)]
    records[0] = {"prompt": [turn("user", "hi")], "answer": "a", "solution": "s"}
    records[1] = {"messages": [turn("user", "one")], "answer": 1}
    records[2] = {"messages": [turn("user", "x"), turn("assistant", "y"), turn("user", "z")]}
    records[2]["answer"] = 2
    path = write_lines(tmp_path / "mixed.jsonl", records)
    examples = every_example(load_task(TaskConfig(name="jsonl", path=path)))
    assert examples[(("user", "hi"),)].solution == "s"
    assert examples[(("user", "one"),)].solution == ""  # no assistant reply: no solution
    assert examples[(("user", "x"), ("assistant", "y"), ("user", "z"))].answer == "2"
    assert examples["q7?"].answer == "7"


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"messages": "hi", "answer": 1}, "'messages' that is not a non-empty list of messages"),
        ({"messages": [], "answer": 1}, "'messages' that is not a non-empty list of messages"),
        ({"messages": [{"role": "user"}], "answer": 1}, "'messages' message 1 without a string"),
        ({"prompt": [{"role": "user", "content": 3}], "answer": 1}, "'prompt' message 1"),
        ({"prompt": "p", "messages": [{"role": "user", "content": "p"}], "answer": 1}, "both"),
        ({"messages": [{"role": "assistant", "content": "a"}], "answer": 1}, "only the assistant"),
        ({**chat_record(0), "solution": "s"}, "keep one of them as the reference solution"),
        ({"messages": [{"role": "user", "content": "p"}]}, "lacks 'answer'"),
    ],
)
def test_bad_chat_rows_name_their_line(tmp_path, record, message):
    records = [chat_record(i) for i in range(300)]
    records[3] = record
    path = write_lines(tmp_path / "chat.jsonl", records)
    with pytest.raises(UserError, match=f"chat.jsonl line 4 .*{message}"):
        load_task(TaskConfig(name="jsonl", path=path))


def test_conversation_is_rendered_with_the_student_template(chat_models):
    tokenizer = load_tokenizer(chat_models["student"], "student")
    conversation = (("system", SYSTEM), ("user", "5+1="))
    # TEMPLATE writes "|role: content\n" per message, then the assistant's header.
    expected = f"|system: {SYSTEM}\n|user: 5+1=\n|assistant: "
    assert encode_prompts(tokenizer, [conversation]) == [
        tokenizer(expected, add_special_tokens=False)["input_ids"]
    ]


@pytest.mark.parametrize(
    ("model", "chat_template", "why"),
    [
        ("plain", "auto", "it has none; use a model whose tokenizer has a chat template"),
        ("student", "never", "model.chat_template is never; set model.chat_template to auto"),
    ],
)
def test_conversations_need_the_chat_template(
    chat_models, chat_file, tmp_path, model, chat_template, why
):
    folder = chat_models[model]
    task = {"name": "jsonl", "path": str(chat_file)}
    cfg = micro_config(
        folder, folder, tmp_path / "run", model={"chat_template": chat_template}, task=task
    )
    with pytest.raises(UserError, match=f"chat template can render, but {why}, or write"):
        setup(cfg)


@pytest.mark.parametrize(
    ("task", "message"),
    [
        ({"too_long": "truncate_left"}, "task.too_long truncate_left cuts a text prompt's start"),
        ({"teacher_prompt_template": "Hint. {prompt}"}, "task.teacher_prompt_template wraps"),
    ],
)
def test_settings_that_edit_prompt_text_refuse_conversations(chat_file, task, message):
    with pytest.raises(UserError, match=f"{message}.*chat.jsonl line 1 is a conversation"):
        load_task(TaskConfig(name="jsonl", path=chat_file, **task))


def test_opd_trains_two_steps_on_a_messages_file(chat_models, chat_file, tmp_path, monkeypatch):
    seen = []  # (examples, batch, tokenizer) of every step's rollout
    student_batch = loop.student_batch

    def spy(student, tokenizer, task, examples, cfg, seed):
        batch = student_batch(student, tokenizer, task, examples, cfg, seed)
        seen.append((examples, batch, tokenizer))
        return batch

    monkeypatch.setattr(loop, "student_batch", spy)
    cfg = micro_config(
        chat_models["student"],
        chat_models["teacher"],
        tmp_path / "run",
        task={"name": "jsonl", "path": str(chat_file)},
    )
    loop.train(cfg)
    rows = [row for row in read_metrics(tmp_path / "run") if "loss" in row]
    assert [row["step"] for row in rows] == [1, 2]
    assert all(row["kl/mean"] > 0 and 0 <= row["reward/mean"] <= 1 for row in rows)
    assert (tmp_path / "run" / "checkpoints" / "step-000002" / "model.safetensors").is_file()
    examples, batch, tokenizer = seen[0]
    width = batch.rollout.prompt_width
    ids, real = batch.rollout.ids[0, :width], batch.rollout.attention_mask[0, :width].bool()
    first_prompt = ids[real].tolist()  # the left padding dropped
    assert first_prompt == encode_prompts(tokenizer, [examples[0].prompt])[0]
    assert tokenizer.decode(first_prompt).startswith(f"|system: {SYSTEM}\n|user: ")
    assert set(ALPHABET) >= set(SYSTEM)  # the template's micro tokenizer spells every turn
