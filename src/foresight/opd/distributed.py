"""Many processes: the student sharded with FSDP2 (`torch.distributed.fsdp.fully_shard`) under
torchrun, every other part of the loop unchanged.

Run: torchrun --nproc-per-node N -m foresight train CONFIG.yaml
     (CUDA: the nccl backend, one device per local rank; CPU: gloo)

What each rank does in one step:
  - prompts: the step's global prompt list (from the run seed) is cut into N equal slices, one per
    rank, so the global batch never depends on N; sampling draws from a per-rank generator;
  - the student's layers are FSDP units and the whole model the root unit. The decoder runs through
    the root's forward (so its embeddings, final norm and LM head are gathered once and kept for the
    chunked LM head; see `scoring.hidden_states`), and FSDP averages gradients over ranks;
  - loss: each rank divides its token sum by the *global* token count, and its backward is scaled by
    N to undo FSDP's average, so the gradient is the single-process token-mean of the global batch;
  - generation, evaluation and EffOPD's validation run with every unit gathered (`gathered`): their
    forward counts differ by rank (rows stop at EOS), which per-layer collectives could not survive;
  - rank 0 alone logs and writes checkpoints, from full state dicts gathered to its CPU, so a
    checkpoint is the same Hugging Face folder a single process writes.
The teacher is not sharded: each rank holds a full copy (it is frozen and needs no optimizer state).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor

from foresight.checkpoint import save_checkpoint
from foresight.errors import UserError


@dataclass(frozen=True)
class Ranks:
    rank: int
    world: int
    local_rank: int

    @property
    def main(self) -> bool:
        return self.rank == 0


SINGLE = Ranks(0, 1, 0)


def current_ranks() -> Ranks:
    """This process's place in the process group (a single process when there is none)."""
    if not (dist.is_available() and dist.is_initialized()):
        return SINGLE
    return Ranks(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def init_from_env(device: str) -> bool:
    """Join the process group torchrun describes (WORLD_SIZE > 1); True when this call created it,
    so that the caller also destroys it. nccl for CUDA students, gloo on the CPU."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return False
    cuda = device.startswith("cuda")
    if cuda:
        if not torch.cuda.is_available():
            raise UserError(f"model.device is {device} but CUDA is not available; set it to cpu.")
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo")
    return True


def rank_device(device: str, ranks: Ranks) -> str:
    """cuda / cuda:K -> this rank's GPU, cuda:LOCAL_RANK (one GPU per process); cpu unchanged."""
    return f"cuda:{ranks.local_rank}" if ranks.world > 1 and device.startswith("cuda") else device


def check_divisible(prompts_per_step: int, micro_batches: int, ranks: Ranks) -> None:
    if prompts_per_step % ranks.world:
        raise UserError(
            f"rollout.prompts_per_step ({prompts_per_step}) must divide evenly over "
            f"{ranks.world} processes; make it a multiple of {ranks.world}."
        )
    if micro_batches > prompts_per_step // ranks.world:
        raise UserError(
            f"train.micro_batches ({micro_batches}) exceeds the {prompts_per_step // ranks.world} "
            "prompts each process gets; lower it or raise rollout.prompts_per_step."
        )


def rank_share(items: list, ranks: Ranks | None = None) -> list:
    """This rank's contiguous slice of the step's global list (equal sizes, checked at set-up)."""
    ranks = ranks or current_ranks()
    per_rank = len(items) // ranks.world
    return items[ranks.rank * per_rank : (ranks.rank + 1) * per_rank]


def rank_seed(seed: int, ranks: Ranks | None = None) -> int:
    """Rank 0 keeps the single-process seed; other ranks get seeds far from any stream seed."""
    ranks = ranks or current_ranks()
    return seed if ranks.rank == 0 else seed ^ (ranks.rank << 48)


def is_sharded(model: torch.nn.Module | None) -> bool:
    return isinstance(model, FSDPModule)


def shard_student(model: torch.nn.Module) -> torch.nn.Module:
    """FSDP2 over the student: one unit per decoder layer, the rest (embeddings, final norm, LM head)
    in the root unit. A no-op in a single process."""
    if current_ranks().world == 1:
        return model
    # The root returns hidden states that are views; nothing here modifies them in place.
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
    for layer in model.get_decoder().layers:
        fully_shard(layer)
    fully_shard(model)
    # FSDP picks its root at the first forward; run it through the root now, so that no later
    # call of a lone layer (under gathered) can claim the role.
    with torch.no_grad():
        model(input_ids=torch.zeros((1, 1), dtype=torch.long, device=model.device))
    model.reshard()
    return model


@contextmanager
def gathered(model: torch.nn.Module) -> Iterator[None]:
    """Every FSDP unit of `model` all-gathered for the block, with no reshard after each forward:
    forwards inside then run no collective, so ranks may run different numbers of them."""
    if not is_sharded(model):
        yield
        return
    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for unit in units:
        unit.unshard()
    model.set_reshard_after_forward(False)
    try:
        yield
    finally:
        for unit in units:
            # The root keeps FSDP's own choice (no reshard after forward: the chunked LM head
            # uses its weights after the forward returns); the layers reshard as before.
            unit.set_reshard_after_forward(unit is not model, recurse=False)
            unit.reshard()


def _comm_device() -> torch.device:
    """Where collectives' tensors live: nccl reduces only CUDA tensors, gloo CPU ones."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def sum_over_ranks(values: list[float] | torch.Tensor) -> torch.Tensor:
    """Element-wise sum over ranks (float64), or the values themselves in a single process."""
    tensor = torch.as_tensor(values, dtype=torch.float64).detach().clone()
    if current_ranks().world == 1:
        return tensor
    tensor = tensor.to(_comm_device())
    dist.all_reduce(tensor)
    return tensor.cpu()


def mean_over_ranks(value: float) -> float:
    return float(sum_over_ranks([value])[0]) / current_ranks().world


def from_rank0(value: float) -> float:
    """Rank 0's value on every rank: decisions (EffOPD's acceptance) must agree across ranks."""
    if current_ranks().world == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=_comm_device())
    dist.broadcast(tensor, src=0)
    return float(tensor[0])


def full_value(tensor: torch.Tensor) -> torch.Tensor:
    """A DTensor's global value (e.g. clip_grad_norm_'s total norm), else the tensor."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def local(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor parameter (a view: writing to it writes the parameter)."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def sharded_validator(validator: Callable) -> Callable:
    """An EffOPD validator (effopd/search.py) that scores the gathered model and returns rank 0's
    score, so every rank takes the same accept/reject decisions. The candidates themselves are
    written to the local shards (effopd/extrapolate.py) between scores."""

    def begin(model: torch.nn.Module, step: int) -> Callable[[torch.nn.Module], float]:
        with gathered(model):
            score = validator(model, step)

        def sharded_score(candidate: torch.nn.Module) -> float:
            with gathered(candidate):
                return from_rank0(score(candidate))

        return sharded_score

    return begin


def _optimizer_options(**extra: Any) -> StateDictOptions:
    return StateDictOptions(full_state_dict=True, **extra)


def full_checkpoint_state(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, effopd_state: dict | None
) -> tuple[dict[str, torch.Tensor], dict, dict | None]:
    """Model, optimizer and EffOPD anchor as full tensors on rank 0's CPU (collective: all ranks
    call it). The optimizer state uses single-process keys (parameter indices), so a checkpoint is
    the same whichever way it was written."""
    options = _optimizer_options(cpu_offload=True)
    model_state = get_model_state_dict(model, options=options)
    by_name = get_optimizer_state_dict(model, optimizer, options=options)
    index = {name: i for i, name in enumerate(optimizer_names(model, optimizer))}
    optimizer_state = {
        "state": {index[name]: value for name, value in by_name.get("state", {}).items()},
        "param_groups": [
            {**group, "params": [index[name] for name in group["params"]]}
            for group in by_name.get("param_groups", [])
        ],
    }
    if effopd_state is not None:
        params = dict(model.named_parameters())
        anchor = {
            name: _full(params[name], shard) for name, shard in effopd_state["anchor"].items()
        }
        effopd_state = {**effopd_state, "anchor": anchor}
    return model_state, optimizer_state, effopd_state


def _full(param: DTensor, shard: torch.Tensor) -> torch.Tensor:
    whole = DTensor.from_local(
        shard.to(param.device),
        param.device_mesh,
        param.placements,
        shape=param.shape,
        stride=param.stride(),
    )
    return whole.full_tensor().cpu()


def optimizer_names(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """Parameter names in the optimizer's order: its single-process state_dict numbers them so."""
    names = {id(param): name for name, param in model.named_parameters()}
    return [names[id(param)] for group in optimizer.param_groups for param in group["params"]]


def load_optimizer_state(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict
) -> None:
    """Load a single-process optimizer state (every rank holds the full file), into the shards
    under FSDP2."""
    if not is_sharded(model):
        optimizer.load_state_dict(state)
        return
    names = optimizer_names(model, optimizer)
    by_name = {
        "state": {names[i]: value for i, value in state["state"].items()},
        "param_groups": [
            {**group, "params": [names[i] for i in group["params"]]}
            for group in state["param_groups"]
        ],
    }
    set_optimizer_state_dict(model, optimizer, by_name, options=_optimizer_options())


def local_anchor(model: torch.nn.Module, anchor: dict[str, torch.Tensor]) -> dict:
    """A checkpoint's full EffOPD anchor cut to this rank's shards (on the CPU, as `snapshot`);
    unchanged in a single process."""
    if not is_sharded(model):
        return anchor
    params = dict(model.named_parameters())
    return {
        name: distribute_tensor(
            full.to(params[name].device), params[name].device_mesh, params[name].placements
        )
        .to_local()
        .cpu()
        for name, full in anchor.items()
    }


def save_sharded_checkpoint(
    run_dir: Path,
    step: int,
    model: torch.nn.Module,
    tokenizer: Any,
    cfg: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    effopd_state: dict | None,
) -> None:
    """Checkpoint `step` of a sharded run: the full state gathered to rank 0 (all ranks call it),
    which alone writes the same Hugging Face folder as a single process."""
    weights, optimizer_state, effopd_state = full_checkpoint_state(model, optimizer, effopd_state)
    if current_ranks().main:
        state = {"optimizer": optimizer_state, "scheduler": scheduler.state_dict()}
        if effopd_state is not None:
            state["effopd"] = effopd_state
        with plain_class(model):
            save_checkpoint(run_dir, step, model, tokenizer, cfg, state, weights)
    barrier()


@contextmanager
def plain_class(model: torch.nn.Module) -> Iterator[None]:
    """The model as its Hugging Face class for `save_pretrained`: FSDP2 swaps in a subclass named
    FSDP<Name>, which would otherwise be written to config.json as the architecture."""
    sharded_class = type(model)
    if is_sharded(model):
        model.__class__ = next(
            c
            for c in sharded_class.__mro__[1:]
            if c is not FSDPModule and not issubclass(c, FSDPModule)
        )
    try:
        yield
    finally:
        model.__class__ = sharded_class


def barrier() -> None:
    if current_ranks().world > 1:
        dist.barrier()


def on_rank_devices(cfg: Any, ranks: Ranks) -> Any:
    """`cfg` with this rank's GPU for the student and teacher (the saved config keeps the user's)."""
    model = cfg.model.model_copy(
        update={
            "device": rank_device(cfg.model.device, ranks),
            "teacher_device": rank_device(cfg.model.teacher_device, ranks),
        }
    )
    return cfg.model_copy(update={"model": model})


def check_config(cfg: Any, ranks: Ranks) -> None:
    """What a multi-process run cannot do, refused before anything is loaded."""
    check_divisible(cfg.rollout.prompts_per_step, cfg.train.micro_batches, ranks)
    if cfg.lora.enabled:
        raise UserError(
            "lora.enabled runs in a single process only for now (FSDP2 shards full weights); "
            "drop torchrun or set lora.enabled=false."
        )
    if cfg.train.method == "sft" and cfg.train.sft_source == "teacher":
        raise UserError(
            "train.sft_source=teacher caches the teacher's samples in one file and runs in a single "
            "process only; drop torchrun or use train.sft_source=solutions."
        )


class SilentLogger:
    """The logger of ranks other than 0: rank 0 alone writes metrics."""

    def log(self, step: int, metrics: dict[str, float]) -> None:
        pass

    def close(self) -> None:
        pass
