"""The real-model demo: on-policy self-distillation of a behavior SmolLM2-135M-Instruct shows only
when told, into a LoRA student that is never told.

The behavior: the reply begins with "Hello!". Told so in its prompt (task.teacher_prompt_template),
SmolLM2-135M-Instruct does it on nearly every question; asked the plain question, it never does.
The teacher is the same model with the instruction in its prompt; the student is the same model
with LoRA adapters and the plain question. OPD (full-vocabulary reverse KL on the student's own
samples) moves the told behavior into the adapters. The demo prints the verifier's behavior rate
(greedy, held-out questions) of the untold base, the told teacher and the untold student after.

Questions are generated here from templates (nothing is downloaded) and written to
RUN/prompts.jsonl; splits come from a hash of each question, so test questions are never trained on.

Run: foresight demo --real     (after `make models/smollm2-135m-instruct`)
"""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from foresight.checkpoint import free_run_dir
from foresight.config import Config, load_config
from foresight.dynamics.collect import torch_threads
from foresight.errors import UserError
from foresight.log import stage
from foresight.lora import load_student
from foresight.models import load_model, load_tokenizer
from foresight.tasks import Example, Task, load_task
from foresight.train.evaluate import evaluate
from foresight.train.loop import train
from foresight.train.rollout import decode_completions, sample

MODEL_DIR = Path("models/smollm2-135m-instruct")
TEST_PROMPTS = 48
BEHAVIOR = "Hello!"
TOPICS = (
    "a cat", "the sun", "a bicycle", "rain", "a library", "the ocean", "a volcano", "bread",
    "a computer", "the moon", "a river", "an apple", "music", "a bridge", "snow", "a forest",
    "a train", "coffee", "a guitar", "the desert", "a garden", "an elephant", "a clock", "honey",
    "a mountain", "the wind", "a candle", "chess", "a lighthouse", "tea", "a rainbow", "a dog",
    "the brain", "a tree", "an island", "a map", "glass", "a kite", "thunder", "a penguin",
)  # fmt: skip
QUESTIONS = (
    "What is {}?", "Tell me about {}.", "Describe {} in one sentence.", "Why is {} important?",
    "Give me a fun fact about {}.", "What color is {}?", "How big is {}?", "Where can I find {}?",
    "Write a short sentence about {}.", "What do people like about {}?", "Explain {} to a child.",
    "What is special about {}?", "How does {} change over time?", "Is {} useful?",
)  # fmt: skip


def starts_with_greeting(completion: str, answer: str) -> bool:
    """The verifier (`python:foresight.demo_real:starts_with_greeting`): the reply opens with the
    expected text (the example's answer, "Hello!")."""
    return completion.lstrip().startswith(answer)


def write_prompts(path: Path) -> Path:
    """Every topic x question as a JSONL task line whose answer is the behavior."""
    lines = [
        json.dumps({"prompt": question.format(topic), "answer": BEHAVIOR})
        for topic, question in itertools.product(TOPICS, QUESTIONS)
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def told(task: Task, template: str) -> Task:
    """The task with every prompt inside the teacher's template: what the teacher sees."""

    def sample(split: str, n: int, seed: int) -> list[Example]:
        return [
            Example(template.replace("{prompt}", e.prompt), e.answer, e.solution)
            for e in task.sample(split, n, seed)
        ]

    return Task(task.name, sample, task.verify, task.alphabet)


def behavior_rate(cfg: Config, model, task: Task, n_prompts: int, label: str) -> float:
    """Greedy verifier pass rate on the first n test prompts of `task`; `label` names the phase
    in the progress lines."""
    tokenizer = load_tokenizer(cfg.model.student, "student", cfg.model.chat_template)
    with stage(label):
        scores = evaluate(
            model,
            tokenizer,
            task,
            "test",
            n_prompts,
            cfg.rollout.max_new_tokens,
            cfg.eval.batch_size,
            sampled=False,
        )
    return scores["eval/accuracy"]


def check_model_dir(model_dir: Path) -> None:
    if not (Path(model_dir) / "config.json").is_file():
        raise UserError(
            f"{model_dir} holds no imported model; run `make models/smollm2-135m-instruct` (or "
            f"`foresight import-gguf FILE {model_dir}`) first."
        )


def run_real_demo(
    config_path: Path,
    overrides: list[str],
    out_dir: Path,
    model_dir: Path = MODEL_DIR,
    test_prompts: int = TEST_PROMPTS,
) -> dict:
    """Measure before, distill, measure after; writes RUN/summary.json and returns it."""
    started = time.perf_counter()
    check_model_dir(model_dir)
    run_dir = free_run_dir(Path(out_dir))
    prompts = write_prompts(run_dir / "prompts.jsonl")
    cfg = load_config(
        config_path,
        [
            f"model.student={model_dir}",
            f"model.teacher={model_dir}",
            f"task.path={prompts}",
            *overrides,
            f"train.out_dir={run_dir / 'opd'}",
        ],
    )
    template = cfg.task.teacher_prompt_template
    if template is None or not cfg.lora.enabled:
        raise UserError(
            f"{config_path} must set task.teacher_prompt_template and lora.enabled for the real "
            "demo; start from configs/real.yaml."
        )
    # The evaluations run on train.threads too: on a shared CPU, extra OpenMP threads spin.
    with torch_threads(cfg.train.threads):
        summary = measure_and_distill(cfg, load_task(cfg.task), template, test_prompts)
    summary["wall_seconds"] = time.perf_counter() - started
    summary["run_dir"] = str(run_dir)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    print_summary(summary)
    return summary


def measure_and_distill(cfg: Config, task: Task, template: str, n_test: int) -> dict:
    """Behavior rates of the untold and told base, OPD, then the untold student's rate."""
    base = load_model(cfg.model.student, "student").eval()
    question = task.sample("test", 1, 0)[0].prompt
    summary = {
        "behavior": f"reply starts with {BEHAVIOR!r}",
        "teacher_prompt_template": template,
        "test_prompts": len(task.sample("test", n_test, 0)),
        "base_untold_rate": behavior_rate(cfg, base, task, n_test, "base, untold"),
        "base_told_rate": behavior_rate(cfg, base, told(task, template), n_test, "base, told"),
        "question": question,
        "base_reply": greedy_reply(cfg, base, question),
    }
    del base
    train_started = time.perf_counter()
    with stage("LoRA OPD"):
        train(cfg)
    summary["train_seconds"] = time.perf_counter() - train_started
    final = cfg.train.out_dir / "checkpoints" / f"step-{cfg.train.steps:06d}"
    student = load_student(cfg, final)
    summary["student_untold_rate"] = behavior_rate(cfg, student, task, n_test, "student")
    summary["student_reply"] = greedy_reply(cfg, student, question)
    summary["gain_points"] = 100 * (summary["student_untold_rate"] - summary["base_untold_rate"])
    summary["steps"] = cfg.train.steps
    return summary


def greedy_reply(cfg: Config, model, question: str) -> str:
    """The model's greedy reply to one question (max_new_tokens long), for the console."""
    tokenizer = load_tokenizer(cfg.model.student, "student", cfg.model.chat_template)
    rollout = sample(model, tokenizer, [question], cfg.rollout.max_new_tokens, 1.0, None, True)
    return decode_completions(tokenizer, rollout)[0]


def print_summary(summary: dict) -> None:
    table = Table(title="Self-distillation demo on SmolLM2-135M-Instruct (greedy, held-out)")
    table.add_column("what")
    table.add_column("value", justify="right")
    for key, value in summary.items():
        shown = f"{value:.3f}" if isinstance(value, float) else str(value)
        table.add_row(key, shown)
    Console().print(table)
