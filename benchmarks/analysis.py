"""Time `foresight.dynamics.analyze` on a synthetic SmolLM2-135M-sized series of 10 checkpoints.

    .venv/bin/python benchmarks/analysis.py                      # the full-size run (~5.5 GB temp)
    .venv/bin/python benchmarks/analysis.py --layers 4 --checkpoints 3   # a quick look

A child process writes a random base (LlamaConfig: hidden 576, intermediate 1536, 30 layers,
9 heads, 3 kv heads, vocab 49152, tied embeddings) and checkpoints whose updates are a planted
rank-8 direction drifting towards its final value plus noise, as sharded safetensors folders in a
temp dir. Generating in a child keeps its memory out of this process's peak RSS, which
(`resource.getrusage`) then covers imports plus the analysis alone. Static metrics, direction and
allocation are timed inside `collect`/`analyze`; the rest of the wall time is writing tables and
rendering the report. One timed run after a small warm-up (a full run takes minutes, so no
median). Prints a table, then one JSON line with the machine, torch version and config.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import signal
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import torch

SHARD_BYTES = 150 * 2**20  # ~150 MB shards: several files per checkpoint, as real ones have


def model_config(layers: int):
    from transformers import LlamaConfig

    return LlamaConfig(
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=layers,
        num_attention_heads=9,
        num_key_value_heads=3,
        vocab_size=49152,
        tie_word_embeddings=True,
    )


def tensor_shapes(layers: int) -> dict[str, tuple[int, ...]]:
    """Llama tensor names and shapes, as save_pretrained writes them (tied: no lm_head)."""
    hidden, inter, kv = 576, 1536, 192  # kv = 3 kv heads x head dim 64
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (49152, hidden)}
    for i in range(layers):
        prefix = f"model.layers.{i}."
        shapes |= {
            prefix + "self_attn.q_proj.weight": (hidden, hidden),
            prefix + "self_attn.k_proj.weight": (kv, hidden),
            prefix + "self_attn.v_proj.weight": (kv, hidden),
            prefix + "self_attn.o_proj.weight": (hidden, hidden),
            prefix + "mlp.gate_proj.weight": (inter, hidden),
            prefix + "mlp.up_proj.weight": (inter, hidden),
            prefix + "mlp.down_proj.weight": (hidden, inter),
            prefix + "input_layernorm.weight": (hidden,),
            prefix + "post_attention_layernorm.weight": (hidden,),
        }
    shapes["model.norm.weight"] = (hidden,)
    return shapes


def make_tensor(name: str, shape: tuple[int, ...], progress: float) -> torch.Tensor:
    """Base weight plus the update at `progress` (0 = base); reproducible per name, no state kept.

    The update is progress * (final rank-8 direction) + (1 - progress) * (a rank-8 detour) +
    noise, so early checkpoints point partly elsewhere and align with the final one over time.
    """
    generator = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    if len(shape) == 1:
        base = torch.ones(shape)
        return base + progress * 0.01 * torch.randn(shape, generator=generator)
    base = 0.02 * torch.randn(shape, generator=generator)
    if progress == 0.0:
        return base
    m, n = shape
    final = torch.randn(m, 8, generator=generator) @ torch.randn(8, n, generator=generator)
    detour = torch.randn(m, 8, generator=generator) @ torch.randn(8, n, generator=generator)
    noise = torch.randn(shape, generator=generator)
    update = progress * final + (1 - progress) * detour  # (m, n), rank <= 16
    return base + 2e-4 * update + 2e-5 * progress * noise


def write_folder(folder: Path, shapes: dict[str, tuple[int, ...]], progress: float) -> None:
    """One checkpoint folder: safetensors shards plus model.safetensors.index.json."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    shard: dict[str, torch.Tensor] = {}
    weight_map: dict[str, str] = {}
    shard_bytes, index = 0, 0

    def flush() -> None:
        nonlocal shard, shard_bytes, index
        file = f"model-{index:05d}.safetensors"
        save_file(shard, folder / file)
        weight_map.update(dict.fromkeys(shard, file))
        shard, shard_bytes, index = {}, 0, index + 1

    for name, shape in shapes.items():
        tensor = make_tensor(name, shape, progress)
        if shard and shard_bytes + tensor.numel() * 4 > SHARD_BYTES:
            flush()
        shard[name] = tensor
        shard_bytes += tensor.numel() * 4
    flush()
    index_json = {"metadata": {}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index_json))


def generate(root: Path, layers: int, checkpoints: int) -> None:
    shapes = tensor_shapes(layers)
    write_folder(root / "base", shapes, 0.0)
    model_config(layers).save_pretrained(root / "base")
    for i in range(1, checkpoints + 1):
        write_folder(root / f"step-{i * 100:06d}", shapes, i / checkpoints)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def warm_up() -> None:
    """First calls into LAPACK and the randomized solver pay one-off setup costs."""
    from foresight.dynamics.direction import top_left_vectors
    from foresight.dynamics.metrics import METRICS

    small = torch.randn(192, 576)
    for metric in METRICS.values():
        metric(torch.zeros_like(small), small)
    top_left_vectors(small, 20)


def run(root: Path, args: argparse.Namespace) -> dict:
    from foresight.config_sections import DynamicsConfig
    from foresight.dynamics import analyze

    warm_up()
    rss_before = peak_rss_mb()
    checkpoints = [(i * 100, root / f"step-{i * 100:06d}") for i in range(1, args.checkpoints + 1)]
    cfg = DynamicsConfig(svd_solver=args.solver, threads=args.threads)
    start = time.perf_counter()
    summary = analyze(root / "base", checkpoints, root / "report", cfg)
    wall = time.perf_counter() - start
    timings = summary["timings"]
    measured = sum(timings.values())
    checkpoint_mb = sum(p.stat().st_size for p in (root / "base").glob("*.safetensors")) / 2**20
    return {
        "time/read_s": timings["time/read_s"],
        "time/static_s": timings["time/static_s"],
        "time/direction_s": timings["time/direction_s"],
        "time/allocation_s": timings["time/allocation_s"],
        "time/tables_and_report_s": wall - measured,
        "time/total_s": wall,
        "memory/peak_rss_mb": peak_rss_mb(),
        "memory/rss_before_analysis_mb": rss_before,
        "memory/checkpoint_mb": checkpoint_mb,
        "memory/peak_over_checkpoint": peak_rss_mb() / checkpoint_mb,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument("--checkpoints", type=int, default=10)
    parser.add_argument("--solver", choices=["lowrank", "exact"], default="lowrank")
    parser.add_argument("--threads", type=int, default=1, help="dynamics.threads; 0 = torch's")
    parser.add_argument("--generate", type=Path, help=argparse.SUPPRESS)  # child process mode
    args = parser.parse_args()
    if args.generate:
        generate(args.generate, args.layers, args.checkpoints)
        return
    # Exit through Python on SIGTERM so the temp dir (~5.5 GB at full size) is still deleted.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with tempfile.TemporaryDirectory(prefix="foresight-bench-") as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        command = [sys.executable, __file__, "--generate", str(root)]
        command += ["--layers", str(args.layers), "--checkpoints", str(args.checkpoints)]
        subprocess.run(command, check=True)
        generate_s = time.perf_counter() - start
        results = run(root, args)
    print(f"synthetic series: {args.checkpoints} checkpoints x {args.layers} layers "
          f"(written in {generate_s:.0f} s), solver={args.solver}")  # fmt: skip
    print(f"{'measure':<30}{'value':>12}")
    for key, value in results.items():
        print(f"{key:<30}{value:>12.2f}")
    machine = {
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpus": os.cpu_count(),
        "load_avg_1m": os.getloadavg()[0],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "dtype": "float32",
    }
    config = {
        "layers": args.layers,
        "checkpoints": args.checkpoints,
        "solver": args.solver,
        "threads": args.threads or torch.get_num_threads(),
    }
    print(json.dumps({**machine, "config": config, "results": results}))


if __name__ == "__main__":
    main()
