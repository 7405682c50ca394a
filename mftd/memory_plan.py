"""Estimate a training run's peak memory from the model's shape and the job's settings, and pick settings that fit a budget.

A pure function of numbers: nothing is loaded or measured here. The estimate adds up

- weights: every parameter in its dtype (the frozen base in ``base_dtype``, trainable weights in float32);
- gradients and optimizer: float32 gradient and two AdamW moments per trainable parameter;
- activations: what autograd keeps per token and layer for the backward pass (all of a layer's
  intermediates, or only its input with gradient checkpointing plus one layer recomputed);
- logits: the chunked cross-entropy's working set (a few chunks of float logits);
- runtime: Python, torch, transformers, PEFT, the tokenizer and the allocator's slack.

The per-token constants were fitted on SmolLM2-135M and Gemma 3 270M LoRA runs (sequence 256,
batch 4, see benchmarks/memory_lora.py); the worker logs the estimate next to the measured peak of
every run, so their error stays visible.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional



MB = 1024 * 1024
# Float logits the chunked cross-entropy computes at once (jobs/chunked_loss.py): 64 MB in float32.
CHUNK_LOGIT_ELEMENTS = 16 * 1024 * 1024
RUNTIME_MB = 420.0
# Floats kept per token and layer without checkpointing: about this many hidden-sized and
# intermediate-sized tensors, plus one attention row per head.
HIDDEN_TENSORS_PER_LAYER = 12
INTERMEDIATE_TENSORS_PER_LAYER = 4
# Copies of a chunk of float logits alive at once (logits, log-probabilities, their gradient, casts).
LOGIT_CHUNK_COPIES = 3
DTYPE_BYTES = {"float32": 4, "bfloat16": 2}


@dataclass(frozen=True)
class ModelShape:
    """The numbers of a model config that memory depends on."""

    parameters: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_attention_heads: int
    vocab_size: int

    @classmethod
    def from_config(cls, config: Any, parameters: Optional[int] = None) -> "ModelShape":
        """From a transformers config (GPT-2's n_embd/n_layer/n_head names too); ``parameters`` counted from the shapes if not given."""
        text = getattr(config, "text_config", None) or config
        hidden = getattr(text, "hidden_size", None) or text.n_embd
        intermediate = getattr(text, "intermediate_size", None) or getattr(text, "n_inner", None) or 4 * hidden
        layers = getattr(text, "num_hidden_layers", None) or text.n_layer
        heads = getattr(text, "num_attention_heads", None) or text.n_head
        vocab = text.vocab_size
        if parameters is None:
            per_layer = 4 * hidden * hidden + 3 * hidden * intermediate
            tied = getattr(text, "tie_word_embeddings", True)
            parameters = layers * per_layer + vocab * hidden * (1 if tied else 2)
        return cls(parameters, hidden, intermediate, layers, heads, vocab)


@dataclass(frozen=True)
class MemoryEstimate:
    """Estimated peak memory of a run, by part, in MB."""

    weights: float
    gradients: float
    optimizer: float
    activations: float
    logits: float
    runtime: float

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.activations + self.logits + self.runtime

    def describe(self) -> str:
        return (
            f"estimate {self.total:,.0f} MB (weights {self.weights:,.0f}, gradients {self.gradients:,.0f}, optimizer {self.optimizer:,.0f}, "
            f"activations {self.activations:,.0f}, logits {self.logits:,.0f}, runtime {self.runtime:,.0f})"
        )


def lora_parameters(shape: ModelShape, rank: int, targets_per_layer: int = 4) -> int:
    """Adapter parameters: rank x (in + out) per adapted projection, taken as hidden x hidden."""
    return shape.num_layers * targets_per_layer * rank * 2 * shape.hidden_size


def estimate_peak(
    shape: ModelShape,
    method: str,
    base_dtype: str,
    lora_rank: int,
    micro_batch: int,
    sequence: int,
    gradient_checkpointing: bool,
) -> MemoryEstimate:
    """The estimated peak of one training run.

    Args:
        shape: the model's numbers.
        method: lora, dora or full.
        base_dtype: float32 or bfloat16 (frozen weights of an adapter run).
        lora_rank: adapter rank (ignored for full).
        micro_batch: examples per forward pass.
        sequence: tokens per example (the longest, max_seq_len).
        gradient_checkpointing: whether layers recompute their activations in the backward pass.

    Returns:
        The estimate by part.
    """
    is_full = method == "full"
    trainable = shape.parameters if is_full else lora_parameters(shape, lora_rank)
    activation_bytes = 4 if is_full else DTYPE_BYTES[base_dtype]
    weights = (shape.parameters * activation_bytes + (0 if is_full else trainable * 4)) / MB
    tokens = micro_batch * sequence
    per_layer = tokens * activation_bytes * (
        HIDDEN_TENSORS_PER_LAYER * shape.hidden_size + INTERMEDIATE_TENSORS_PER_LAYER * shape.intermediate_size
    ) + micro_batch * shape.num_attention_heads * sequence * sequence * 4
    if gradient_checkpointing:
        activations = shape.num_layers * tokens * shape.hidden_size * activation_bytes + per_layer
    else:
        activations = shape.num_layers * per_layer
    chunk = min(CHUNK_LOGIT_ELEMENTS, tokens * shape.vocab_size)
    return MemoryEstimate(
        weights=weights,
        gradients=trainable * 4 / MB,
        optimizer=trainable * 8 / MB,
        activations=activations / MB,
        logits=chunk * 4 * LOGIT_CHUNK_COPIES / MB,
        runtime=RUNTIME_MB,
    )


@dataclass(frozen=True)
class MemoryPlan:
    """Settings chosen to fit a budget, and their estimate."""

    micro_batch: int
    grad_accum_steps: int
    gradient_checkpointing: bool
    estimate: MemoryEstimate
    fits: bool


def plan_memory(
    shape: ModelShape,
    method: str,
    base_dtype: str,
    lora_rank: int,
    batch_size: int,
    grad_accum_steps: int,
    sequence: int,
    gradient_checkpointing: bool,
    budget_mb: float,
) -> MemoryPlan:
    """The fastest settings whose estimate fits ``budget_mb``, keeping the effective batch.

    Tries the job's micro-batch and then smaller divisors of the effective batch, first as the job
    asked and then with gradient checkpointing (slower, far smaller). When nothing fits, the plan
    with the smallest estimate comes back with ``fits=False``.
    """
    effective = batch_size * grad_accum_steps
    micro_batches = [size for size in range(batch_size, 0, -1) if effective % size == 0]
    candidates = [(size, gradient_checkpointing) for size in micro_batches]
    if not gradient_checkpointing:
        candidates += [(size, True) for size in micro_batches]
    smallest: Optional[MemoryPlan] = None
    for size, checkpointed in candidates:
        estimate = estimate_peak(shape, method, base_dtype, lora_rank, size, sequence, checkpointed)
        plan = MemoryPlan(size, effective // size, checkpointed, estimate, estimate.total <= budget_mb)
        if plan.fits:
            return plan
        if smallest is None or estimate.total < smallest.estimate.total:
            smallest = plan
    assert smallest is not None
    return smallest
