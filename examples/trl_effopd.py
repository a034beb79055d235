"""EffOPD inside TRL's DistillationTrainer (on-policy distillation: reverse KL on the student's own
samples): foresight's callback tries W_t + m·Δ after the optimizer step at steps 1, 2, 4, 8, ...
and keeps a jump only when the validation signal (minus the reverse KL to the teacher) does not drop.

Run: .venv/bin/python examples/trl_effopd.py [--steps 8] [--batch 8] [--out runs/trl_effopd] [--resume]
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
from foresight.effopd.validators import kl_validator, prompts_with_bos
from foresight.tasks import load_task

STUDENT, TEACHER = "models/arith/base", "models/arith/teacher"  # any causal LM pair, one tokenizer
parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=8)
parser.add_argument("--batch", type=int, default=8)
parser.add_argument("--out", default="runs/trl_effopd")
parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
args = parser.parse_args()

tokenizer = AutoTokenizer.from_pretrained(STUDENT)
student = AutoModelForCausalLM.from_pretrained(STUDENT)
teacher = AutoModelForCausalLM.from_pretrained(TEACHER)
task = load_task(TaskConfig(name="arith"))  # the committed models' task: prompts and a verifier

# The pitfall: TRL encodes a plain-text prompt with the tokenizer's own special tokens, and many
# tokenizers (this one too) add no BOS there, so a model trained with BOS would be trained without
# it. prompts_with_bos writes BOS into the text where the tokenizer would not add it; the validator
# gives every plain prompt exactly one BOS, so training and validation see the same ids.
prompts = prompts_with_bos(tokenizer, [e.prompt for e in task.sample("train", 256, 0)])

# The signal: minus the full-vocabulary reverse KL to the teacher on 32 fixed prompts, on
# completions sampled once per search from the student's W_t (dense, needs no verifier).
validation_prompts = [e.prompt for e in task.sample("train", 32, 1)]
validator = kl_validator(validation_prompts, teacher, student, tokenizer, max_new_tokens=40, seed=0)
cfg = EffOPDConfig(multipliers=[0.5, 1.0, 2.0])  # candidates W_t + m·Δ, tried in order
# Only the attention and MLP matrices are extrapolated (cfg.modules), as in the paper.
effopd = EffOPD(cfg, student, extrapolated_names(student, cfg.modules), validator)

config = trl.DistillationConfig(
    output_dir=args.out,
    max_steps=args.steps,
    save_steps=4,  # checkpoint-N/ holds EffOPD's state too: --resume searches as if never stopped
    per_device_train_batch_size=args.batch,
    max_completion_length=40,
    learning_rate=1e-3,
    lr_scheduler_type="constant",
    beta=1.0,  # reverse KL
    use_cpu=not torch.cuda.is_available(),
    gradient_checkpointing=False,
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
trainer.train(resume_from_checkpoint=args.resume or None)
for search in effopd.history:
    print(
        f"step {search['step']}: accepted m = {search['accepted']:g}, "
        f"signal {search['initial_score']:.4f} -> {search['best_score']:.4f}"
    )
