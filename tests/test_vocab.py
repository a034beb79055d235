"""A teacher with another vocabulary, read through model.vocab_map (train --allow-vocab-mismatch):
exact teacher log-probs against a float64 brute-force reference, a 2-step run through the CLI, and
every refusal.

Run: .venv/bin/python -m pytest tests/test_vocab.py -q
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from builders import micro_config, save_micro_model
from test_cli import run_cli

from foresight.config import config_to_yaml
from foresight.errors import UserError
from foresight.log import read_metrics
from foresight.models import check_pair, load_model, load_tokenizer
from foresight.tasks import TASKS
from foresight.train.rollout import sample
from foresight.train.scoring import score_tokens
from foresight.vocab import MappedTeacher

ARITH = TASKS["arith"](None).alphabet
# '!', '"' and '$' sort before the arith characters, so every shared character has another id in
# the teacher's vocabulary, and three teacher tokens have no student counterpart (the tail).
TEACHER_ALPHABET = ARITH + '!"$'


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("vocab")
    student = save_micro_model(root / "student", 0)
    teacher = save_micro_model(root / "teacher", 1, alphabet=TEACHER_ALPHABET, sharpen=30.0)
    student_vocab = load_tokenizer(student, "student").get_vocab()
    teacher_vocab = load_tokenizer(teacher, "teacher").get_vocab()
    by_token = {student_vocab[token]: teacher_vocab[token] for token in student_vocab}
    mapping = [by_token[i] for i in range(len(by_token))]
    assert mapping != list(range(len(mapping)))  # a real permutation, not the identity
    (root / "map.json").write_text(json.dumps(mapping))
    (root / "identity.json").write_text(json.dumps(list(range(len(mapping)))))
    return {"student": student, "teacher": teacher, "map": root / "map.json", "root": root}


def test_teacher_logprobs_through_the_map_match_a_float64_reference(pair):
    tokenizer = load_tokenizer(pair["student"], "student")
    student = load_model(pair["student"], "student").double()
    teacher = load_model(pair["teacher"], "teacher").double()
    student_to_teacher = check_pair(
        tokenizer, load_tokenizer(pair["teacher"], "teacher"), student, teacher, pair["map"]
    )
    rollout = sample(
        student, tokenizer, ["12+3=", "7-2+11=", "5="], 10, 1.0, torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        scores = score_tokens(student, rollout, MappedTeacher(teacher, student_to_teacher))
        teacher_ids = student_to_teacher[rollout.ids]  # (B, T) the same text in teacher ids
        reference_logits = teacher(
            input_ids=teacher_ids,
            attention_mask=rollout.attention_mask,
            position_ids=rollout.position_ids,
        ).logits.double()  # (B, T, V_T)
    reference = (
        torch.log_softmax(reference_logits[:, :-1], dim=-1)
        .gather(-1, teacher_ids[:, 1:, None])
        .squeeze(-1)
    )  # (B, T-1)
    mask = rollout.completion_mask[:, 1:].bool()  # scoring skips positions that predict the prompt
    torch.testing.assert_close(
        scores.teacher_logprobs[mask], reference[mask], rtol=1e-10, atol=1e-10
    )
    # Scoring the student's ids as if they were the teacher's (no map) gives other numbers.
    with torch.no_grad():
        unmapped = score_tokens(student, rollout, teacher).teacher_logprobs
    assert (unmapped[mask] - reference[mask]).abs().max() > 0.1


def write_config(pair, tmp_path: Path, **model) -> Path:
    cfg = micro_config(
        pair["student"],
        pair["teacher"],
        tmp_path / "run",
        model={**model},
        eval={"teacher_kl": False},
    )
    path = tmp_path / "config.yaml"
    path.write_text(config_to_yaml(cfg))
    return path


def test_two_opd_steps_run_with_the_flag_and_a_map(pair, tmp_path, monkeypatch, capsys):
    config = write_config(pair, tmp_path)
    code, _, err = run_cli(
        monkeypatch,
        capsys,
        "train",
        str(config),
        "--allow-vocab-mismatch",
        "--set",
        f"model.vocab_map={pair['map']}",
    )
    assert code == 0, err
    rows = [row for row in read_metrics(tmp_path / "run") if "kl/mean" in row]
    assert len(rows) == 2 and all(torch.isfinite(torch.tensor(r["kl/mean"])) for r in rows)


def test_the_flag_without_a_map_is_refused(pair, tmp_path, monkeypatch, capsys):
    code, _, err = run_cli(
        monkeypatch, capsys, "train", str(write_config(pair, tmp_path)), "--allow-vocab-mismatch"
    )
    assert code == 2
    assert "needs model.vocab_map" in err and "Traceback" not in err


def test_differing_vocabularies_without_the_flag_are_refused(pair, tmp_path, monkeypatch, capsys):
    code, _, err = run_cli(monkeypatch, capsys, "train", str(write_config(pair, tmp_path)))
    assert code == 2
    assert "vocabulary differs" in err and "--allow-vocab-mismatch" in err


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["model.vocab_map=map.json"], "only with --allow-vocab-mismatch"),
        (["loss.kind=reverse_kl"], "loss.kind 'sampled_rkl' only"),
        (["eval.teacher_kl=true"], "eval.teacher_kl: false"),
    ],
)
def test_map_config_refusals(pair, tmp_path, monkeypatch, capsys, sets, message):
    flag = [] if sets[0].startswith("model.vocab_map") else ["--allow-vocab-mismatch"]
    overrides = [f"--set={s}" for s in [f"model.vocab_map={pair['map']}", *sets]]
    code, _, err = run_cli(
        monkeypatch, capsys, "train", str(write_config(pair, tmp_path)), *flag, *overrides
    )
    assert code == 2
    assert message in err


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m[:-1], "maps 19 student ids but the student has 20"),
        (lambda m: [m[0], *m[:-1]], "two student ids to the same teacher id"),
        (lambda m: [*m[:-1], 10_000], "outside [0, 23)"),
        (lambda m: [m[0], m[1], m[3], m[2], *m[4:]], "not to the teacher's EOS"),
        (lambda m: [*m[:4], *m[5:], m[4]], "tokenizer encodes a probe conversation's prompt"),
    ],
)
def test_bad_maps_are_refused(pair, tmp_path, edit, message):
    mapping = json.loads(pair["map"].read_text())
    assert len(mapping) == 20  # the arith alphabet's 16 characters + 4 special tokens
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(edit(mapping)))
    with pytest.raises(UserError, match=re.escape(message)):
        check_pair(
            load_tokenizer(pair["student"], "student"),
            load_tokenizer(pair["teacher"], "teacher"),
            load_model(pair["student"], "student"),
            load_model(pair["teacher"], "teacher"),
            path,
        )


def test_a_map_as_a_json_object_reads_like_the_list(pair, tmp_path):
    mapping = json.loads(pair["map"].read_text())
    path = tmp_path / "object.json"
    path.write_text(json.dumps({str(i): t for i, t in enumerate(mapping)}))
    tokenizers = (
        load_tokenizer(pair["student"], "student"),
        load_tokenizer(pair["teacher"], "teacher"),
    )
    models = (load_model(pair["student"], "student"), load_model(pair["teacher"], "teacher"))
    assert check_pair(*tokenizers, *models, path).tolist() == mapping


def test_the_probe_scorer_checks_the_scored_model_against_the_teacher(micro_pair, tmp_path):
    """task_scorer (the analysis probes' scorer) compares the model it scores with the teacher,
    not the teacher with itself: a teacher with a larger head is refused with a UserError."""
    from foresight.config_sections import TaskConfig
    from foresight.train.evaluate import task_scorer

    wide = load_model(micro_pair[1], "teacher")
    wide.resize_token_embeddings(wide.config.vocab_size + 8)  # the same tokenizer, a larger head
    wide.save_pretrained(tmp_path / "wide")
    load_tokenizer(micro_pair[1], "teacher").save_pretrained(tmp_path / "wide")
    student = load_model(micro_pair[0], "student")
    scorer = task_scorer(TaskConfig(name="arith"), micro_pair[0], 4, tmp_path / "wide", 4)
    with pytest.raises(UserError, match="output vocabulary"):
        scorer(student)
    matching = task_scorer(TaskConfig(name="arith"), micro_pair[0], 4, micro_pair[1], 4)
    assert set(matching(student)) >= {"eval/accuracy", "eval/kl_reverse"}
