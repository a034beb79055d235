"""The sections of a config: one small pydantic model per section, each key with its default,
its range and what it means.

Each section refuses unknown keys, wrong types and out-of-range values, and checks the keys that
only make sense together inside it; `config.Config` joins the sections and checks the rules that
span two of them.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class Section(BaseModel):
    # allow_inf_nan=False: .inf or .nan for a learning rate, a temperature, ... is refused at load.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


MAX_SEED = 2**63 - 1
MAX_THREADS = 4 * (os.cpu_count() or 1)


class ModelConfig(Section):
    student: str = Field(
        "models/arith/base",
        description="Student model: a Hugging Face model folder, or a Hub id such as "
        "Qwen/Qwen3-0.6B, read through the Hugging Face cache (downloaded when online; "
        "HF_HUB_OFFLINE, HF_HOME and HF_HUB_CACHE apply). An existing folder wins.",
    )
    student_revision: str | None = Field(
        None, description="Hub branch, tag or commit of a Hub-id student; null = main."
    )
    teacher: str | None = Field(
        "models/arith/teacher",
        description="Teacher model: a folder or a Hub id, as model.student; null for RL/SFT-free "
        "runs.",
    )
    teacher_revision: str | None = Field(
        None, description="Hub branch, tag or commit of a Hub-id teacher; null = main."
    )
    dtype: Literal["float32", "bfloat16"] = Field(
        "float32", description="Student compute dtype; bfloat16 = autocast over float32 weights."
    )
    teacher_dtype: Literal["float32", "bfloat16"] = Field("float32", description="Teacher dtype.")
    device: str = Field("cpu", description="Student device, e.g. cpu or cuda:0.")
    teacher_device: str = Field(
        "cpu", description="Teacher device (may differ from the student's)."
    )
    chat_template: Literal["auto", "always", "never"] = Field(
        "auto",
        description="Render prompts with the model's chat template: auto = when the student's "
        "tokenizer has one; never = raw prompts (with BOS).",
    )
    gradient_checkpointing: bool = Field(
        False, description="Recompute the student's layer activations in backward (less memory)."
    )
    allow_vocab_mismatch: bool = Field(
        False, description="Allow a teacher with another vocabulary (needs vocab_map); train flag."
    )
    vocab_map: Path | None = Field(
        None,
        description="JSON map of every student token id to a distinct teacher id (a list, or "
        '{"student id": teacher id}); sampled-token loss only.',
    )

    @model_validator(mode="after")
    def _vocab_map_iff_allowed(self) -> ModelConfig:
        if self.allow_vocab_mismatch and self.vocab_map is None:
            raise ValueError(
                "--allow-vocab-mismatch (model.allow_vocab_mismatch) needs model.vocab_map, a JSON "
                "file mapping every student token id to the teacher's id"
            )
        if self.vocab_map is not None and not self.allow_vocab_mismatch:
            raise ValueError(
                "model.vocab_map is read only with --allow-vocab-mismatch "
                "(model.allow_vocab_mismatch: true); pass the flag or remove the map"
            )
        return self


class TaskConfig(Section):
    name: str = Field(
        "arith", description="Embedded task name, or 'jsonl' for user rows (task.path)."
    )
    path: str | None = Field(
        None,
        description="JSONL or Parquet (.parquet) file, or a Hugging Face Hub dataset id "
        "(org/name), of prompt/answer[/solution][/split] rows; a prompt is a string or a list of "
        "{role, content} messages, or a row gives 'messages' (a last assistant message is the "
        "solution). Split by each row's 'split', else by val_path/test_path, else by a prompt "
        "hash (80/10/10).",
    )
    split: str | None = Field(
        None,
        description="Hub dataset only: the Hub split whose rows are the task (datasets' syntax, "
        "e.g. train or train[:2000]); null = train. Held-out rows come from it as from a file.",
    )
    too_long: Literal["error", "drop", "truncate_left"] = Field(
        "error",
        description="A prompt that leaves no room for rollout.max_new_tokens in the model's "
        "context: error (naming its line), drop the row, or cut the prompt's start.",
    )
    val_path: Path | None = Field(None, description="Validation rows (with test_path): own file.")
    test_path: Path | None = Field(None, description="Test rows (with val_path): own file.")
    verifier: str = Field(
        "exact",
        description="Reward of a user task's completion: exact, number, math (1 when right, else "
        "0), or python:module:function, function(completion, answer) -> bool or float; RL's "
        "reward, and eval accuracy is its mean.",
    )
    difficulty: int | None = Field(None, ge=1, description="Task difficulty; null = its default.")
    teacher_prompt_template: str | None = Field(
        None,
        description="Self-distillation: the teacher scores the student's completion after this "
        "text, with {prompt} replaced by the task prompt (privileged context the student never "
        "sees); null = the teacher sees the student's prompt.",
    )

    @field_validator("path", mode="before")
    @classmethod
    def _path_as_text(cls, value: Any) -> Any:
        """A pathlib.Path is accepted as its text (task.path may also be a Hub id)."""
        return os.fspath(value) if isinstance(value, os.PathLike) else value

    @model_validator(mode="after")
    def _path_iff_jsonl(self) -> TaskConfig:
        if (self.name == "jsonl") != (self.path is not None):
            raise ValueError("task.path is required exactly when task.name is 'jsonl'")
        if self.split is not None and self.name != "jsonl":
            raise ValueError(
                "task.split names a Hub dataset's split, so it needs task.name 'jsonl'"
            )
        if (self.val_path is None) != (self.test_path is None) or (
            self.val_path is not None and self.name != "jsonl"
        ):
            raise ValueError("task.val_path and task.test_path go together, with task.name 'jsonl'")
        template = self.teacher_prompt_template
        if template is not None and "{prompt}" not in template:
            raise ValueError("task.teacher_prompt_template must contain the placeholder {prompt}")
        return self


class RolloutConfig(Section):
    prompts_per_step: int = Field(64, ge=1, description="Prompts sampled per optimizer step (B).")
    max_new_tokens: int = Field(64, ge=1, description="Completion length cap in tokens.")
    temperature: float = Field(1.0, gt=0, description="Student sampling temperature (paper: 1).")
    group_size: int = Field(1, ge=1, description="Completions per prompt (GRPO's group, G).")


# The loss kinds each train.method takes, its default first; train/loss.py OBJECTIVES maps each
# pair to its loss.
LOSS_KINDS: dict[str, tuple[str, ...]] = {
    "opd": ("sampled_rkl", "reverse_kl", "forward_kl", "gjsd"),
    "rl": ("grpo",),
    "sft": ("cross_entropy",),
}
FULL_VOCABULARY_KINDS = ("reverse_kl", "forward_kl", "gjsd")


class LossConfig(Section):
    kind: (
        Literal["sampled_rkl", "reverse_kl", "forward_kl", "gjsd", "grpo", "cross_entropy"] | None
    ) = Field(
        None,
        description="opd: sampled_rkl (per-token advantage log p_T - log p_S, the paper's code) or "
        "a full-vocabulary divergence reverse_kl, forward_kl, gjsd; rl: grpo; sft: cross_entropy. "
        "null = the method's default (the first).",
    )
    beta: float = Field(
        0.5, ge=0, le=1, description="GJSD mixture weight (0 = forward KL, 1 = RKL)."
    )
    clip_eps: float = Field(0.2, gt=0, description="PPO clip range of the sampled-token loss.")
    chunk_tokens: int = Field(
        64, ge=1, description="Sequence positions per chunk of full-vocabulary log-softmax."
    )
    kl_coef: float = Field(0.0, ge=0, description="RL only: k3 KL penalty to the starting model.")
    teacher_topk: int | None = Field(
        None,
        ge=1,
        description="Full-vocabulary kinds only: compare the teacher's top-k tokens plus one tail "
        "bucket instead of all V (less memory for large vocabularies); null = all V.",
    )

    @model_validator(mode="after")
    def _topk_needs_full_vocabulary(self) -> LossConfig:
        if self.teacher_topk is not None and self.kind not in FULL_VOCABULARY_KINDS:
            raise ValueError(
                "loss.teacher_topk applies only to reverse_kl, forward_kl or gjsd; "
                "set loss.kind to one of them or remove loss.teacher_topk"
            )
        return self


class OptimConfig(Section):
    lr: float = Field(1e-3, gt=0, description="AdamW learning rate.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    betas: tuple[float, float] = Field((0.9, 0.95), description="AdamW betas, each in [0, 1).")
    grad_clip: float = Field(1.0, ge=0, description="Max global grad norm; 0 disables clipping.")
    warmup_steps: int = Field(0, ge=0, description="Linear warm-up steps.")
    schedule: Literal["constant", "cosine"] = Field("constant", description="LR after warm-up.")

    @model_validator(mode="after")
    def _betas_in_range(self) -> OptimConfig:
        if not all(0.0 <= beta < 1.0 for beta in self.betas):
            raise ValueError("optim.betas must both lie in [0, 1)")
        return self


class TrainConfig(Section):
    method: Literal["opd", "rl", "sft"] = Field(
        "opd",
        description="opd: student samples, teacher scores; rl: GRPO on the task's verifier; "
        "sft: cross-entropy on given completions (see sft_source).",
    )
    sft_source: Literal["solutions", "teacher"] = Field(
        "solutions",
        description="SFT completions: the task's worked solutions, or teacher samples "
        "(sequence-level distillation, cached in the run folder).",
    )
    sft_verified_only: bool = Field(
        False, description="SFT on teacher samples the verifier accepts only."
    )
    steps: int = Field(100, ge=1, description="Optimizer steps.")
    micro_batches: int = Field(1, ge=1, description="Gradient-accumulation chunks per step.")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="Seed of data order, sampling and init.")
    out_dir: Path = Field(Path("runs/opd"), description="Run folder.")
    checkpoint_every: int = Field(50, ge=1, description="Write a checkpoint every N steps.")
    checkpoint_at: list[int] = Field([], description="Extra checkpoint steps (dense early).")
    threads: int = Field(
        0, ge=0, le=MAX_THREADS, description="torch CPU threads; 0 = torch's default."
    )
    on_nonfinite: Literal["stop", "skip"] = Field(
        "stop",
        description="A step whose loss or gradient norm is not finite never updates the weights; "
        "stop: end the run (exit 2); skip: drop the step and go on (up to max_nonfinite steps).",
    )
    max_nonfinite: int = Field(10, ge=1, description="on_nonfinite=skip: stop after this many.")


class EvalConfig(Section):
    every: int = Field(50, ge=1, description="Evaluate every N steps (and at the end).")
    n_prompts: int = Field(256, ge=1, description="Held-out prompts per evaluation.")
    split: Literal["val", "test"] = Field("val", description="Held-out split used during training.")
    sampled: bool = Field(True, description="Also report accuracy of one sample at temperature 1.")
    teacher_kl: bool = Field(True, description="Also report the reverse KL to the teacher.")
    batch_size: int = Field(256, ge=1, description="Prompts per generation batch.")


# The experiment trackers accelerate's tracking module knows (accelerate.tracking's
# LOGGER_TYPE_TO_CLASS, which a test compares with this list), TensorBoard aside.
TRACKERS = ("wandb", "trackio", "mlflow", "comet_ml", "aim", "clearml", "dvclive", "swanlab")


class LogConfig(Section):
    tensorboard: bool = Field(True, description="Also write TensorBoard event files (RUN/tb).")
    report_to: list[str] = Field(
        [],
        description="Experiment trackers, through accelerate's tracking module: "
        f"{', '.join(TRACKERS)} (tensorboard here = log.tensorboard); each reads its own settings from the environment (WANDB_MODE, "
        "WANDB_DIR, MLFLOW_TRACKING_URI, ...). metrics.jsonl stays the source of truth.",
    )
    project: str = Field(
        "foresight", description="Project (or experiment) name the trackers file the run under."
    )
    progress: bool = Field(True, description="Show the progress bar.")
    progress_every: int = Field(
        0,
        ge=0,
        description="Without a terminal, print a plain progress line every N steps; 0 = about "
        "ten lines per run.",
    )

    @model_validator(mode="before")
    @classmethod
    def _tensorboard_in_report_to(cls, raw: Any) -> Any:
        """`report_to: [tensorboard, wandb]` as in transformers: tensorboard there is log.tensorboard."""
        if not isinstance(raw, dict) or "tensorboard" not in (raw.get("report_to") or []):
            return raw
        if raw.get("tensorboard") is False:
            raise ValueError(
                "log.report_to lists tensorboard but log.tensorboard is false; pick one"
            )
        others = [name for name in raw["report_to"] if name != "tensorboard"]
        return {**raw, "report_to": others, "tensorboard": True}

    @model_validator(mode="after")
    def _known_trackers(self) -> LogConfig:
        for name in self.report_to:
            if name not in TRACKERS:
                raise ValueError(
                    f"log.report_to names an unknown tracker '{name}'; use tensorboard, "
                    f"{', '.join(TRACKERS)}"
                )
        return self


class DynamicsConfig(Section):
    name_pattern: str | None = Field(
        None,
        description="Fallback regex with named groups 'layer' and 'kind' for tensor names that the "
        "built-in Llama/Qwen/Mistral/Gemma/GPT-2/GPT-NeoX rules do not map.",
    )
    energy_top_k: list[int] = Field(
        [1, 4, 16], description="k values of the energy share sum_{i<=k} s_i^2 / sum_j s_j^2."
    )
    sparsity_abs: list[float] = Field(
        [1e-6, 1e-5, 1e-4], description="Absolute thresholds: share of update entries below each."
    )
    sparsity_rel: list[float] = Field(
        [0.01, 0.1], description="Thresholds as fractions of the base weight's RMS."
    )
    alignment_k: int = Field(20, ge=1, description="Paper's alignment: mean over k = 1..K (K=20).")
    overlap_k: list[int] = Field(
        [1, 5, 20], description="Subspace sizes k of the overlap ||U_t,k^T U_T,k||_F^2 / k."
    )
    svd_solver: Literal["auto", "lowrank", "exact"] = Field(
        "auto",
        description="Top singular vectors: auto = exact SVD for matrices with a side <= 128 "
        "(as fast there), randomized (torch.svd_lowrank) above; or force exact or lowrank.",
    )
    svd_niter: int = Field(4, ge=0, description="Power iterations of the randomized solver.")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="Seed of the randomized solver.")
    probes: list[Literal["scaling", "embedding_swap", "window", "truncation", "rescaling"]] = Field(
        ["scaling", "embedding_swap", "window", "truncation", "rescaling"],
        description="Functional probes run when a scorer is given.",
    )
    scaling_alphas: list[float] = Field(
        [0.0, 0.25, 0.5, 0.75, 1.0],
        description="Multipliers alpha in [0, 1] of W_base + alpha dW_T.",
    )
    window: int = Field(
        8, ge=0, description="Half-width w of the sliding window l-w..l+w (paper: 8)."
    )
    truncation_pct: list[float] = Field(
        [1.0, 5.0, 10.0, 25.0, 50.0], description="Percent of the rank kept by rank truncation."
    )
    rescale_betas: list[float] = Field(
        [0.0, 0.5, 1.0], description="beta of dW_t [1 + beta (||dW_T|| / ||dW_t|| - 1)]."
    )
    n_prompts: int = Field(256, ge=1, description="Prompts scored per probe evaluation.")
    threads: int = Field(
        1,
        ge=0,
        le=MAX_THREADS,
        description="torch CPU threads for the SVDs; 0 = torch's default. On a machine shared with "
        "other jobs, more than 1 can make small SVDs 10-100x slower (OpenMP threads spin).",
    )

    @model_validator(mode="after")
    def _check_ranges(self) -> DynamicsConfig:
        if self.name_pattern is not None:
            try:
                groups = re.compile(self.name_pattern).groupindex
            except re.error as exc:
                raise ValueError(f"name_pattern is not a valid regex ({exc})") from None
            if not {"layer", "kind"} <= set(groups):
                raise ValueError("name_pattern needs named groups (?P<layer>...) and (?P<kind>...)")
        if any(not 0.0 <= alpha <= 1.0 for alpha in self.scaling_alphas):
            raise ValueError("every scaling alpha must lie in [0, 1]")
        if any(not 0.0 < pct <= 100.0 for pct in self.truncation_pct):
            raise ValueError("every truncation percent must lie in (0, 100]")
        if any(k < 1 for k in [*self.energy_top_k, *self.overlap_k]):
            raise ValueError("energy_top_k and overlap_k values must be at least 1")
        return self


class EffOPDConfig(Section):
    enabled: bool = Field(False, description="Run the EffOPD extrapolation search during training.")
    schedule: Literal["pow2", "every", "straight"] = Field(
        "pow2",
        description="pow2: search after steps 1, 2, 4, 8, ... (paper); every: every N steps; "
        "straight: every N steps when the last two N-step segments of Δ have cosine >= min_cosine.",
    )
    every: int = Field(8, ge=1, description="N of the 'every' and 'straight' schedules.")
    min_cosine: float = Field(
        0.5, ge=-1, le=1, description="The 'straight' schedule's cosine threshold."
    )
    multipliers: list[float] = Field(
        [2.0, 4.0, 6.0, 8.0, 10.0], description="Candidates W_t + m·Δ tried in order (paper: 2k)."
    )
    accept: Literal["ge", "gt"] = Field(
        "ge",
        description="Accept when the score is >= (paper) or > (official code) the best so far.",
    )
    min_gain: float = Field(
        0.0, ge=0, description="A candidate must beat the best score by this much (paper: 0)."
    )
    signal: Literal["accuracy", "kl"] = Field(
        "accuracy",
        description="accuracy: one T=1 sample per prompt, verified (paper); kl: minus the "
        "full-vocabulary reverse KL to the teacher on completions sampled once per search.",
    )
    direction: Literal["anchor", "average"] = Field(
        "anchor",
        description="anchor: candidates along Δ = W_t − anchor (paper); average: along W_t minus an "
        "exponential average of the weights since the anchor (the recent direction), at ‖Δ‖.",
    )
    average_beta: float = Field(
        0.9, gt=0, lt=1, description="Decay of the 'average' direction's weight average per step."
    )
    n_prompts: int = Field(
        50, ge=1, description="Validation prompts, fixed for the run (paper: 50)."
    )
    modules: list[str] = Field(
        ["q", "k", "v", "o", "gate", "up", "down"],
        description="Module kinds extrapolated (attention and MLP weights, as in the paper).",
    )


class LoraConfig(Section):
    enabled: bool = Field(False, description="Train LoRA adapters (peft) instead of the student.")
    r: int = Field(8, ge=1, description="Adapter rank R.")
    alpha: float = Field(16.0, gt=0, description="LoRA alpha: the update is B·A·alpha/R.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the adapters' input.")
    target_modules: list[str] = Field(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        description="Leaf names of the linear layers that get adapters (Llama/Qwen names).",
    )
