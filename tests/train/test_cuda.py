"""GPU smoke test: the student on CUDA, the teacher on the CPU, 2 steps of each method.

Skips on machines without CUDA (CI has none); run it on a GPU machine with
.venv/bin/python -m pytest tests/train/test_cuda.py -q
"""

from __future__ import annotations

import math

import pytest
import torch
from builders import micro_config

from foresight.train.loop import train_step
from foresight.train.setup import setup

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

METHODS = {
    "opd": {},
    "opd-bf16": {"model": {"dtype": "bfloat16"}},
    "rl": {"train": {"method": "rl"}, "rollout": {"group_size": 2}},
    "sft-teacher": {"train": {"method": "sft", "sft_source": "teacher"}},
}


@pytest.mark.parametrize("name", list(METHODS))
def test_two_steps_with_student_on_cuda_and_teacher_on_cpu(micro_pair, tmp_path, name):
    sections = {key: dict(value) for key, value in METHODS[name].items()}
    sections.setdefault("model", {}).update({"device": "cuda", "teacher_device": "cpu"})
    trainer = setup(micro_config(*micro_pair, tmp_path / "run", **sections))
    for step in (1, 2):
        assert math.isfinite(train_step(trainer, step)["loss"])
