"""A job's training configuration: one typed model, every field with help text and a range.

The API validates it on submit (a bad field answers 422 naming it); the worker resolves it
once and saves the resolved copy as ``jobs/<id>/config.json`` next to checkpoints and artifacts.
"""

from __future__ import annotations

from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mftd.hours import parse_hours

Method = Literal["lora", "dora", "full"]
BaseDtype = Literal["float32", "bfloat16"]
ADAPTER_METHODS = ("lora", "dora")
Schedule = Literal["constant", "linear", "cosine"]
DatasetFormat = Literal["auto", "text", "prompt_completion", "messages"]


class JobConstraints(BaseModel):
    """When the device may train this job, modelled on Android's JobScheduler; null uses the daemon-wide default (MFTD_<FIELD>)."""

    model_config = ConfigDict(extra="forbid")

    require_charging: Optional[bool] = Field(None, description="Train only on external power. An unknown charging state counts as not charging.")
    min_battery_percent: Optional[float] = Field(
        None, ge=0, le=100,
        description="On battery, train only at or above this level (charging always passes, as JobScheduler's 'battery not low'); 0 disables. "
        "An unknown level fails unless the device is charging.",
    )
    max_battery_temp_c: Optional[float] = Field(
        None, gt=0, le=100, description="Stop at once above this battery temperature. An unknown temperature is not enforced (shown as such)."
    )
    throttle_battery_temp_c: Optional[float] = Field(
        None, gt=0, le=100,
        description="Soft limit: above it training slows down (pauses between optimizer steps), more the nearer it gets to max_battery_temp_c.",
    )
    require_idle: Optional[bool] = Field(
        None, description="Train only while other processes use little CPU (MFTD_IDLE_CPU_PERCENT) for MFTD_IDLE_MINUTES and the screen is not on. "
        "An unknown load fails (Android hides it from apps without root: use allowed_hours there).",
    )
    allowed_hours: Optional[str] = Field(
        None, description="Local times training may run, e.g. '23:00-07:00' or '23:00-07:00,12:00-13:00'; '' or 'any' for any time."
    )
    min_free_storage_mb: Optional[float] = Field(
        None, ge=0, description="Train only with this much free storage for checkpoints. Unknown free storage fails."
    )

    @field_validator("allowed_hours")
    @classmethod
    def _check_hours(cls, value: Optional[str]) -> Optional[str]:
        if value is not None:
            parse_hours(value)
        return value


class JobConfig(BaseModel):
    """Hyperparameters and run settings of one fine-tuning job."""

    model_config = ConfigDict(extra="forbid")

    method: Method = Field(
        "lora", description="lora trains a low-rank adapter; dora a weight-decomposed one (DoRA); full trains every weight."
    )
    base_dtype: Optional[BaseDtype] = Field(
        None,
        description="dtype of the frozen base weights of a lora or dora run; bfloat16 halves their memory. "
        "null: bfloat16 where the CPU has bfloat16 instructions (faster and smaller there), else float32 when the memory budget allows, else bfloat16.",
    )
    compute_dtype: Optional[BaseDtype] = Field(
        None,
        description="Full fine-tuning only: dtype of the matrix products; bfloat16 runs them under autocast while master weights, "
        "gradients and AdamW state stay float32 (the loss too). null: bfloat16 where the CPU has bfloat16 instructions "
        "(x86 AVX512-BF16 or AMX, ARMv8.6 BF16), else float32. An adapter run computes in base_dtype.",
    )
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
    packing: bool = Field(
        True,
        description="Lay each micro-batch's examples end to end in as few rows of at most max_seq_len tokens as hold them, attention "
        "confined to each example, so that little compute goes to padding; the examples of every step stay the same. false pads every "
        "example to the longest of its micro-batch.",
    )
    batch_size: int = Field(1, ge=1, le=4096, description="Examples per micro-batch; the planner may take fewer per micro-batch with more accumulation to fit memory_budget_mb (the effective batch stays).")
    grad_accum_steps: int = Field(4, ge=1, le=4096, description="Micro-batches accumulated per optimizer step (effective batch = batch_size x grad_accum_steps).")
    epochs: float = Field(1.0, gt=0, le=1000, description="Passes over the dataset (ignored when max_steps is set).")
    max_steps: Optional[int] = Field(None, ge=1, description="Stop after this many optimizer steps.")
    max_seq_len: int = Field(512, ge=8, le=1_048_576, description="Examples longer than this many tokens are truncated.")
    seed: int = Field(0, ge=0, description="Seed for weights init of the adapter, dropout and data order.")
    gradient_checkpointing: bool = Field(False, description="Recompute activations in the backward pass to save memory; when false the planner still turns it on if the budget needs it.")
    dataset_format: DatasetFormat = Field("auto", description="Dataset format; auto detects it from the keys.")
    checkpoint_every_steps: int = Field(25, ge=1, description="Write a checkpoint every this many optimizer steps (and on every stop).")
    keep_checkpoints: int = Field(2, ge=1, le=100, description="How many of the newest checkpoints to keep.")
    log_every_steps: int = Field(1, ge=1, description="Log metrics every this many optimizer steps.")
    validation_dataset: Optional[Union[int, str]] = Field(
        None, description="A registered dataset (id or name) for validation loss and perplexity; none skips evaluation."
    )
    eval_every_steps: Optional[int] = Field(
        None, ge=1, description="Evaluate on validation_dataset every this many optimizer steps (and always at the end)."
    )
    memory_budget_mb: Optional[int] = Field(
        None, ge=64, le=1_048_576,
        description="Peak memory the run may use, in MB (default: the daemon's MFTD_MEMORY_BUDGET_MB, derived from the device's total memory). "
        "The planner picks micro-batch, gradient checkpointing and parameter sharding to fit it, and refuses the job when nothing fits.",
    )
    parameter_sharding: Optional[bool] = Field(
        None,
        description="Full fine-tuning only: keep fp32 master weights and AdamW state in memory-mapped files, one layer in memory at a time, "
        "with the optimizer step fused into the backward pass. null lets the planner decide (on when the budget needs it).",
    )
    compile: bool = Field(
        False,
        description="Try torch.compile on the decoder layers for training (needs a C++ compiler, e.g. Termux's clang). Any failure, "
        "or no compiler, is a warning event and training goes on eager. Steps run 10-20% faster (SmolLM2 LoRA), but compiling takes "
        "up to a minute or more at every worker start, resumes included (less from the cache in <data dir>/cache/inductor): "
        "worth it for long jobs. Results match eager to float rounding, not bit for bit.",
    )
    num_threads: Optional[int] = Field(None, ge=1, le=256, description="CPU threads for training (default: one per performance core; more than that also uses the slower cores).")
    constraints: JobConstraints = Field(
        default_factory=JobConstraints, description="When the device may train this job; fields left null use the daemon's defaults."
    )

    @model_validator(mode="after")
    def _check_lora_fields(self) -> "JobConfig":
        if isinstance(self.lora_target_modules, list) and not self.lora_target_modules:
            raise ValueError("lora_target_modules is an empty list; give module names, 'all-linear', or leave it out for the default")
        if self.base_dtype == "bfloat16" and self.method not in ADAPTER_METHODS:
            raise ValueError("base_dtype bfloat16 needs method lora or dora (full fine-tuning keeps float32 weights; set compute_dtype bfloat16 for bfloat16 matrix products)")
        if self.compute_dtype is not None and self.method in ADAPTER_METHODS and self.compute_dtype != self.base_dtype:
            raise ValueError(f"compute_dtype applies to method full; a {self.method} run computes in base_dtype, so set base_dtype {self.compute_dtype} instead")
        if self.parameter_sharding and self.method in ADAPTER_METHODS:
            raise ValueError("parameter_sharding needs method full (an adapter run has no full-model optimizer state to shard)")
        return self
