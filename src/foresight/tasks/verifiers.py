"""Verifiers and reward functions for user tasks, picked by name from `task.verifier`.

    exact                    the final answer text equals answer.strip()
    number                   the last number in the completion equals float(answer) within 1e-6
    math                     the last \\boxed{...} in the completion equals the answer mathematically
                             (math-verify: 1/2, \\frac12, 0.5 and \\dfrac{1}{2} all match)
    python:module:function   function(completion: str, answer: str) -> bool | float from an
                             importable module: True/False count as 1/0, a float is the reward

The first three are pass/fail (True = reward 1). A python function may return any finite number:
RL (GRPO) uses it as the completion's reward, evaluation reports its mean as `eval/accuracy` (the
accuracy when it is 0/1), EffOPD's accuracy signal is that mean too, and SFT on verified teacher
samples keeps those with a reward above 0. It gets the row's answer string (the same signature for
every verifier; a function that needs more, such as unit tests, reads them from `answer` written as
JSON text); a None, a string or a non-finite value is a UserError naming the function.

The final answer text is what follows the last '#' when the completion has one (the embedded
tasks' convention), else its last non-empty line; stripped either way.
"""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Callable

from foresight.errors import UserError
from foresight.tasks.base import ANSWER_MARK

Verifier = Callable[[str, str], bool | float]  # (completion, answer) -> reward
# Ints, decimals ("3.", ".5") and exponents, each with an optional minus sign.
NUMBER_PATTERN = re.compile(r"-?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")
NUMBER_TOLERANCE = 1e-6
PYTHON_PREFIX = "python:"


def final_answer_text(completion: str) -> str:
    """Text after the last '#', else the last non-empty line; stripped."""
    if ANSWER_MARK in completion:
        return completion.rsplit(ANSWER_MARK, 1)[1].strip()
    lines = [line for line in completion.splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def verify_exact(completion: str, answer: str) -> bool:
    """The final answer text equals the stripped answer."""
    return final_answer_text(completion) == answer.strip()


def verify_number(completion: str, answer: str) -> bool:
    """The last number anywhere in the completion equals float(answer) within 1e-6 (rel or abs)."""
    numbers = NUMBER_PATTERN.findall(completion)
    if not numbers:
        return False
    return math.isclose(
        float(numbers[-1]), float(answer), rel_tol=NUMBER_TOLERANCE, abs_tol=NUMBER_TOLERANCE
    )


BOXED = "\\boxed{"


def last_boxed(completion: str) -> str | None:
    """The contents of the last \\boxed{...} (braces balanced), or None when there is none or it is
    never closed. A regex cannot match nested braces such as \\boxed{\\frac{1}{2}}."""
    start = completion.rfind(BOXED)
    if start < 0:
        return None
    depth, begin = 1, start + len(BOXED)
    for index in range(begin, len(completion)):
        depth += {"{": 1, "}": -1}.get(completion[index], 0)
        if depth == 0:
            return completion[begin:index]
    return None


def verify_math(completion: str, answer: str) -> bool:
    """The last \\boxed{} answer equals `answer` as mathematics (math-verify's parse + verify).

    Only the boxed text is parsed, so a completion that never boxes its answer is wrong even when
    the right number appears in it: the verifier checks the answer format too.
    """
    from math_verify import LatexExtractionConfig, parse, verify  # sympy: slow to import

    boxed = last_boxed(completion)
    if boxed is None or not boxed.strip():
        return False
    predicted = parse(BOXED + boxed + "}", extraction_config=[LatexExtractionConfig()])
    # The answer may be plain ("0.5") or LaTeX ("\\frac{1}{2}"): the default config reads both.
    gold = parse(answer if BOXED in answer else f"${answer}$")
    return bool(predicted) and bool(gold) and verify(gold, predicted)


VERIFIERS: dict[str, Verifier] = {
    "exact": verify_exact,
    "number": verify_number,
    "math": verify_math,
}


def make_verifier(spec: str) -> Verifier:
    """The verifier named by `spec`: exact, number, math or python:module:function (a reward)."""
    if spec in VERIFIERS:
        return VERIFIERS[spec]
    if spec.startswith(PYTHON_PREFIX):
        return import_verifier(spec)
    raise UserError(
        f"task.verifier '{spec}' is not known; use exact, number, math or python:module:function."
    )


def import_verifier(spec: str) -> Verifier:
    """Import `function` from `module` for a 'python:module:function' spec."""
    parts = spec.split(":")
    if len(parts) != 3 or not parts[1] or not parts[2]:
        raise UserError(
            f"task.verifier '{spec}' is malformed; write it as python:module:function "
            "(e.g. python:my_checks:is_correct)."
        )
    _, module_name, function_name = parts
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UserError(
            f"task.verifier module '{module_name}' cannot be imported ({exc}); put it on "
            "PYTHONPATH (e.g. PYTHONPATH=. when it sits in the current folder)."
        ) from None
    try:
        function = getattr(module, function_name)
    except AttributeError:
        raise UserError(
            f"task.verifier module '{module_name}' has no function '{function_name}'; "
            "define it as function(completion, answer) -> bool or float, or fix the name."
        ) from None
    if not callable(function):
        raise UserError(
            f"task.verifier '{module_name}.{function_name}' is not callable; point it at a "
            "function(completion, answer) -> bool or float."
        )

    def verify_python(completion: str, answer: str) -> float:
        return reward_value(function(completion, answer), spec)

    return verify_python


def reward_value(value: object, spec: str) -> float:
    """A reward function's result as a float: bools, ints, floats and numpy or 0-d torch scalars
    pass; None, strings and what float() refuses, and NaN or infinity, are a UserError."""
    number = math.nan
    if value is not None and not isinstance(value, str | bytes):
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
    if not math.isfinite(number):
        raise UserError(
            f"task.verifier '{spec}' returned {value!r:.60} for a completion, not a finite "
            "number; return a bool or a finite float."
        )
    return number
