"""A job's training configuration: one typed model, every field with help text and a range.

The API validates it on submit (a bad field answers 422 naming it); the worker resolves it
once and saves the resolved copy as ``jobs/<id>/config.json`` next to checkpoints and artifacts.
"""

from __future__ import annotations

from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

Method = Literal["lora", "full"]
Schedule = Literal["constant", "linear", "cosine"]
DatasetFormat = Literal["auto", "text", "prompt_completion", "messages"]


class JobConfig(BaseModel):
    """Hyperparameters and run settings of one fine-tuning job."""

    model_config = ConfigDict(extra="forbid")

    method: Method = Field("lora", description="lora trains a low-rank adapter; full trains every weight.")
    lora_rank: int = Field(8, ge=1, le=1024, description="LoRA rank r.")
    lora_alpha: float = Field(16.0, gt=0, description="LoRA scaling alpha (the update is scaled by alpha/r).")
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA input.")
    lora_target_modules: Optional[Union[list[str], Literal["all-linear"]]] = Field(
        None, description="Module names to adapt, or 'all-linear'; default: the attention projections of the architecture."
    )
    learning_rate: float = Field(2e-4, gt=0, le=1, description="Peak learning rate.")
    lr_schedule: Schedule = Field("cosine", description="Learning-rate schedule after warmup.")
    warmup_steps: int = Field(0, ge=0, description="Optimizer steps of linear warmup from 0 to the peak rate.")
    weight_decay: float = Field(0.0, ge=0, le=1, description="AdamW decoupled weight decay.")
    adam_beta1: float = Field(0.9, ge=0, lt=1, description="AdamW beta1.")
    adam_beta2: float = Field(0.999, ge=0, lt=1, description="AdamW beta2.")
    adam_epsilon: float = Field(1e-8, gt=0, le=1e-2, description="AdamW epsilon.")
    max_grad_norm: Optional[float] = Field(1.0, gt=0, description="Clip the gradient norm to this; null disables clipping.")
    batch_size: int = Field(1, ge=1, le=4096, description="Examples per micro-batch.")
    grad_accum_steps: int = Field(4, ge=1, le=4096, description="Micro-batches accumulated per optimizer step (effective batch = batch_size x grad_accum_steps).")
    epochs: float = Field(1.0, gt=0, le=1000, description="Passes over the dataset (ignored when max_steps is set).")
    max_steps: Optional[int] = Field(None, ge=1, description="Stop after this many optimizer steps.")
    max_seq_len: int = Field(512, ge=8, le=1_048_576, description="Examples longer than this many tokens are truncated.")
    seed: int = Field(0, ge=0, description="Seed for weights init of the adapter, dropout and data order.")
    gradient_checkpointing: bool = Field(False, description="Recompute activations in the backward pass to save memory.")
    dataset_format: DatasetFormat = Field("auto", description="Dataset format; auto detects it from the keys.")
    checkpoint_every_steps: int = Field(25, ge=1, description="Write a checkpoint every this many optimizer steps (and on every stop).")
    keep_checkpoints: int = Field(2, ge=1, le=100, description="How many of the newest checkpoints to keep.")
    log_every_steps: int = Field(1, ge=1, description="Log metrics every this many optimizer steps.")
    num_threads: Optional[int] = Field(None, ge=1, le=256, description="CPU threads for training (default: all cores).")

    @model_validator(mode="after")
    def _check_lora_fields(self) -> "JobConfig":
        if isinstance(self.lora_target_modules, list) and not self.lora_target_modules:
            raise ValueError("lora_target_modules is an empty list; give module names, 'all-linear', or leave it out for the default")
        return self
