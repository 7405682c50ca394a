"""A job's config resolved once for its model and dataset: every default filled in, the step count known.

The worker saves it as ``jobs/<id>/config.json`` and inside every checkpoint; a checkpoint whose
resolved config differs (another dataset file, say) is not resumed from.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Literal, Optional, Union

from pydantic import Field

from jobs.batches import batches_per_epoch
from jobs.model_setup import default_lora_targets
from mftd.jobconfig import ADAPTER_METHODS, JobConfig
from mftd.memory_plan import MemoryPlan


class ResolvedJobConfig(JobConfig):
    """``JobConfig`` plus what the worker worked out from the model and the data."""

    lora_target_modules: Optional[Union[list[str], Literal["all-linear"]]] = Field(
        None, description="Modules LoRA adapts (the architecture's default when the job named none); null for full fine-tuning."
    )
    dataset_format: Literal["text", "prompt_completion", "messages"] = Field(description="The dataset's format, as detected or given.")
    num_threads: int = Field(ge=1, description="CPU threads torch uses (the same count on resume keeps results bit-exact).")
    architecture: str = Field(description="The model class, e.g. Qwen2ForCausalLM.")
    model_type: str = Field(description="The model family, e.g. qwen2; picks the default LoRA targets.")
    num_examples: int = Field(ge=1, description="Examples left to train on after tokenization.")
    packing: bool = Field(description="Whether each micro-batch's examples are packed into rows (false when asked for, or when the model family is not known to confine attention to each example).")
    batches_per_epoch: int = Field(ge=1, description="Batches of the submitted batch_size in one pass over the data.")
    total_steps: int = Field(ge=1, description="Optimizer steps in the whole run (max_steps, or epochs of micro-batches).")
    base_dtype: Literal["float32", "bfloat16"] = Field(description="dtype of the frozen base, as planned.")
    compute_dtype: Literal["float32", "bfloat16"] = Field(description="dtype of the matrix products, as planned (an adapter run's is its base dtype).")
    parameter_sharding: bool = Field(description="Whether master weights and optimizer state live in memory-mapped files, as planned.")
    memory_budget_mb: int = Field(ge=1, description="The peak memory the run was planned for.")
    effective_batch: int = Field(ge=1, description="Examples per optimizer step; batch_size and grad_accum_steps are the planned split of it.")


def total_optimizer_steps(epochs: float, max_steps: Optional[int], micro_batches_per_epoch: int, grad_accum_steps: int) -> int:
    """``max_steps`` if set, else enough steps to cover ``epochs`` passes (at least 1); a last partial step is rounded up."""
    if max_steps is not None:
        return max_steps
    return max(1, math.ceil(epochs * micro_batches_per_epoch / grad_accum_steps))


def resolve_config(
    config: JobConfig,
    architecture: str,
    model_type: str,
    dataset_format: str,
    num_examples: int,
    default_num_threads: int,
    plan: MemoryPlan,
    packing: bool = False,
) -> ResolvedJobConfig:
    """Fill in the defaults that depend on the model, the data and the machine.

    Args:
        config: the job's config as submitted.
        architecture: the model class name from its config.json.
        model_type: the model family from its config.json.
        dataset_format: the format the dataset turned out to be in.
        num_examples: examples left after tokenization.
        default_num_threads: threads to use when the job sets none.
        plan: the memory plan: micro-batch, accumulation, checkpointing, base dtype and sharding come from it.
        packing: whether the worker packs each micro-batch (``jobs.job_run._packing``).

    Returns:
        The resolved config.
    """
    # Steps count batches of the job's own batch_size, so that a smaller planned micro-batch keeps them.
    per_epoch = batches_per_epoch(num_examples, config.batch_size)
    target_modules = None
    if config.method in ADAPTER_METHODS:
        target_modules = config.lora_target_modules or default_lora_targets(model_type)
    return ResolvedJobConfig(
        **config.model_dump(
            exclude={"lora_target_modules", "dataset_format", "num_threads", "batch_size", "grad_accum_steps", "gradient_checkpointing",
                     "base_dtype", "parameter_sharding", "memory_budget_mb", "packing", "compute_dtype"}
        ),
        batch_size=plan.micro_batch,
        grad_accum_steps=plan.grad_accum_steps,
        gradient_checkpointing=plan.gradient_checkpointing,
        base_dtype=plan.base_dtype,
        compute_dtype=plan.compute_dtype,
        parameter_sharding=plan.parameter_sharding,
        memory_budget_mb=int(plan.budget_mb),
        effective_batch=config.batch_size * config.grad_accum_steps,
        lora_target_modules=target_modules,
        dataset_format=dataset_format,
        num_threads=config.num_threads or default_num_threads,
        architecture=architecture,
        model_type=model_type,
        num_examples=num_examples,
        packing=packing,
        batches_per_epoch=per_epoch,
        total_steps=total_optimizer_steps(config.epochs, config.max_steps, per_epoch, config.grad_accum_steps),
    )


def write_resolved_config(config: ResolvedJobConfig, path: Path) -> None:
    """Save ``config`` as pretty JSON (written aside, then renamed, so a reader never sees half of it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(config.model_dump(mode="json"), indent=2, sort_keys=True) + "\n")
    temporary.replace(path)
