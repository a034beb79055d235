"""Models and tokenizers: build the tiny embedded models, load any HF causal LM, guard pairs.

A model is a local folder or a Hugging Face Hub id at a revision (hub.py finds it); loading goes
through transformers' own `from_pretrained`, so a Hub id uses the libraries' cache and offline switch.

The embedded models are Qwen3-style decoders with a char-level tokenizer built locally with the
`tokenizers` library, saved as ordinary Hugging Face folders (safetensors + config + tokenizer).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from foresight.errors import UserError
from foresight.hub import locate_model, one_line
from foresight.templates import check_templates, set_chat_mode, set_stop_ids
from foresight.vocab import MappedTeacher, check_vocab_map, read_vocab_map

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")

# Named sizes of the embedded decoder. "tiny" (~0.8M parameters) is the demo's; "small" (~5M) is
# the second size of the speed benchmark.
MODEL_SIZES: dict[str, dict[str, int]] = {
    "tiny": dict(
        hidden_size=128,
        intermediate_size=384,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
    ),
    "small": dict(
        hidden_size=256,
        intermediate_size=768,
        num_hidden_layers=6,
        num_attention_heads=8,
        num_key_value_heads=4,
        head_dim=32,
    ),
}

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def build_char_tokenizer(alphabet: str) -> PreTrainedTokenizerFast:
    """A char-level tokenizer over `alphabet`: one token per character plus pad/bos/eos/unk."""
    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS)}
    for char in sorted(set(alphabet)):
        vocab.setdefault(char, len(vocab))
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    # "[\s\S]" rather than "." so that newlines are tokens too.
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        padding_side="left",
    )


def build_tiny_model(
    vocab_size: int, size: str, seed: int, max_positions: int = 256
) -> Qwen3ForCausalLM:
    """A freshly initialised Qwen3-style decoder of a named size (seeded, so reproducible)."""
    config = Qwen3Config(
        vocab_size=vocab_size,
        max_position_embeddings=max_positions,
        tie_word_embeddings=False,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        **MODEL_SIZES[size],
    )
    torch.manual_seed(seed)
    return Qwen3ForCausalLM(config)


def load_model(
    name: str | Path,
    role: str,
    dtype: str = "float32",
    device: str = "cpu",
    gradient_checkpointing: bool = False,
    revision: str | None = None,
) -> PreTrainedModel:
    """Load an HF causal LM from a folder or a Hub id (at `revision`) onto `device`.

    Any architecture transformers knows, safetensors sharded or not; `gradient_checkpointing`
    recomputes each decoder layer's activations in backward instead of storing them."""
    source = locate_model(name, role, revision)
    check_device(device, role)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            source.name, **source.options(), dtype=DTYPES[dtype]
        )
    except (OSError, ValueError, SafetensorError) as exc:
        raise UserError(
            f"Could not load the {role} model from {source.name} ({one_line(exc)}); {source.fix()}."
        ) from None
    check_plain_head(model, role)
    if gradient_checkpointing:
        if not model.supports_gradient_checkpointing:
            raise UserError(
                f"The {role} architecture ({model.config.model_type}) does not support gradient "
                "checkpointing in transformers; set model.gradient_checkpointing: false."
            )
        # Non-reentrant: works with inputs that need no grad and with our chunked LM head.
        model.activation_checkpointing_enable({"use_reentrant": False})
    return model.to(device)


def check_device(device: str, role: str) -> None:
    """Fail with a UserError for a device name torch does not know or this machine does not have."""
    key = "device" if role == "student" else "teacher_device"
    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise UserError(
            f"model.{key} '{device}' is not a device name; use cpu, cuda or cuda:N."
        ) from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"model.{key} is '{device}' but this machine has no CUDA device; use cpu.")
    if parsed.type == "cuda" and (parsed.index or 0) >= torch.cuda.device_count():
        raise UserError(
            f"model.{key} is '{device}' but this machine has {torch.cuda.device_count()} CUDA "
            "devices; use cuda:0 .. cuda:N-1."
        )
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"model.{key} is '{device}' but MPS is not available here; use cpu.")
    if parsed.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"model.{key} '{device}' is not a device to train on; use cpu or cuda:N.")


def load_tokenizer(
    name: str | Path, role: str, chat_template: str = "auto", revision: str | None = None
) -> PreTrainedTokenizerFast:
    """Load the tokenizer saved beside a model (a folder or a Hub id at `revision`); generation pads
    on the left. `chat_template` (auto, always, never) decides whether prompts are rendered with
    its chat template."""
    source = locate_model(name, role, revision)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.name, **source.options())
    except (OSError, ValueError) as exc:
        raise UserError(
            f"The {role} model {source.name} has no usable tokenizer ({one_line(exc)}); "
            f"{'save one there' if source.is_local else source.fix()}."
        ) from None
    if tokenizer.eos_token_id is None:
        raise UserError(
            f"The {role} tokenizer of {source.name} has no EOS token; set eos_token and save it."
        )
    if tokenizer.pad_token_id is None:
        # Many chat models have no pad token: padding is masked out everywhere, so EOS can stand in.
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    set_chat_mode(tokenizer, chat_template, role)
    try:  # sampling also stops at the end tokens the model's generation_config lists
        extra = GenerationConfig.from_pretrained(source.name, **source.options()).eos_token_id
    except OSError:  # no generation_config.json: the tokenizer's EOS alone
        extra = None
    set_stop_ids(tokenizer, extra)
    return tokenizer


def check_pair(
    student_tokenizer: PreTrainedTokenizerFast,
    teacher_tokenizer: PreTrainedTokenizerFast,
    student: PreTrainedModel,
    teacher: PreTrainedModel,
    vocab_map: Path | None = None,
) -> torch.Tensor | None:
    """Refuse a teacher whose vocabulary, EOS or chat template differs: its log-probs would score
    other tokens, or the right tokens out of its own format.

    With `vocab_map` (train --allow-vocab-mismatch) the vocabularies may differ; the map is read
    and checked (vocab.py), must send the student's EOS to the teacher's, and the probe
    conversation must encode alike through it. Returns the map (V_S,) or None."""
    student_vocab = student.get_output_embeddings().weight.shape[0]
    teacher_vocab = teacher.get_output_embeddings().weight.shape[0]
    if vocab_map is not None:
        student_to_teacher = check_vocab_map(
            read_vocab_map(vocab_map), student_vocab, teacher_vocab, vocab_map
        )
        mapped_eos = int(student_to_teacher[student_tokenizer.eos_token_id])
        if mapped_eos != teacher_tokenizer.eos_token_id:
            raise UserError(
                f"model.vocab_map sends the student's EOS ({student_tokenizer.eos_token_id}) to "
                f"teacher id {mapped_eos}, not to the teacher's EOS "
                f"({teacher_tokenizer.eos_token_id}); map EOS onto EOS."
            )
        check_templates(student_tokenizer, teacher_tokenizer, student_to_teacher.tolist())
        return student_to_teacher
    mismatch = "or pass --allow-vocab-mismatch with model.vocab_map, a student-to-teacher id map"
    if student_tokenizer.get_vocab() != teacher_tokenizer.get_vocab():
        raise UserError(
            "The teacher's tokenizer vocabulary differs from the student's (OPD compares log-probs "
            f"of the same token ids); use a teacher trained with the same tokenizer, {mismatch}."
        )
    if student_tokenizer.eos_token_id != teacher_tokenizer.eos_token_id:
        raise UserError(
            f"The teacher's EOS id ({teacher_tokenizer.eos_token_id}) differs from the student's "
            f"({student_tokenizer.eos_token_id}); use models that share one tokenizer, {mismatch}."
        )
    if student_vocab != teacher_vocab:
        raise UserError(
            f"The teacher's output vocabulary ({teacher_vocab}) differs from the student's "
            f"({student_vocab}); use a teacher with the same vocabulary size, {mismatch}."
        )
    check_templates(student_tokenizer, teacher_tokenizer)
    return None


def paired_teacher(
    student_tokenizer: PreTrainedTokenizerFast,
    teacher_tokenizer: PreTrainedTokenizerFast,
    student: PreTrainedModel,
    teacher: PreTrainedModel,
    vocab_map: Path | None = None,
) -> PreTrainedModel | MappedTeacher:
    """`check_pair`, then the teacher as scoring sees it: itself, or read through the map."""
    student_to_teacher = check_pair(
        student_tokenizer, teacher_tokenizer, student, teacher, vocab_map
    )
    if student_to_teacher is None:
        return teacher
    return MappedTeacher(teacher, student_to_teacher).eval()  # a fixed target, like the teacher


# Config keys through which transformers' forward rescales or caps the LM head's logits, with the
# value that means "off". scoring.py applies get_output_embeddings() to the hidden states itself,
# so any of these would be silently skipped: the scores would not be the model's.
LOGIT_POSTPROCESSING = {
    "final_logit_softcapping": None,  # Gemma 2/3/4, VaultGemma: c * tanh(logits / c)
    "logit_scale": 1.0,  # Cohere, Cohere2: logits * s
    "logits_scaling": 1.0,  # Granite, GraniteMoE: logits / s
    "output_multiplier": 1.0,  # muP-style output scaling
    "lm_head_multiplier": 1.0,  # Falcon-H1: logits * m
}


def check_plain_head(model: PreTrainedModel, role: str) -> None:
    """Refuse a model whose logits are not exactly its output embeddings applied to the decoder's
    last hidden states (what scoring.py computes)."""
    if model.get_output_embeddings() is None:
        raise UserError(
            f"The {role} model ({model.config.model_type}) has no output embeddings (LM head); use "
            "a causal LM with one."
        )
    configs = [model.config, getattr(model.config, "text_config", None)]
    for config in filter(None, configs):
        for key, neutral in LOGIT_POSTPROCESSING.items():
            value = getattr(config, key, neutral)
            if value is not None and value != neutral:
                raise UserError(
                    f"The {role} model's config sets {key}={value}, a post-processing of the "
                    "logits that foresight's chunked scoring does not apply; use a model without "
                    "logit post-processing."
                )
    # Catch post-processing under names we do not know: one 4-token forward, compared both ways.
    ids = torch.arange(4, device=model.device)[None] % model.config.vocab_size  # (1, 4)
    with torch.no_grad():
        logits = model(input_ids=ids).logits  # (1, 4, V)
        head_logits = model.get_output_embeddings()(
            model.get_decoder()(input_ids=ids).last_hidden_state
        )  # (1, 4, V)
    if not bool(torch.isfinite(logits).all()):
        raise UserError(
            f"The {role} model gives NaN or inf logits, so its weights are broken (a diverged "
            "run's checkpoint?); use an earlier checkpoint."
        )
    if not torch.allclose(logits.float(), head_logits.float(), rtol=1e-3, atol=1e-4):
        raise UserError(
            f"The {role} model ({model.config.model_type}) post-processes its logits after the LM "
            "head, which foresight's chunked scoring would skip; use a model whose logits are "
            "the LM head applied to the last hidden states."
        )


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
