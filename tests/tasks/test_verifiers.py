"""Tests of the user-task verifiers: exact, number, math and python:module:function.

Run: .venv/bin/python -m pytest tests/tasks -q
"""

from __future__ import annotations

import pytest

from foresight.errors import UserError
from foresight.tasks.verifiers import final_answer_text, last_boxed, make_verifier


def test_final_answer_text_prefers_the_last_mark_then_the_last_line():
    assert final_answer_text("1+2=3#3") == "3"
    assert final_answer_text("a#b# 42 \n") == "42"
    assert final_answer_text("work\nmore work\n  17  \n\n") == "17"
    assert final_answer_text("") == ""


def test_exact():
    verify = make_verifier("exact")
    assert verify("steps#Paris", " Paris\n")
    assert verify("thinking\nParis", "Paris")
    assert not verify("steps#Paris!", "Paris")
    assert not verify("Paris\nsteps", "Paris")


def test_number():
    verify = make_verifier("number")
    assert verify("so x = 3 and the answer is 42", "42")
    assert verify("#42.0000000001", "42")
    assert verify("it is -7.5", "-7.5")
    assert verify("1e3", "1000")
    assert verify("1+2=3#3", "3.0")
    assert not verify("42 then 43", "42")
    assert not verify("no digits here", "0")
    assert not verify("-3", "3")
    assert not verify("42.001", "42")


def test_python_verifier(tmp_path, monkeypatch):
    (tmp_path / "user_checks.py").write_text(
        "def lenient(completion, answer):\n"
        "    return int(answer.lower() in completion.lower())\n"
        "def share(completion, answer):\n"
        "    return sum(c in completion for c in answer) / len(answer)\n"
        "def echo(completion, answer):\n"
        "    return eval(completion)\n"
        "NOT_A_FUNCTION = 3\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    verify = make_verifier("python:user_checks:lenient")
    assert verify("The answer is PARIS", "paris") == 1.0
    assert verify("London", "paris") == 0.0
    assert make_verifier("python:user_checks:share")("pa", "paris") == 2 / 5  # a float reward
    echo = make_verifier("python:user_checks:echo")  # returns what the completion evaluates to
    assert echo("True", "") == 1.0 and echo("-2", "") == -2.0
    for returned in ("None", "'1'", "float('nan')", "float('inf')", "[1.0]"):
        with pytest.raises(UserError, match=r"python:user_checks:echo' returned .* finite float"):
            echo(returned, "")
    with pytest.raises(UserError, match="has no function 'missing'"):
        make_verifier("python:user_checks:missing")
    with pytest.raises(UserError, match="not callable"):
        make_verifier("python:user_checks:NOT_A_FUNCTION")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("fuzzy", "is not known; use exact, number, math or python:module:function"),
        ("python:only_module", "malformed; write it as python:module:function"),
        ("python::f", "malformed"),
        ("python:no_such_module_xyz:f", "cannot be imported .*PYTHONPATH"),
    ],
)
def test_bad_verifier_specs_raise_user_errors(spec, message):
    with pytest.raises(UserError, match=message):
        make_verifier(spec)


def test_last_boxed_balances_braces():
    assert last_boxed(r"\boxed{1} then \boxed{\frac{1}{2}} end") == r"\frac{1}{2}"
    assert last_boxed(r"no box") is None
    assert last_boxed(r"\boxed{\frac{1}{2}") is None  # never closed


@pytest.mark.parametrize(
    ("completion", "answer"),
    [
        (r"so \boxed{\frac12}", "0.5"),
        (r"\boxed{\dfrac{1}{2}}", r"\frac{1}{2}"),
        (r"first \boxed{3}, finally \boxed{1/2}", "0.5"),
        (r"\boxed{x + 1}", "1+x"),
        (r"\boxed{2}", "2.0"),
    ],
)
def test_math_accepts_equal_boxed_answers(completion, answer):
    assert make_verifier("math")(completion, answer)


@pytest.mark.parametrize(
    ("completion", "answer"),
    [
        (r"\boxed{0.6}", "0.5"),  # wrong
        ("the answer is 0.5", "0.5"),  # right number, never boxed
        (r"\boxed{}", "0.5"),  # empty box
        (r"\boxed{1/2", "0.5"),  # box never closed
        (r"\boxed{1/2} but then \boxed{3}", "0.5"),  # only the last box counts
    ],
)
def test_math_rejects_wrong_or_missing_boxed_answers(completion, answer):
    assert not make_verifier("math")(completion, answer)
