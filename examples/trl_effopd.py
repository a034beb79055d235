"""EffOPD inside a TRL trainer: TRL's DistillationTrainer does on-policy distillation (reverse KL on
the student's own samples) and foresight's callback tries W_t + m·Δ after the optimizer step at
steps 1, 2, 4, 8, ..., keeping a jump only when the validation signal does not drop.

Run: .venv/bin/python examples/trl_effopd.py [--student models/arith/base]
     [--teacher models/arith/teacher] [--steps 8] [--batch 8]
"""

import argparse

import datasets
import torch
import trl
from transformers import AutoModelForCausalLM, AutoTokenizer

from foresight.config import EffOPDConfig, TaskConfig
from foresight.effopd.extrapolate import extrapolated_names
from foresight.effopd.search import EffOPD, EffOPDCallback
from foresight.tasks import load_task
from foresight.train.evaluate import effopd_validator

parser = argparse.ArgumentParser()
parser.add_argument("--student", default="models/arith/base")
parser.add_argument("--teacher", default="models/arith/teacher")
parser.add_argument("--steps", type=int, default=8)
parser.add_argument("--batch", type=int, default=8)
args = parser.parse_args()

tokenizer = AutoTokenizer.from_pretrained(args.student)
student = AutoModelForCausalLM.from_pretrained(args.student, dtype=torch.float32)
teacher = AutoModelForCausalLM.from_pretrained(args.teacher, dtype=torch.float32)
task = load_task(TaskConfig(name="arith"))  # prompts, answers and a verifier

# The pitfall: TRL tokenizes a plain-text prompt without special tokens, so write BOS into the text
# (foresight's own rollouts prepend it; a model trained with it gets lost without it).
prompts = [tokenizer.bos_token + e.prompt for e in task.sample("train", 256, 0)]

# The signal: minus the full-vocabulary reverse KL to the teacher on 32 fixed prompts, scored on
# completions sampled once per search from W_t (less noisy than the paper's 50-sample accuracy).
cfg = EffOPDConfig(enabled=True, signal="kl", multipliers=[0.5, 1.0, 2.0], n_prompts=32)
examples = task.sample("train", cfg.n_prompts, 1)
validator = effopd_validator("kl", task, tokenizer, examples, 40, 0, student, teacher)
# Only attention and MLP matrices are extrapolated (cfg.modules), as in the paper.
effopd = EffOPD(cfg, student, extrapolated_names(student, cfg.modules), validator)

config = trl.DistillationConfig(
    output_dir="runs/trl_effopd",  # TRL's own folder; save_strategy="no" writes no checkpoint
    max_steps=args.steps,
    per_device_train_batch_size=args.batch,
    max_completion_length=40,
    learning_rate=1e-3,
    lr_scheduler_type="constant",
    beta=1.0,  # reverse KL
    temperature=1.0,
    use_cpu=not torch.cuda.is_available(),
    gradient_checkpointing=False,
    save_strategy="no",
    report_to="none",
    logging_steps=1,
)
trainer = trl.DistillationTrainer(
    model=student,
    teacher_model=teacher,
    args=config,
    train_dataset=datasets.Dataset.from_dict({"prompt": prompts}),
    processing_class=tokenizer,
    callbacks=[EffOPDCallback(effopd)],  # searches write into the very model TRL optimizes
)
trainer.train()
for search in effopd.history:
    print(
        f"step {search['step']}: accepted m = {search['accepted']:g}, "
        f"signal {search['initial_score']:.4f} -> {search['best_score']:.4f}"
    )
