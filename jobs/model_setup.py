"""Load a base model and its tokenizer from a local Hugging Face folder and make the right weights trainable."""

from __future__ import annotations

import ctypes
import warnings
from pathlib import Path
from typing import Any, Union

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PretrainedConfig, PreTrainedModel

from jobs.errors import JobConfigError, ModelNotUsableError
from mftd.modelinfo import TOKENIZER_FILE_SETS

ATTENTION_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj"]

# LoRA adapts the attention projections by default, the choice of the LoRA paper and of most recipes.
# GPT-2 fuses q, k and v into c_attn; "attn.c_proj" keeps its MLP's c_proj out.
DEFAULT_LORA_TARGETS: dict[str, list[str]] = {
    "qwen2": ATTENTION_PROJECTIONS,
    "qwen3": ATTENTION_PROJECTIONS,
    "llama": ATTENTION_PROJECTIONS,
    "mistral": ATTENTION_PROJECTIONS,
    "gemma": ATTENTION_PROJECTIONS,
    "gemma2": ATTENTION_PROJECTIONS,
    "gemma3": ATTENTION_PROJECTIONS,
    "gemma3_text": ATTENTION_PROJECTIONS,
    "gpt2": ["c_attn", "attn.c_proj"],
}
ALL_LINEAR = "all-linear"

# GPT-2 stores its linear layers as Conv1D, with weights transposed.
MODEL_TYPES_WITH_TRANSPOSED_LINEAR = {"gpt2"}

LoraTargets = Union[list[str], str]


def default_lora_targets(model_type: str) -> LoraTargets:
    """The modules LoRA adapts when the job names none: the attention projections, or all linear layers for unknown families."""
    targets = DEFAULT_LORA_TARGETS.get(model_type)
    return list(targets) if targets else ALL_LINEAR


def load_model_config(model_path: Path) -> PretrainedConfig:
    """The ``config.json`` of a model folder.

    Raises:
        ModelNotUsableError: the folder or its config is missing or unreadable.
    """
    if not Path(model_path).is_dir():
        raise ModelNotUsableError(f"model folder {model_path} does not exist; register the model again with a folder that exists")
    try:
        return AutoConfig.from_pretrained(model_path)
    except (OSError, ValueError) as error:
        raise ModelNotUsableError(f"model folder {model_path} has no usable config.json ({error}); point the model at a Hugging Face folder") from error


def load_tokenizer(model_path: Path) -> Any:
    """The model's tokenizer, with a pad token (the end-of-sequence token if it has none).

    Raises:
        ModelNotUsableError: no tokenizer in the folder, or one without an end-of-sequence token.
    """
    # Without these files transformers builds an empty tokenizer from the model family's defaults instead of failing.
    if not any(all((Path(model_path) / name).is_file() for name in file_set) for file_set in TOKENIZER_FILE_SETS):
        wanted = " or ".join("+".join(file_set) for file_set in TOKENIZER_FILE_SETS)
        raise ModelNotUsableError(f"model folder {model_path} has no tokenizer files ({wanted}); copy the tokenizer into it")
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path)
    except (OSError, ValueError) as error:
        raise ModelNotUsableError(f"model folder {model_path} has no usable tokenizer ({error}); add tokenizer.json and tokenizer_config.json") from error
    if tokenizer.eos_token_id is None:
        raise ModelNotUsableError(f"the tokenizer in {model_path} has no end-of-sequence token; set eos_token in tokenizer_config.json")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(model_path: Path, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    """The causal language model in ``model_path`` (single or sharded safetensors), in ``dtype``.

    Raises:
        ModelNotUsableError: the weights are missing or do not fit the config.
    """
    try:
        return AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)
    except (OSError, ValueError) as error:
        raise ModelNotUsableError(f"cannot load the model in {model_path} ({error}); check that its weights are complete") from error


def release_freed_memory() -> None:
    """Hand memory that glibc's allocator keeps after frees (loading leaves plenty) back to the system; a no-op elsewhere."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def enable_gradient_checkpointing(model: PreTrainedModel) -> None:
    """Recompute activations in the backward pass instead of keeping them (less memory, about a third more time)."""
    # Newer transformers renamed the method; non-reentrant checkpointing needs no input gradients for LoRA.
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False


def add_lora_adapter(
    model: PreTrainedModel, rank: int, alpha: float, dropout: float, target_modules: LoraTargets, use_dora: bool = False
) -> torch.nn.Module:
    """Wrap ``model`` in a PEFT LoRA model; only the adapter is trainable.

    The adapter's initial weights come from torch's global generator: seed it first.

    Args:
        model: the base model.
        rank: LoRA rank r.
        alpha: LoRA alpha (the update is scaled by alpha / r).
        dropout: dropout on the adapter input.
        target_modules: module names, or ``"all-linear"``.
        use_dora: train a DoRA adapter (LoRA plus a learned magnitude per output feature).

    Returns:
        The ``PeftModel``.

    Raises:
        JobConfigError: no module of the model matches ``target_modules``.
    """
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=target_modules,
        fan_in_fan_out=model.config.model_type in MODEL_TYPES_WITH_TRANSPOSED_LINEAR,
        task_type="CAUSAL_LM",
        use_dora=use_dora,
    )
    try:
        with warnings.catch_warnings():
            # peft still asks transformers by the deprecated name; the warning is noise in worker.log.
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            return get_peft_model(model, config)
    except ValueError as error:
        raise JobConfigError(
            f"lora_target_modules {target_modules!r} do not fit this {model.config.model_type} model ({error}); "
            f"name modules it has, use 'all-linear', or leave it out for the default"
        ) from error


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(all parameters, trainable parameters); tied weights count once."""
    parameters = list(model.parameters())
    return sum(p.numel() for p in parameters), sum(p.numel() for p in parameters if p.requires_grad)


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The trainable parameters by name (tied weights once), detached, for a checkpoint."""
    return {name: parameter.detach() for name, parameter in model.named_parameters() if parameter.requires_grad}


def load_trainable_state(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Copy a ``trainable_state`` back into ``model``.

    Raises:
        ValueError: the names or shapes differ from the model's trainable parameters.
    """
    parameters = {name: parameter for name, parameter in model.named_parameters() if parameter.requires_grad}
    if set(parameters) != set(tensors):
        missing, unexpected = sorted(set(parameters) - set(tensors)), sorted(set(tensors) - set(parameters))
        raise ValueError(f"trainable weights do not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    with torch.no_grad():
        for name, parameter in parameters.items():
            parameter.copy_(tensors[name])
