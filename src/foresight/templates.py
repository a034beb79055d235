"""Chat templates: render task prompts with a model's own template, and guard teacher/student pairs.

With chat on (model.chat_template: auto and the student's tokenizer has a template, or always), each
prompt becomes one user message rendered by `apply_chat_template(..., add_generation_prompt=True)`;
the template supplies every special token, so no BOS is prepended. Models without a template (the
embedded tiny ones) keep raw prompts with BOS.

The teacher scores the student's token ids as they are. If the teacher's own template would render
the same conversation into other ids, every teacher log-prob is taken out of the teacher's format and
is silently biased, so `check_templates` refuses such a pair.
"""

from __future__ import annotations

from jinja2 import TemplateError
from transformers import PreTrainedTokenizerBase

from foresight.errors import UserError

# The decision is stored on the tokenizer object, so every function that already receives the
# tokenizer (rollout, evaluation, EffOPD validation) encodes prompts the same way.
CHAT_ATTRIBUTE = "foresight_chat"
CHAT_MODES = ("auto", "always", "never")

PROBE_PROMPT = "What is 17 + 25? Answer with the number only."
PROBE_COMPLETION = "42"


def has_template(tokenizer: PreTrainedTokenizerBase) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def set_chat_mode(tokenizer: PreTrainedTokenizerBase, mode: str, role: str) -> None:
    """Decide whether prompts for this tokenizer are rendered with its chat template."""
    if mode == "always" and not has_template(tokenizer):
        raise UserError(
            f"model.chat_template is 'always' but the {role} tokenizer has no chat template; "
            "save one with the tokenizer or set model.chat_template to auto or never."
        )
    setattr(tokenizer, CHAT_ATTRIBUTE, mode != "never" and has_template(tokenizer))


def uses_chat(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether prompts are rendered with the chat template (off unless `set_chat_mode` turned it on)."""
    return bool(getattr(tokenizer, CHAT_ATTRIBUTE, False))


def render(tokenizer: PreTrainedTokenizerBase, prompt: str, completion: str | None = None) -> str:
    """`prompt` as a user turn, then either the assistant header or the assistant's `completion`."""
    messages = [{"role": "user", "content": prompt}]
    if completion is not None:
        messages.append({"role": "assistant", "content": completion})
    try:
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=completion is None
        )
    except TemplateError as exc:
        raise UserError(
            f"The chat template of {tokenizer.name_or_path} fails on a user/assistant conversation "
            f"({exc}); fix the template or set model.chat_template: never."
        ) from None


def encode_chat_prompts(tokenizer: PreTrainedTokenizerBase, prompts: list[str]) -> list[list[int]]:
    """Token ids of each prompt rendered as a chat turn awaiting the assistant's answer."""
    texts = [render(tokenizer, prompt) for prompt in prompts]
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def probe_ids(tokenizer: PreTrainedTokenizerBase) -> tuple[list[int], list[int]]:
    """(prompt ids, ids of the whole conversation with the completion) of the probe conversation."""
    prompt = render(tokenizer, PROBE_PROMPT)
    full = render(tokenizer, PROBE_PROMPT, PROBE_COMPLETION)
    prompt_ids, full_ids = tokenizer([prompt, full], add_special_tokens=False)["input_ids"]
    return prompt_ids, full_ids


def first_difference(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def check_templates(
    student_tokenizer: PreTrainedTokenizerBase, teacher_tokenizer: PreTrainedTokenizerBase
) -> None:
    """Refuse a pair whose templates render the probe conversation into different token ids."""
    student_chat = uses_chat(student_tokenizer)
    if not student_chat:
        if uses_chat(teacher_tokenizer):
            raise UserError(
                "The teacher has a chat template but the student has none, so the teacher would "
                "score raw prompts outside its chat format; give the student the teacher's "
                "template or set model.chat_template: never to use raw prompts on purpose."
            )
        return
    if not has_template(teacher_tokenizer):
        raise UserError(
            "The student's prompts are rendered with its chat template but the teacher has none; "
            "use a teacher with the same template or set model.chat_template: never."
        )
    student_prompt, student_full = probe_ids(student_tokenizer)
    teacher_prompt, teacher_full = probe_ids(teacher_tokenizer)
    if student_full == teacher_full and student_prompt == teacher_prompt:
        return
    part = "prompt" if student_prompt != teacher_prompt else "completion"
    a, b = (student_prompt, teacher_prompt) if part == "prompt" else (student_full, teacher_full)
    at = first_difference(a, b)
    student_piece = student_tokenizer.decode(a[at : at + 8])
    teacher_piece = teacher_tokenizer.decode(b[at : at + 8])
    raise UserError(
        f"The teacher's chat template renders a probe conversation's {part} into other token ids "
        f"than the student's (from token {at}: student {student_piece!r}, teacher "
        f"{teacher_piece!r}), which would bias every teacher log-prob; use models with the same "
        "chat template and tokenizer, or set model.chat_template: never."
    )
