"""OPD step throughput and model FLOP utilization (MFU) on one CUDA GPU, per phase of `train_step`.

Builds a ~100M-parameter Qwen3-style student and a ~300M teacher from config (random init, nothing
downloaded) over the `arith` task's char tokenizer, saves them as HF folders in a temp dir, then
times the real `setup` + `train_step`. FLOPs per phase, with N = parameters outside the embedding
lookup and the tokens counted at each decoder's input (B x T for a rollout of width T = P + G):
  generation      2 * N_student * tokens  (prompt prefill B*P, then one per unfinished row per
                                           decode step: rows leave the KV cache at their EOS)
  teacher scoring 2 * N_teacher * tokens  (teacher forward over B*T, no grad)
  student update  6 * N_student * tokens  (forward 2N + backward 4N over B*T; no optimizer)
Attention scores are left out (T is short); the LM head of a tiny vocab is in N but negligible.
MFU = achieved FLOP/s / peak, the peak being a large torch.mm measured in this same run.

Run on a GPU: bash benchmarks/gpu.sh    Check on CPU: python benchmarks/gpu_opd.py --smoke
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import transformers
from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

from foresight.config import Config
from foresight.log import library_verbosity
from foresight.models import DTYPES, MODEL_SIZES, build_char_tokenizer
from foresight.tasks import TASKS
from foresight.train.loop import train_step
from foresight.train.setup import Trainer, setup


@dataclass(frozen=True)
class Plan:
    """Everything that differs between the GPU run and the CPU smoke run."""

    device: str
    dtype: str
    student: dict[str, int]
    teacher: dict[str, int]
    batch: int
    max_new_tokens: int
    warmup: int
    steps: int
    mm_size: int  # side of the square matmul that measures the peak


GPU_PLAN = Plan(
    device="cuda",
    dtype="bfloat16",
    batch=128,
    max_new_tokens=40,
    warmup=3,
    steps=10,
    mm_size=8192,
    student=dict(
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        num_key_value_heads=4,
        head_dim=64,
    ),
    teacher=dict(
        hidden_size=1024,
        intermediate_size=2816,
        num_hidden_layers=24,
        num_attention_heads=16,
        num_key_value_heads=8,
        head_dim=64,
    ),
)
# Same code path on CPU in seconds; float32 because CPU bfloat16 kernels can be very slow.
SMOKE_PLAN = Plan(
    device="cpu",
    dtype="float32",
    batch=8,
    max_new_tokens=16,
    warmup=1,
    steps=2,
    mm_size=512,
    student=dict(
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
    ),
    teacher=MODEL_SIZES["tiny"],  # the embedded models' size
)
PHASES = {
    "generation": "time/rollout_s",
    "teacher scoring": "time/teacher_s",
    "student update": "time/student_s",
}


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def build_folder(
    folder: Path, tokenizer: PreTrainedTokenizerFast, sizes: dict[str, int], seed: int, dtype: str
) -> dict[str, int]:
    """Random-init a Qwen3 decoder, save it (safetensors) with the tokenizer; return its counts."""
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        max_position_embeddings=256,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **sizes,
    )
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(config).to(DTYPES[dtype])  # cast first: bf16 halves the bytes written
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    total = sum(p.numel() for p in model.parameters())
    # An embedding lookup does no multiply-adds, so it is left out of N; the LM head stays in.
    return {"params": total, "flop_params": total - model.get_input_embeddings().weight.numel()}


def matmul_peak(n: int, dtype: torch.dtype, device: str, repeats: int = 10) -> float:
    """FLOP/s of an n x n x n torch.mm: median of `repeats` after warm-up (TF32 off for float32)."""
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    previous = torch.backends.cuda.matmul.fp32_precision
    torch.backends.cuda.matmul.fp32_precision = "ieee"  # true float32, not TF32, as the reference
    for _ in range(3):
        torch.mm(a, b)
    times = []
    for _ in range(repeats):
        sync(device)
        started = time.perf_counter()
        torch.mm(a, b)
        sync(device)
        times.append(time.perf_counter() - started)
    torch.backends.cuda.matmul.fp32_precision = previous
    return 2 * n**3 / statistics.median(times)


def make_config(plan: Plan, folder: Path) -> Config:
    return Config.model_validate(
        {
            "model": {
                "student": folder / "student",
                "teacher": folder / "teacher",
                "dtype": plan.dtype,
                "teacher_dtype": plan.dtype,
                "device": plan.device,
                "teacher_device": plan.device,
            },
            "task": {"name": "arith"},
            "rollout": {"prompts_per_step": plan.batch, "max_new_tokens": plan.max_new_tokens},
            "loss": {"kind": "sampled_rkl"},
            "train": {"steps": plan.warmup + plan.steps, "out_dir": folder / "run"},
            "log": {"tensorboard": False, "progress": False},
        }
    )


def instrument(t: Trainer, device: str, tokens: dict[str, int]) -> None:
    """Hook both decoders: synchronize after each forward and add its tokens to `tokens`.

    train_step reads perf_counter between phases without synchronizing, so on CUDA the teacher's
    queued kernels would be billed to the student update. Counting input_ids gives the exact grid,
    prompt prefill and every decode step included, also when all rows stopped early at EOS.
    """

    def student_hook(module, args, kwargs, output) -> None:
        sync(device)
        phase = "student update" if torch.is_grad_enabled() else "generation"  # sampling: no_grad
        tokens[phase] += kwargs["input_ids"].numel()

    def teacher_hook(module, args, kwargs, output) -> None:
        sync(device)
        tokens["teacher scoring"] += kwargs["input_ids"].numel()

    t.student.get_decoder().register_forward_hook(student_hook, with_kwargs=True)
    t.teacher.get_decoder().register_forward_hook(teacher_hook, with_kwargs=True)


def run_steps(t: Trainer, plan: Plan, tokens: dict[str, int]) -> list[dict[str, float]]:
    """Warm-up steps, then timed steps; each record is train_step's stats plus tokens per phase."""
    for step in range(1, plan.warmup + 1):
        train_step(t, step)
    records = []
    for step in range(plan.warmup + 1, plan.warmup + plan.steps + 1):
        tokens.update(dict.fromkeys(PHASES, 0))
        sync(plan.device)
        started = time.perf_counter()
        stats = train_step(t, step)
        sync(plan.device)
        records.append(
            stats
            | {"time/step_synced_s": time.perf_counter() - started}
            | {f"tokens/{name}": n for name, n in tokens.items()}
        )
    return records


def summarize(records: list[dict], counts: dict, peak: float) -> dict[str, dict[str, float]]:
    """Median seconds, tokens/s, FLOP/s and MFU per phase (FLOP formulas: module docstring)."""
    n_student, n_teacher = counts["student"]["flop_params"], counts["teacher"]["flop_params"]
    flop_per_token = {
        "generation": 2 * n_student,
        "teacher scoring": 2 * n_teacher,
        "student update": 6 * n_student,
    }
    phases = {}
    for name, key in [*PHASES.items(), ("step (synced)", "time/step_synced_s")]:
        seconds = statistics.median(r[key] for r in records)
        if name in PHASES:
            tokens = statistics.median(r[f"tokens/{name}"] for r in records)
            flop = flop_per_token[name] * tokens
        else:  # the whole step: the B*T grid, and the FLOPs of all three phases
            tokens = phases["student update"]["tokens"]
            flop = sum(p["flop"] for p in phases.values())
        phases[name] = {
            "seconds": seconds,
            "tokens": tokens,
            "tokens_per_s": tokens / seconds,
            "flop": flop,
            "flop_per_s": flop / seconds,
            "mfu": flop / seconds / peak,
        }
    return phases


def print_table(r: dict) -> None:
    student, teacher = r["params"]["student"]["params"], r["params"]["teacher"]["params"]
    print(
        f"student {student:,} params, teacher {teacher:,}; vocab {r['vocab']} (char-level, so "
        f"lm_head FLOPs are negligible); build+save+load {r['setup_s']:.1f} s"
    )
    plan, peaks = r["plan"], r["peak_flop_per_s"]
    print(
        f"dtype {r['dtype']}, B {plan['batch']}, G {plan['max_new_tokens']}, "
        f"{plan['steps']} timed steps after {plan['warmup']} warm-up; peak torch.mm "
        f"{plan['mm_size']}^3: bfloat16 {peaks['bfloat16'] / 1e12:.3g}, float32 (TF32 off) "
        f"{peaks['float32'] / 1e12:.3g} TFLOP/s; MFU is against {r['dtype']}"
    )
    print(f"{'phase':<16}{'median s':>10}{'tokens':>8}{'tokens/s':>12}{'TFLOP/s':>10}{'MFU':>8}")
    for name, row in r["phases"].items():
        print(
            f"{name:<16}{row['seconds']:>10.4f}{row['tokens']:>8.0f}{row['tokens_per_s']:>12.0f}"
            f"{row['flop_per_s'] / 1e12:>10.3g}{row['mfu']:>8.2%}"
        )
    # Random init samples near-uniformly over the tiny vocab, so a row hits EOS with p ~ 1/V per
    # token; the batch decodes until its last row stops, finished rows leaving the KV cache.
    print(
        f"completions: {r['completion_tokens_per_step']:.0f} tokens/step, mean length "
        f"{r['completion_len_mean']:.1f} of {plan['max_new_tokens']}, "
        f"{r['completion_tokens_per_s']:.0f} completion tokens/s. Random-init rows stop at EOS "
        "early; generation's 'tokens' counts the decoder inputs of the rows still running."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny models on CPU, 2 timed steps")
    args = parser.parse_args()
    plan = SMOKE_PLAN if args.smoke else GPU_PLAN
    if args.smoke:
        torch.set_num_threads(1)  # tiny matrices: a thread pool only adds stalls on a busy CPU
    library_verbosity()
    device = torch.cuda.get_device_name() if plan.device == "cuda" else platform.machine()
    print(f"device {device}   torch {torch.__version__}   transformers {transformers.__version__}")
    peaks = {name: matmul_peak(plan.mm_size, DTYPES[name], plan.device) for name in DTYPES}
    tokenizer = build_char_tokenizer(TASKS["arith"](None).alphabet)
    with tempfile.TemporaryDirectory(prefix="foresight-gpu-") as tmp:
        started = time.perf_counter()
        counts = {
            role: build_folder(Path(tmp) / role, tokenizer, sizes, seed, plan.dtype)
            for seed, (role, sizes) in enumerate(
                [("student", plan.student), ("teacher", plan.teacher)]
            )
        }
        cfg = make_config(plan, Path(tmp))
        trainer = setup(cfg)
        setup_s = time.perf_counter() - started
        tokens = dict.fromkeys(PHASES, 0)
        instrument(trainer, plan.device, tokens)
        records = run_steps(trainer, plan, tokens)
    phases = summarize(records, counts, peaks[plan.dtype])
    completion = statistics.median(r["tokens/completion"] for r in records)
    result = {
        "device": device,
        "dtype": plan.dtype,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "smoke": args.smoke,
        "plan": asdict(plan),
        "config": cfg.model_dump(mode="json"),
        "params": counts,
        "vocab": len(tokenizer),
        "setup_s": setup_s,
        "peak_flop_per_s": peaks,
        "phases": phases,
        "completion_tokens_per_step": completion,
        "completion_len_mean": statistics.median(r["rollout/len_mean"] for r in records),
        "completion_tokens_per_s": completion / phases["step (synced)"]["seconds"],
        "steps": records,
    }
    print_table(result)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
