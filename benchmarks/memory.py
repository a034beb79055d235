"""Peak memory of one OPD step for large vocabularies: full-vocabulary reverse KL against the
teacher's top-k tokens plus one tail bucket (`loss.teacher_topk`).

One step is what `train_step` does for a full-vocabulary kind after sampling: the teacher's hidden
states (no grad), `score_tokens` (chunked LM heads of both models, the divergence, the student's
recomputation in backward), the token-mean loss, backward, and the AdamW step. Sampling is left out:
its (B, V) logits are small next to the (B, C, V) chunks measured here. The rollout is a fixed random
batch of B rows of T tokens (prompt then completion), the same in every configuration.

Method: every configuration runs in a fresh Python process. After building both models and taking
one warm-up step (which allocates AdamW's state), the process resets its peak-RSS counter (Linux:
`echo 5 > /proc/self/clear_refs` resets VmHWM), reads its resting RSS, takes one step and reads
VmHWM; the step's peak is VmHWM minus the resting RSS. Repeated --repeats times per process; the
median is reported. RSS counts every allocation torch makes on the CPU (tracemalloc sees none).

Run: .venv/bin/python benchmarks/memory.py [--vocab 512 32768 152064] [--topk 64] [--hidden 64]
     [--batch 8] [--tokens 256] [--chunk 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time

import torch
import transformers

RESET_PEAK = "/proc/self/clear_refs"


def status_kib(field: str) -> int:
    """A field of /proc/self/status in KiB (VmRSS: resident now; VmHWM: peak since the reset)."""
    with open("/proc/self/status") as handle:
        lines = handle.read().splitlines()
    for line in lines:
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def build(vocab: int, hidden: int, seed: int) -> torch.nn.Module:
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    config = Qwen3Config(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=hidden // 2,
        max_position_embeddings=1024,
        tie_word_embeddings=False,
    )
    return Qwen3ForCausalLM(config)


def measure(args: argparse.Namespace, vocab: int, topk: int | None) -> dict:
    """Runs in the child process: warm up, then the peak of each measured step (MiB)."""
    from foresight.train.loss import masked_sum_loss
    from foresight.train.rollout import Rollout
    from foresight.train.scoring import score_tokens, teacher_hidden_states

    torch.set_num_threads(args.threads)
    student, teacher = build(vocab, args.hidden, 0), build(vocab, args.hidden, 1)
    teacher.requires_grad_(False).eval()
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (args.batch, args.tokens), generator=generator)  # (B, T)
    prompt = args.tokens // 4
    completion_mask = torch.zeros_like(ids)  # (B, T)
    completion_mask[:, prompt:] = 1
    positions = torch.arange(args.tokens).expand_as(ids)  # (B, T)
    rollout = Rollout(ids, torch.ones_like(ids), positions, completion_mask, prompt)

    def step() -> float:
        started = time.perf_counter()
        frozen_hidden = teacher_hidden_states(teacher, rollout)  # (B, T, H)
        scores = score_tokens(
            student, rollout, teacher, "reverse_kl", 0.5, args.chunk, frozen_hidden, topk
        )
        mask = rollout.completion_mask[:, 1:].float()  # (B, T-1)
        loss = masked_sum_loss(scores.divergence, mask, mask.sum())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - started

    step()  # warm-up: AdamW's state exists from here on
    peaks, seconds = [], []
    for _ in range(args.repeats):
        with open(RESET_PEAK, "w") as handle:
            handle.write("5")
        resting = status_kib("VmRSS")
        seconds.append(step())
        peaks.append((status_kib("VmHWM") - resting) / 1024)
    return {
        "vocab": vocab,
        "topk": topk,
        "peak_mib": statistics.median(peaks),
        "resting_mib": resting / 1024,
        "step_s": statistics.median(seconds),
    }


def run_child(args: argparse.Namespace, vocab: int, topk: int | None) -> dict:
    command = [sys.executable, __file__, "--child", str(vocab), str(topk or 0)]
    for name in ("hidden", "batch", "tokens", "chunk", "repeats", "threads"):
        command += [f"--{name}", str(getattr(args, name))]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, nargs="+", default=[512, 32768, 152064])
    parser.add_argument("--topk", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--chunk", type=int, default=64, help="loss.chunk_tokens")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--child", type=int, nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        vocab, topk = args.child
        print(json.dumps(measure(args, vocab, topk or None)))
        return
    print(
        f"one OPD step, reverse KL: B={args.batch} rows x T={args.tokens} tokens, hidden "
        f"{args.hidden}, chunk {args.chunk} positions; peak RSS above the resting process, "
        f"median of {args.repeats}"
    )
    header = f"{'vocab':>8} {'full MiB':>9} {f'top-{args.topk} MiB':>12} {'saving':>8}"
    print(header + f" {'full s':>7} {'top-k s':>8}")
    rows = []
    for vocab in args.vocab:
        full, topk = run_child(args, vocab, None), run_child(args, vocab, args.topk)
        ratio = full["peak_mib"] / topk["peak_mib"]
        rows.append({"vocab": vocab, "full": full, "topk": topk, "ratio": ratio})
        print(
            f"{vocab:>8} {full['peak_mib']:>9.0f} {topk['peak_mib']:>12.0f} {ratio:>7.1f}x"
            f" {full['step_s']:>7.2f} {topk['step_s']:>8.2f}"
        )
    machine = {
        "machine": platform.machine(),
        "processor": platform.processor(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": args.threads,
    }
    print(json.dumps({"benchmark": "memory", "topk": args.topk, "rows": rows, **machine}))


if __name__ == "__main__":
    main()
