"""One row of a user task -> `Example`: the row formats foresight reads, each error naming its row.

    {"prompt": "text", "answer": ..., "solution": "text", "split": "val"}   plain text
    {"prompt": [{"role": "user", "content": "text"}, ...], "answer": ...}    a conversation prompt
    {"messages": [{"role": ..., "content": ...}, ...], "answer": ...}        a whole conversation

`solution` and `split` are optional in every format. A `messages` row whose last message is the
assistant's is a conversation and its reference reply: that reply is the solution (what SFT on
solutions trains on) and the prompt is every message before it; otherwise every message is the
prompt. Only each message's role and content are kept, and the student tokenizer's chat template
renders them (templates.py). `answer` is required in every format: it is what the verifier or the
reward function scores a completion against.
"""

from __future__ import annotations

import json

from foresight.errors import UserError
from foresight.tasks.base import SPLITS, Conversation, Example, Prompt

ASSISTANT = "assistant"
MESSAGE_FORMAT = '[{"role": "user", "content": "..."}, ...]'


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
    """One row -> Example; answers that are numbers become their str(). A missing key and a null
    read alike (the `datasets` reader gives None for both)."""
    prompt, reply = record_prompt(where, record)
    if "answer" not in record:
        raise UserError(f"{where} lacks 'answer'; every row needs a prompt and an 'answer'.")
    answer, solution = record["answer"], record.get("solution")
    if reply is not None:
        if solution is not None:
            raise UserError(
                f"{where} has a 'solution' and ends its 'messages' with the assistant's reply; "
                "keep one of them as the reference solution."
            )
        solution = reply
    solution = "" if solution is None else solution
    # bool is an int subclass, but `true` is almost surely a mistake for an answer.
    if isinstance(answer, bool) or not isinstance(answer, str | int | float):
        raise UserError(f"{where} has an 'answer' that is not a string or number; write one.")
    if not isinstance(solution, str):
        raise UserError(f"{where} has a non-string 'solution'; write it as a string or omit it.")
    return Example(prompt, str(answer), solution)


def record_prompt(where: str, record: dict) -> tuple[Prompt, str | None]:
    """The row's prompt, and the assistant reply that ends its `messages` (None when none does)."""
    prompt, messages = record.get("prompt"), record.get("messages")
    if prompt is not None and messages is not None:
        raise UserError(f"{where} has both 'prompt' and 'messages'; give one of them.")
    if messages is not None:
        conversation = parse_conversation(where, "messages", messages)
        if conversation[-1][0] != ASSISTANT:
            return conversation, None
        if len(conversation) == 1:
            raise UserError(
                f"{where} has only the assistant's reply in 'messages'; add the turns before it."
            )
        return conversation[:-1], conversation[-1][1]
    if prompt is None:
        raise UserError(
            f"{where} lacks 'prompt'; every row needs a 'prompt' (text or a list of messages) or "
            "'messages', and an 'answer'."
        )
    if isinstance(prompt, list):
        return parse_conversation(where, "prompt", prompt), None
    if not isinstance(prompt, str):
        raise UserError(
            f"{where} has a non-string 'prompt'; write it as a string or as {MESSAGE_FORMAT}."
        )
    return prompt, None


def parse_conversation(where: str, key: str, messages: object) -> Conversation:
    """A list of {role, content} messages -> ((role, content), ...), roles and contents strings."""
    if not isinstance(messages, list) or not messages:
        raise UserError(
            f"{where} has a '{key}' that is not a non-empty list of messages; write {MESSAGE_FORMAT}."
        )
    turns = []
    for number, message in enumerate(messages, start=1):
        fields = message if isinstance(message, dict) else {}
        role, content = fields.get("role"), fields.get("content")
        if not isinstance(role, str) or not isinstance(content, str):
            raise UserError(
                f"{where} has '{key}' message {number} without a string 'role' and 'content'; "
                f"write each message as {MESSAGE_FORMAT}."
            )
        turns.append((role, content))
    return tuple(turns)
