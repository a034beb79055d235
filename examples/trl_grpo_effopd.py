"""EffOPD inside TRL's GRPOTrainer (RL on a verifiable reward): foresight's callback tries
W_t + m·Δ after the optimizer step at steps 1, 2, 4, 8, ... and keeps a jump only when the mean
reward on fixed validation prompts (one sample each at temperature 1, the paper's V) does not drop.

Run: .venv/bin/python examples/trl_grpo_effopd.py [--steps 8] [--batch 8] [--out runs/trl_grpo_effopd]
"""

import argparse

import datasets
import torch
import trl
from transformers import AutoModelForCausalLM, AutoTokenizer

from foresight.config_sections import EffOPDConfig, TaskConfig
from foresight.effopd.callback import EffOPDCallback
from foresight.effopd.extrapolate import extrapolated_names
from foresight.effopd.search import EffOPD
from foresight.effopd.validators import prompts_with_bos, reward_validator
from foresight.tasks import load_task

STUDENT = "models/arith/base"  # any causal LM
parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=8)
parser.add_argument("--batch", type=int, default=8, help="completions per step (4 per prompt)")
parser.add_argument("--out", default="runs/trl_grpo_effopd")
args = parser.parse_args()

tokenizer = AutoTokenizer.from_pretrained(STUDENT)
student = AutoModelForCausalLM.from_pretrained(STUDENT)
task = load_task(TaskConfig(name="arith"))  # the committed model's task: prompts and a verifier


def correct(completion: str, row: dict) -> float:
    """The validator's reward: (completion, the row of its prompt) -> 1.0 when verified."""
    return float(task.verify(completion, row["answer"]))


def reward(completions: list[str], answer: list[str], **kwargs) -> list[float]:
    """TRL's reward_funcs signature: the dataset's other columns (here answer) come as lists."""
    return [correct(completion, {"answer": a}) for completion, a in zip(completions, answer)]


# TRL encodes a plain-text prompt without BOS for this tokenizer: write it in (see trl_effopd.py).
examples = task.sample("train", 256, 0)
prompts = prompts_with_bos(tokenizer, [e.prompt for e in examples])
rows = [{"prompt": p, "answer": e.answer} for p, e in zip(prompts, examples)]

validation = [{"prompt": e.prompt, "answer": e.answer} for e in task.sample("train", 32, 1)]
validation_prompts = [row["prompt"] for row in validation]  # correct() gets each one's row
validator = reward_validator(
    validation_prompts, correct, tokenizer, max_new_tokens=40, seed=0, rows=validation
)
cfg = EffOPDConfig(multipliers=[0.5, 1.0, 2.0])  # candidates W_t + m·Δ, tried in order
effopd = EffOPD(cfg, student, extrapolated_names(student, cfg.modules), validator)

config = trl.GRPOConfig(
    output_dir=args.out,
    max_steps=args.steps,
    save_steps=4,  # checkpoint-N/ holds EffOPD's state too: resuming searches as if never stopped
    per_device_train_batch_size=args.batch,
    num_generations=4,
    max_completion_length=40,
    learning_rate=5e-4,
    lr_scheduler_type="constant",
    use_cpu=not torch.cuda.is_available(),
    gradient_checkpointing=False,
    report_to="none",
    logging_steps=1,
)
trainer = trl.GRPOTrainer(
    model=student,
    reward_funcs=reward,
    args=config,
    train_dataset=datasets.Dataset.from_list(rows),
    processing_class=tokenizer,
    callbacks=[EffOPDCallback(effopd)],
)
trainer.train()
for search in effopd.history:
    print(
        f"step {search['step']}: accepted m = {search['accepted']:g}, "
        f"signal {search['initial_score']:.4f} -> {search['best_score']:.4f}"
    )
