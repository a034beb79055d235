"""Chat templates: render task prompts with a model's own template, and guard teacher/student pairs.

With chat on (model.chat_template: auto and the student's tokenizer has a template, or always), each
text prompt becomes one user message, and a conversation prompt (a user task's `messages` or list
`prompt`, tasks/records.py) is its own messages, rendered by
`apply_chat_template(..., add_generation_prompt=True)`; the template supplies every special token,
so no BOS is prepended. Models without a template (the embedded tiny ones) keep raw text prompts
with BOS, and refuse conversations (`check_text_prompts`).

The teacher scores the student's token ids as they are. If the teacher's own template would render
the same conversation into other ids, every teacher log-prob is taken out of the teacher's format and
is silently biased, so `check_templates` refuses such a pair.
"""

from __future__ import annotations

from jinja2 import TemplateError
from transformers import PreTrainedTokenizerBase

from foresight.errors import UserError
from foresight.tasks.base import Prompt

# The decision is stored on the tokenizer object, so every function that already receives the
# tokenizer (rollout, evaluation, EffOPD validation) encodes prompts the same way.
CHAT_ATTRIBUTE = "foresight_chat"
STOP_ATTRIBUTE = "foresight_stop_ids"
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


def render(
    tokenizer: PreTrainedTokenizerBase, prompt: Prompt, completion: str | None = None
) -> str:
    """`prompt` as a user turn (or its own turns), then either the assistant header or the
    assistant's `completion`."""
    if isinstance(prompt, str):
        messages = [{"role": "user", "content": prompt}]
    else:
        messages = [{"role": role, "content": content} for role, content in prompt]
    if completion is not None:
        messages.append({"role": "assistant", "content": completion})
    try:
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=completion is None
        )
    except TemplateError as exc:
        roles = "/".join(dict.fromkeys(message["role"] for message in messages))
        raise UserError(
            f"The chat template of {tokenizer.name_or_path} fails on a {roles} conversation "
            f"({exc}); fix the template or set model.chat_template: never."
        ) from None


def encode_chat_prompts(
    tokenizer: PreTrainedTokenizerBase, prompts: list[Prompt]
) -> list[list[int]]:
    """Token ids of each prompt rendered as a chat turn awaiting the assistant's answer."""
    texts = [render(tokenizer, prompt) for prompt in prompts]
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def check_text_prompts(tokenizer: PreTrainedTokenizerBase, prompts: list[Prompt]) -> None:
    """Refuse conversation prompts when chat is off: only a chat template can render them."""
    if all(isinstance(prompt, str) for prompt in prompts):
        return
    if has_template(tokenizer):
        why, fix = "model.chat_template is never", "set model.chat_template to auto"
    else:
        why, fix = "it has none", "use a model whose tokenizer has a chat template"
    raise UserError(
        "The task's prompts are conversations (messages), which only the student tokenizer's "
        f"chat template can render, but {why}; {fix}, or write each prompt as a string."
    )


def probe_ids(tokenizer: PreTrainedTokenizerBase) -> tuple[list[int], list[int]]:
    """(prompt ids, ids of prompt + completion) of the probe conversation, as the trainer encodes
    them: rendered with the chat template when chat is on, else raw text after BOS."""
    if uses_chat(tokenizer):
        texts = [render(tokenizer, PROBE_PROMPT), render(tokenizer, PROBE_PROMPT, PROBE_COMPLETION)]
        prompt_ids, full_ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
        return prompt_ids, full_ids
    bos = [] if tokenizer.bos_token_id is None else [tokenizer.bos_token_id]
    texts = [PROBE_PROMPT, PROBE_PROMPT + " " + PROBE_COMPLETION]
    prompt_ids, full_ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return bos + prompt_ids, bos + full_ids


def first_difference(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def check_templates(
    student_tokenizer: PreTrainedTokenizerBase,
    teacher_tokenizer: PreTrainedTokenizerBase,
    student_to_teacher: list[int] | None = None,
) -> None:
    """Refuse a pair whose templates (or tokenizers) encode the probe conversation into different
    token ids. With a vocabulary map (vocab.py), student ids are compared through it; raw prompts
    are compared too then, since two tokenizers may split the same text differently."""
    if not uses_chat(student_tokenizer):
        if uses_chat(teacher_tokenizer):
            raise UserError(
                "The teacher has a chat template but the student has none, so the teacher would "
                "score raw prompts outside its chat format; give the student the teacher's "
                "template or set model.chat_template: never to use raw prompts on purpose."
            )
        if student_to_teacher is None:
            return  # one tokenizer (check_pair compared the vocabularies): raw ids agree
    elif not has_template(teacher_tokenizer):
        raise UserError(
            "The student's prompts are rendered with its chat template but the teacher has none; "
            "use a teacher with the same template or set model.chat_template: never."
        )
    student_prompt, student_full = probe_ids(student_tokenizer)
    teacher_prompt, teacher_full = probe_ids(teacher_tokenizer)

    def seen(ids: list[int]) -> list[int]:  # student ids as teacher ids
        return ids if student_to_teacher is None else [student_to_teacher[i] for i in ids]

    if seen(student_full) == teacher_full and seen(student_prompt) == teacher_prompt:
        return
    part = "prompt" if seen(student_prompt) != teacher_prompt else "completion"
    a, b = (student_prompt, teacher_prompt) if part == "prompt" else (student_full, teacher_full)
    at = first_difference(seen(a), b)
    student_piece = student_tokenizer.decode(a[at : at + 8])
    teacher_piece = teacher_tokenizer.decode(b[at : at + 8])
    if uses_chat(student_tokenizer):
        how, fix = "chat template renders", "or set model.chat_template: never"
    else:
        how, fix = "tokenizer encodes", "a token map cannot fix tokenizers that split text apart"
    through = "" if student_to_teacher is None else " (through model.vocab_map)"
    raise UserError(
        f"The teacher's {how} a probe conversation's {part} into other token ids than the "
        f"student's{through} (from token {at}: student {student_piece!r}, teacher "
        f"{teacher_piece!r}), which would bias every teacher log-prob; use models with the same "
        f"chat template and tokenizer ({fix})."
    )


def set_stop_ids(tokenizer: PreTrainedTokenizerBase, extra: int | list[int] | None) -> None:
    """Record the ids that end a completion: the tokenizer's EOS, plus the model's
    generation_config `eos_token_id` (chat models often list a second end token)."""
    extra = [] if extra is None else [extra] if isinstance(extra, int) else list(extra)
    setattr(tokenizer, STOP_ATTRIBUTE, list(dict.fromkeys([tokenizer.eos_token_id, *extra])))


def stop_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The ids that end a completion (set_stop_ids; the EOS alone when none were recorded)."""
    return getattr(tokenizer, STOP_ATTRIBUTE, None) or [tokenizer.eos_token_id]
