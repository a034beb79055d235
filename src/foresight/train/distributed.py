"""Many processes behind one small object: `Distributed`, a no-op in a single process, FSDP2 under
torchrun. The loop calls its few methods and never asks which rank it is on except to log and save.

Run: torchrun --nproc-per-node N -m foresight train CONFIG.yaml
     (CUDA: the nccl backend, one device per local rank; CPU: gloo)

What each rank does in one step:
  - prompts: the step's global prompt list (from the run seed) is cut into N equal slices, one per
    rank (`share`), so the global batch never depends on N; sampling draws from a per-rank seed;
  - the student's layers are FSDP units and the whole model the root unit (`shard`). The decoder
    runs through the root's forward (see `scoring.hidden_states`), and FSDP averages gradients;
  - loss: each rank divides its token sum by the *global* token count (`sum`), and its backward is
    scaled by N (`world`) to undo FSDP's average, so the gradient is the single-process token-mean;
  - generation, evaluation and EffOPD's validation run with every unit gathered (`gathered`): their
    forward counts differ by rank (rows stop at EOS), which per-layer collectives could not survive;
  - rank 0 alone logs and writes checkpoints, from full state dicts gathered to its CPU (`save`),
    so a checkpoint is the same Hugging Face folder a single process writes.
The teacher is not sharded: each rank holds a full copy (it is frozen and needs no optimizer state).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

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
from foresight.config import Config
from foresight.effopd.search import TENSOR_STATES
from foresight.errors import UserError


def is_sharded(model: torch.nn.Module | None) -> bool:
    return isinstance(model, FSDPModule)


class Distributed:
    """This process's place among the processes of a run (rank 0 of 1 without torchrun)."""

    def __init__(self, rank: int = 0, world: int = 1, local_rank: int = 0) -> None:
        self.rank, self.world, self.local_rank = rank, world, local_rank
        self.main = rank == 0

    @classmethod
    def from_env(cls, device: str) -> Distributed:
        """Join the process group torchrun describes (WORLD_SIZE > 1); one process otherwise."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if not dist.is_initialized():
            cuda = device.startswith("cuda")
            if cuda:
                if not torch.cuda.is_available():
                    raise UserError(f"model.device is {device} but CUDA is not available; use cpu.")
                torch.cuda.set_device(local_rank)
            dist.init_process_group("nccl" if cuda else "gloo")
        return cls(dist.get_rank(), dist.get_world_size(), local_rank)

    def close(self) -> None:
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()  # a library call leaves the process as it found it

    def check(self, cfg: Config) -> Config:
        """Refuse what a multi-process run cannot do; return `cfg` with this rank's GPU."""
        if self.world == 1:
            return cfg
        per_rank = cfg.rollout.prompts_per_step // self.world
        if cfg.rollout.prompts_per_step % self.world:
            raise UserError(
                f"rollout.prompts_per_step ({cfg.rollout.prompts_per_step}) must divide evenly "
                f"over {self.world} processes; make it a multiple of {self.world}."
            )
        if cfg.train.micro_batches > per_rank:
            raise UserError(
                f"train.micro_batches ({cfg.train.micro_batches}) exceeds the {per_rank} prompts "
                "each process gets; lower it or raise rollout.prompts_per_step."
            )
        if cfg.lora.enabled:
            raise UserError(
                "lora.enabled runs in a single process only (FSDP2 shards full weights); "
                "drop torchrun or set lora.enabled=false."
            )
        if cfg.train.method == "sft" and cfg.train.sft_source == "teacher":
            raise UserError(
                "train.sft_source=teacher caches the teacher's samples in one file and runs in a "
                "single process only; drop torchrun or use train.sft_source=solutions."
            )
        on_gpu = {
            key: f"cuda:{self.local_rank}" if value.startswith("cuda") else value
            for key, value in (
                ("device", cfg.model.device),
                ("teacher_device", cfg.model.teacher_device),
            )
        }
        return cfg.model_copy(update={"model": cfg.model.model_copy(update=on_gpu)})

    # -- the step ---------------------------------------------------------------------------------
    def share(self, items: list) -> list:
        """This rank's contiguous slice of the step's global list (equal sizes, see `check`)."""
        per_rank = len(items) // self.world
        return items[self.rank * per_rank : (self.rank + 1) * per_rank]

    def seed(self, seed: int) -> int:
        """Rank 0 keeps the single-process seed; other ranks get seeds far from any stream seed."""
        return seed if self.rank == 0 else (seed ^ (self.rank << 48)) % 2**63

    def sum(self, values: list[float] | torch.Tensor) -> torch.Tensor:
        """Element-wise sum over ranks, in float64 on the CPU."""
        tensor = torch.as_tensor(values, dtype=torch.float64).detach().clone()
        if self.world == 1:
            return tensor
        tensor = tensor.to(_comm_device())
        dist.all_reduce(tensor)
        return tensor.cpu()

    def gathered(self, model: torch.nn.Module):
        """Every FSDP unit all-gathered for the block, so ranks may run different numbers of
        forwards (generation, evaluation); a no-op for a model that is not sharded."""
        return _gathered(model) if is_sharded(model) else nullcontext()

    def scorer(
        self, score: Callable[[torch.nn.Module], float]
    ) -> Callable[[torch.nn.Module], float]:
        """`score` of the gathered model, rank 0's value on every rank: EffOPD's accept/reject
        decisions must agree across ranks."""
        if self.world == 1:
            return score

        def shared(model: torch.nn.Module) -> float:
            with self.gathered(model):
                value = torch.tensor([score(model)], dtype=torch.float64, device=_comm_device())
            dist.broadcast(value, src=0)
            return float(value[0])

        return shared

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    # -- set-up and checkpoints -------------------------------------------------------------------
    def shard(self, model: torch.nn.Module) -> torch.nn.Module:
        """FSDP2 over the student: one unit per decoder layer, the rest (embeddings, final norm,
        LM head) in the root unit."""
        if self.world == 1:
            return model
        # The root returns hidden states that are views; nothing here modifies them in place.
        warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
        for layer in model.get_decoder().layers:
            fully_shard(layer)
        fully_shard(model)
        # FSDP picks its root at the first forward: run it through the root now, so that no later
        # call of a lone layer (under `gathered`) can claim the role.
        with torch.no_grad():
            model(input_ids=torch.zeros((1, 1), dtype=torch.long, device=model.device))
        model.reshard()
        return model

    def save(
        self, run_dir: Path, step: int, model, tokenizer, cfg: Config, optimizer, state: dict
    ) -> None:
        """Checkpoint `step`: under FSDP2 the full state is gathered to rank 0 (every rank calls
        this), which alone writes the same Hugging Face folder as a single process."""
        if not is_sharded(model):
            state = {"optimizer": optimizer.state_dict(), **state}
            save_checkpoint(run_dir, step, model, tokenizer, cfg, state)
            return
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        weights = get_model_state_dict(model, options=options)
        by_name = get_optimizer_state_dict(model, optimizer, options=options)
        state = {"optimizer": _by_index(by_name, _optimizer_names(model, optimizer)), **state}
        if "effopd" in state:  # its anchor (and 'straight' segment) gathered from the shards
            params = dict(model.named_parameters())
            state["effopd"] = {
                key: {n: _full(params[n], shard) for n, shard in value.items()}
                if key in TENSOR_STATES
                else value
                for key, value in state["effopd"].items()
            }
        if self.main:
            with _plain_class(model):
                save_checkpoint(run_dir, step, model, tokenizer, cfg, state, weights)
        self.barrier()

    def load_optimizer(self, model, optimizer: torch.optim.Optimizer, state: dict) -> None:
        """A single-process optimizer state (every rank reads the full file), into the shards."""
        if not is_sharded(model):
            optimizer.load_state_dict(state)
            return
        names = _optimizer_names(model, optimizer)
        by_name = {
            "state": {names[i]: value for i, value in state["state"].items()},
            "param_groups": [
                {**group, "params": [names[i] for i in group["params"]]}
                for group in state["param_groups"]
            ],
        }
        options = StateDictOptions(full_state_dict=True)
        set_optimizer_state_dict(model, optimizer, by_name, options=options)

    def local_weights(self, model, full: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Full tensors named like parameters (EffOPD's saved anchor) cut to this rank's shards
        (on the CPU)."""
        if not is_sharded(model):
            return full
        params = dict(model.named_parameters())
        return {
            name: distribute_tensor(
                whole.to(params[name].device), params[name].device_mesh, params[name].placements
            )
            .to_local()
            .cpu()
            for name, whole in full.items()
        }


def _comm_device() -> torch.device:
    """Where collectives' tensors live: nccl reduces only CUDA tensors, gloo CPU ones."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


@contextmanager
def _gathered(model: torch.nn.Module) -> Iterator[None]:
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


def _optimizer_names(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """Parameter names in the optimizer's order: its single-process state_dict numbers them so."""
    names = {id(param): name for name, param in model.named_parameters()}
    return [names[id(param)] for group in optimizer.param_groups for param in group["params"]]


def _by_index(by_name: dict, names: list[str]) -> dict:
    """A full optimizer state keyed by parameter name -> single-process keys (indices), so a
    checkpoint is the same whichever way it was written."""
    index = {name: i for i, name in enumerate(names)}
    return {
        "state": {index[name]: value for name, value in by_name.get("state", {}).items()},
        "param_groups": [
            {**group, "params": [index[name] for name in group["params"]]}
            for group in by_name.get("param_groups", [])
        ],
    }


def _full(param: DTensor, shard: torch.Tensor) -> torch.Tensor:
    whole = DTensor.from_local(
        shard.to(param.device),
        param.device_mesh,
        param.placements,
        shape=param.shape,
        stride=param.stride(),
    )
    return whole.full_tensor().cpu()


@contextmanager
def _plain_class(model: torch.nn.Module) -> Iterator[None]:
    """The model as its Hugging Face class for `save_pretrained`: FSDP2 swaps in a subclass named
    FSDP<Name>, which would otherwise be written to config.json as the architecture."""
    sharded_class = type(model)
    model.__class__ = next(
        c
        for c in sharded_class.__mro__[1:]
        if c is not FSDPModule and not issubclass(c, FSDPModule)
    )
    try:
        yield
    finally:
        model.__class__ = sharded_class


def grad_norm_value(norm: torch.Tensor) -> float:
    """clip_grad_norm_'s total norm as a float (a DTensor under FSDP2)."""
    return float(norm.full_tensor() if isinstance(norm, DTensor) else norm)
