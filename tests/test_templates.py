"""Chat templates: prompts rendered with the student's template, and the guard that refuses a teacher
whose template renders the same conversation into other token ids.

Run: .venv/bin/python -m pytest tests/test_templates.py -q
"""

from __future__ import annotations

import string
from pathlib import Path

import pytest
from builders import micro_config, save_micro_model
from test_cli import run_cli
from transformers import AutoTokenizer

from foresight.config import config_to_yaml
from foresight.errors import UserError
from foresight.models import load_tokenizer
from foresight.templates import check_templates, render, set_chat_mode
from foresight.train.rollout import encode_prompts
from foresight.train.setup import setup

ALPHABET = string.ascii_letters + string.digits + " #*+,-=?.|:\n"
TEMPLATE = (
    "{% for m in messages %}|{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}|assistant: {% endif %}"
)
# Differs only in the header of the assistant's turn (so in the rendered prompt).
OTHER_TEMPLATE = TEMPLATE.replace("|assistant: ", "|assistant:\n")
# Renders prompts alike, but ends the assistant's answer with a period (the completion differs).
OTHER_COMPLETION_TEMPLATE = TEMPLATE.replace(
    "{{ m['content'] }}", "{{ m['content'] ~ ('.' if m['role'] == 'assistant' else '') }}"
)


def with_template(folder: Path, seed: int, template: str | None) -> Path:
    save_micro_model(folder, seed, ALPHABET, sharpen=1.0 + 29.0 * seed)
    if template is not None:
        tokenizer = AutoTokenizer.from_pretrained(folder)
        tokenizer.chat_template = template
        tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def templated(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("templated")
    return {
        "student": with_template(root / "student", 0, TEMPLATE),
        "teacher": with_template(root / "teacher", 1, TEMPLATE),
        "other": with_template(root / "other", 1, OTHER_TEMPLATE),
        "other_completion": with_template(root / "other_completion", 1, OTHER_COMPLETION_TEMPLATE),
        "plain": with_template(root / "plain", 1, None),
    }


def test_matching_template_is_accepted_and_mismatching_one_refused(templated, tmp_path):
    cfg = micro_config(templated["student"], templated["teacher"], tmp_path / "run")
    trainer = setup(cfg)  # no error: both render the probe conversation into the same ids
    assert trainer.teacher is not None

    for name, part in (("other", "prompt"), ("other_completion", "completion")):
        cfg = micro_config(templated["student"], templated[name], tmp_path / "run")
        with pytest.raises(
            UserError, match=f"teacher's chat template renders a probe conversation's {part}"
        ):
            setup(cfg)


def test_mismatching_template_exits_2_through_the_cli(templated, tmp_path, monkeypatch, capsys):
    cfg = micro_config(templated["student"], templated["other"], tmp_path / "run")
    path = tmp_path / "config.yaml"
    path.write_text(config_to_yaml(cfg))
    code, _, err = run_cli(monkeypatch, capsys, "train", str(path))
    assert code == 2
    assert "chat template" in err and "model.chat_template: never" in err
    assert "Traceback" not in err
    assert not (tmp_path / "run").exists()  # refused before the run folder is made


def test_never_uses_raw_prompts_so_templates_are_not_compared(templated, tmp_path):
    cfg = micro_config(
        templated["student"],
        templated["other"],
        tmp_path / "run",
        model={"chat_template": "never"},
    )
    assert setup(cfg).teacher is not None


def test_one_sided_templates_are_refused(templated):
    student = load_tokenizer(templated["student"], "student")
    plain = load_tokenizer(templated["plain"], "teacher")
    with pytest.raises(UserError, match="the teacher has none"):
        check_templates(student, plain)
    plain_student = load_tokenizer(templated["plain"], "student")
    teacher = load_tokenizer(templated["teacher"], "teacher")
    with pytest.raises(UserError, match="the student has none"):
        check_templates(plain_student, teacher)
    check_templates(
        load_tokenizer(templated["plain"], "student", "never"),
        load_tokenizer(templated["teacher"], "teacher", "never"),
    )


def test_chat_prompts_are_rendered_without_an_extra_bos(templated):
    prompts = ["12+3=", "7-2+1="]
    chat = load_tokenizer(templated["student"], "student")
    expected = [chat(render(chat, p), add_special_tokens=False)["input_ids"] for p in prompts]
    assert encode_prompts(chat, prompts) == expected
    assert chat.decode(expected[0]) == "|user: 12+3=\n|assistant: "

    raw = load_tokenizer(templated["student"], "student", "never")
    bos = raw.bos_token_id
    assert encode_prompts(raw, prompts) == [
        [bos] + raw(p, add_special_tokens=False)["input_ids"] for p in prompts
    ]


def test_always_without_a_template_is_refused(templated):
    with pytest.raises(UserError, match="has no chat template"):
        load_tokenizer(templated["plain"], "student", "always")


@pytest.mark.slow
def test_smollm2_with_a_changed_system_prompt_is_refused(smollm2_dir):
    student = load_tokenizer(smollm2_dir, "student")
    check_templates(student, load_tokenizer(smollm2_dir, "teacher"))  # same model: accepted

    changed = AutoTokenizer.from_pretrained(smollm2_dir)
    changed.chat_template = changed.chat_template.replace("named SmolLM", "named Teacher")
    set_chat_mode(changed, "auto", "teacher")
    with pytest.raises(UserError, match="probe conversation's prompt"):
        check_templates(student, changed)
