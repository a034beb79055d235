"""A teacher with another vocabulary, seen through a token map (train --allow-vocab-mismatch).

`model.vocab_map` is a JSON file that maps every student token id to a distinct teacher token id:
a list (index = student id) or an object {"student id": teacher id}. `MappedTeacher` reads the
student's ids through the map and returns, for every student id s, the teacher's logit of map[s],
plus one tail column holding the logsumexp of the teacher tokens no student id maps to. The
log-softmax over those V_S + 1 columns at s is then exactly log p_T(map[s]): the normalizer still
runs over the teacher's whole vocabulary.

Only the sampled-token loss is defined this way. A full-vocabulary divergence compares the two
distributions token by token over one shared support; across vocabularies (with teacher mass on
tokens the student cannot emit) it is not defined, so config.py refuses full-vocabulary losses,
the evaluation KL, EffOPD's KL signal and SFT from teacher samples together with a map.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import PreTrainedModel

from foresight.errors import UserError


def read_vocab_map(path: Path) -> list[int]:
    """The map as a list indexed by student id; UserError for a missing or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"model.vocab_map {path} does not exist; pass a JSON token-id map file.")
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(
            f"model.vocab_map {path} is not valid JSON ({exc}); fix the file."
        ) from None
    try:
        if isinstance(raw, dict):
            pairs = {int(student): int(teacher) for student, teacher in raw.items()}
            if sorted(pairs) != list(range(len(pairs))):
                missing = sorted(set(range(max(pairs, default=-1) + 1)) - set(pairs))[:5]
                raise UserError(
                    f"model.vocab_map {path} leaves student ids {missing} unmapped; map every "
                    "student id from 0 up."
                )
            return [pairs[student] for student in range(len(pairs))]
        if isinstance(raw, list):
            return [int(teacher) for teacher in raw]
    except (TypeError, ValueError):
        pass
    raise UserError(
        f"model.vocab_map {path} must be a JSON list of teacher ids or an object "
        '{"student id": teacher id} of integers; fix the file.'
    )


def check_vocab_map(
    student_to_teacher: list[int], student_vocab: int, teacher_vocab: int, path: Path
) -> torch.Tensor:
    """The map as a LongTensor (V_S,), checked to cover the student's vocabulary injectively."""
    if len(student_to_teacher) != student_vocab:
        raise UserError(
            f"model.vocab_map {path} maps {len(student_to_teacher)} student ids but the student "
            f"has {student_vocab} (rows of its LM head); map every student id exactly once."
        )
    bad = [t for t in student_to_teacher if not 0 <= t < teacher_vocab]
    if bad:
        raise UserError(
            f"model.vocab_map {path} maps to teacher ids outside [0, {teacher_vocab}) such as "
            f"{bad[0]}; fix the file."
        )
    if len(set(student_to_teacher)) != len(student_to_teacher):
        raise UserError(
            f"model.vocab_map {path} maps two student ids to the same teacher id; the map must be "
            "one-to-one (a shared teacher token would count its probability twice)."
        )
    return torch.tensor(student_to_teacher, dtype=torch.long)  # (V_S,)


class MappedDecoder(torch.nn.Module):
    """The teacher's decoder reading student token ids."""

    def __init__(self, decoder: torch.nn.Module, student_to_teacher: torch.Tensor) -> None:
        super().__init__()
        self.decoder = decoder
        self.register_buffer("student_to_teacher", student_to_teacher, persistent=False)

    def forward(self, input_ids: torch.Tensor, **kwargs):
        return self.decoder(input_ids=self.student_to_teacher[input_ids], **kwargs)


class MappedHead(torch.nn.Module):
    """Teacher logits at each student id's teacher token, plus one tail column (see module doc)."""

    def __init__(
        self, head: torch.nn.Module, student_to_teacher: torch.Tensor, teacher_vocab: int
    ) -> None:
        super().__init__()
        self.head = head
        unmapped = torch.ones(teacher_vocab, dtype=torch.bool)
        unmapped[student_to_teacher] = False
        self.register_buffer("student_to_teacher", student_to_teacher, persistent=False)
        self.register_buffer("unmapped", unmapped.nonzero()[:, 0], persistent=False)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        teacher_logits = self.head(hidden)  # (B, C, V_T)
        mapped = teacher_logits.index_select(-1, self.student_to_teacher)  # (B, C, V_S)
        if self.unmapped.numel() == 0:
            return mapped
        # Summed in at least float32: the tail may hold most of the vocabulary.
        upcast = torch.promote_types(teacher_logits.dtype, torch.float32)
        tail = teacher_logits.index_select(-1, self.unmapped).to(upcast).logsumexp(-1, keepdim=True)
        return torch.cat([mapped, tail.to(mapped.dtype)], dim=-1)  # (B, C, V_S + 1)


class MappedTeacher(torch.nn.Module):
    """The teacher as scoring.py sees it: student ids in, log-probs of student ids out."""

    def __init__(self, teacher: PreTrainedModel, student_to_teacher: torch.Tensor) -> None:
        super().__init__()
        student_to_teacher = student_to_teacher.to(teacher.device)
        self.teacher = teacher
        self.config = teacher.config
        self.decoder = MappedDecoder(teacher.get_decoder(), student_to_teacher)
        teacher_vocab = teacher.get_output_embeddings().weight.shape[0]
        self.head = MappedHead(teacher.get_output_embeddings(), student_to_teacher, teacher_vocab)

    @property
    def device(self) -> torch.device:
        return self.teacher.device

    def get_decoder(self) -> MappedDecoder:
        return self.decoder

    def get_output_embeddings(self) -> MappedHead:
        return self.head
