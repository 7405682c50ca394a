"""The trained result on disk: a PEFT adapter folder, or a whole Hugging Face model folder, each with the tokenizer.

Written into a temporary folder and renamed into place, so ``adapter/`` or ``model/`` is either
complete or absent.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Optional

import torch

from mftd.jobconfig import ADAPTER_METHODS
from mftd.protocol import ADAPTER_DIRNAME, FULL_MODEL_DIRNAME


def save_artifacts(model: torch.nn.Module, tokenizer: Any, job_dir: Path, method: str, chat_template: Optional[str] = None) -> Path:
    """Save the trained weights and the tokenizer for use outside mftd.

    LoRA: ``adapter/`` with ``adapter_config.json`` and ``adapter_model.safetensors``, loadable with
    ``PeftModel.from_pretrained(base_model, path)``. Full: ``model/`` loadable with
    ``AutoModelForCausalLM.from_pretrained(path)``.

    Args:
        model: the trained model (a ``PeftModel`` for LoRA).
        tokenizer: the tokenizer it was trained with.
        job_dir: the job's folder.
        method: ``lora``, ``dora`` or ``full``.
        chat_template: a template to save with the tokenizer (the fallback one, when training used it);
            it is set on ``tokenizer``.

    Returns:
        The artifact folder.
    """
    final = job_dir / (ADAPTER_DIRNAME if method in ADAPTER_METHODS else FULL_MODEL_DIRNAME)
    temporary = job_dir / f".tmp-{final.name}"
    if temporary.exists():
        shutil.rmtree(temporary)
    # Training may have switched the cache off for gradient checkpointing; whoever loads the result wants it on.
    base_config = model.get_base_model().config if hasattr(model, "get_base_model") else model.config
    base_config.use_cache = True
    model.save_pretrained(temporary, safe_serialization=True)
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    tokenizer.save_pretrained(temporary)
    if final.exists():
        shutil.rmtree(final)
    temporary.rename(final)
    return final
