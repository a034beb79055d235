"""TRL's side of benchmarks/vs_trl.py: one `DistillationTrainer` run (fully on-policy, beta=1.0: the
full-vocabulary reverse KL) on the same work as ours, configured from our Config.

CPU settings: use_cpu, no gradient checkpointing, bf16 only when asked (its defaults assume a GPU).
Step k's prompts are ours (`step_examples`), unshuffled; each step is timed from `on_step_begin` to
`on_step_end` (generation, scoring, backward, clipping, optimizer) in wall-clock and CPU time, and
its completion tokens are counted from TRL's own completion mask (EOS included).
"""

from __future__ import annotations

import time
from pathlib import Path

from foresight.config import Config


def run_trl(cfg: Config, precision: str, scratch: Path) -> dict:
    import datasets
    import torch
    import trl
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    from foresight.models import load_tokenizer
    from foresight.tasks import load_task
    from foresight.train.rollout import encode_prompts, step_examples

    tokenizer = AutoTokenizer.from_pretrained(cfg.model.student, local_files_only=True)
    ours = load_tokenizer(cfg.model.student, "student", cfg.model.chat_template)
    student, teacher = (
        AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=torch.float32)
        for folder in (cfg.model.student, cfg.model.teacher)
    )
    task = load_task(cfg.task)
    # Step k's prompts, in order, as the text of the ids our rollouts start from (BOS prepended,
    # or the chat template rendered); TRL tokenizes a text prompt without adding special tokens.
    examples = [e for step in range(1, cfg.train.steps + 1) for e in step_examples(task, cfg, step)]
    prompt_ids = encode_prompts(ours, [e.prompt for e in examples])
    prompts = [tokenizer.decode(ids) for ids in prompt_ids]
    assert [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts] == prompt_ids
    peft_config = None
    if cfg.lora.enabled:  # the same adapters as ours (lora.py)
        import peft

        peft_config = peft.LoraConfig(
            r=cfg.lora.r,
            lora_alpha=cfg.lora.alpha,
            lora_dropout=cfg.lora.dropout,
            target_modules=list(cfg.lora.target_modules),
            task_type="CAUSAL_LM",
        )
    times, cpu_times, tokens = [], [], []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.started, self.cpu_started = time.perf_counter(), time.process_time()

        def on_step_end(self, args, state, control, **kwargs):
            times.append(time.perf_counter() - self.started)
            cpu_times.append(time.process_time() - self.cpu_started)

    class CountingTrainer(trl.DistillationTrainer):
        def _generate_and_score_completions(self, inputs):
            output = super()._generate_and_score_completions(inputs)
            tokens.append(float(output["completion_mask"].sum()))
            return output

    trl_args = trl.DistillationConfig(
        output_dir=str(scratch),
        use_cpu=True,
        bf16=precision == "bfloat16",  # autocast for both models' passes
        fp16=False,
        gradient_checkpointing=False,
        report_to="none",
        save_strategy="no",
        logging_steps=cfg.train.steps,
        disable_tqdm=True,
        max_steps=cfg.train.steps,
        per_device_train_batch_size=cfg.rollout.prompts_per_step,
        gradient_accumulation_steps=1,
        max_completion_length=cfg.rollout.max_new_tokens,
        learning_rate=cfg.optim.lr,
        adam_beta1=cfg.optim.betas[0],
        adam_beta2=cfg.optim.betas[1],
        weight_decay=0.0,
        max_grad_norm=1.0,
        warmup_steps=0,
        lr_scheduler_type="constant",
        beta=1.0,  # reverse KL(student ‖ teacher), full vocabulary
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        shuffle_dataset=False,
        disable_dropout=True,
        seed=cfg.train.seed,
        dataloader_num_workers=0,
    )
    trainer = CountingTrainer(
        model=student,
        teacher_model=teacher,
        args=trl_args,
        train_dataset=datasets.Dataset.from_list([{"prompt": p} for p in prompts]),
        processing_class=tokenizer,
        callbacks=[StepTimer()],
        peft_config=peft_config,
    )
    trainer.train()
    return {
        "times": times,
        "cpu_times": cpu_times,
        "tokens": tokens,
        "student": trainer.model,
        "teacher": teacher,
    }
