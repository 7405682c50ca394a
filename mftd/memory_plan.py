"""Estimate a training run's peak memory from the model's shape and the job's settings, and pick settings that fit a budget.

A pure function of numbers: nothing is loaded or measured here. The estimate adds up

- weights: every parameter in its dtype (the frozen base in ``base_dtype``, trainable weights in float32);
- gradients and optimizer: float32 gradient and two AdamW moments per trainable parameter;
- activations: what autograd keeps per token and layer for the backward pass (all of a layer's
  intermediates, or only its input with gradient checkpointing plus one layer recomputed);
- logits: the chunked cross-entropy's working set (a few chunks of float logits);
- runtime: Python, torch, transformers, PEFT, the tokenizer (it grows with the vocabulary) and what
  the lean allocator setting keeps;
- allocator slack: with the fast setting only, what glibc's heap keeps on top of that;
- mapped (parameter sharding only): pages of the shard files that the run reads in full every step
  (the float32 output matrix, the tied embedding) and that stay in its RSS while memory allows.

All but the mapped pages are the resident need, what must stay in memory: a plan fits its budget
when the resident need does. The mapped pages are the kernel's to drop (a sharded plan exists to run
below the size of its mapped files), so they count only as far as the budget leaves room beyond
the resident need: the plan's estimate (``MemoryPlan.estimate.total``, ``estimate_mb``) is the
expected peak RSS, min(budget, resident need + mapped working set), and ``resident_mb`` is the
figure the fit is decided on. Where nothing caps the run, the mapped pages can stay beyond the budget
while the device has memory free.

The plan also picks the worker's allocator setting (``MemoryPlan.allocator``): glibc's mmap threshold,
1 MB ("lean": every tensor of 1 MB or more is mapped and given back at free, which costs a bfloat16
LoRA run about a third of its speed) or 16 MB ("fast": such tensors below 16 MB are reused from the
heap, which holds on to more). Fast when the budget has room for the settings' resident need with the
slack, else lean: the allocator never changes the other settings. The worker applies it (``jobs.allocator``).
A fast plan also computes attention as matrix products (``MemoryPlan.attention``, ``jobs.attention``),
faster than torch's flash kernel but keeping every layer's attention weights, which its estimate counts.

The constants were fitted on worker runs of SmolLM2-135M and Gemma 3 270M (LoRA in float32 and
bfloat16, with and without checkpointing, micro-batch 1 and 4, and full fine-tuning; sequence 256)
with the lean setting; the slack on SmolLM2's bfloat16 LoRA runs under both settings, and checked
on Gemma's (``benchmarks/allocator_slack.py``). The worker logs the estimate next to the measured
peak of every run, so their error stays visible.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from types import SimpleNamespace
from typing import Any, Optional

from mftd.protocol import MMAP_THRESHOLDS



MB = 1024 * 1024
# Float logits the chunked cross-entropy computes at once (jobs/chunked_loss.py): 64 MB in float32.
CHUNK_LOGIT_ELEMENTS = 16 * 1024 * 1024
RUNTIME_MB = 400.0
RUNTIME_BYTES_PER_VOCABULARY_ENTRY = 700  # the tokenizer's tables and the embedding's bookkeeping
# Floats kept per token and layer without checkpointing: about this many hidden-sized and
# intermediate-sized tensors, plus one attention row per head. The hidden-sized ones are float32
# whatever the base dtype (the RMS norms compute in float32); Gemma 2 and 3 have four norms per
# layer and norms on queries and keys, so about twice as many.
HIDDEN_TENSORS_PER_LAYER = 6
HIDDEN_TENSORS_PER_LAYER_BY_MODEL_TYPE = {"gemma2": 12, "gemma3": 12, "gemma3_text": 12}
# Of those, adapters on a bfloat16 base kept a float32 copy of each adapted projection's input (PEFT
# casts it to the adapter's dtype), one per projection of q, k, v and o. They now run under autocast
# (jobs/precision.py), which multiplies in bfloat16 and saves the input the base layer saves: the
# copies are gone (SmolLM2 LoRA at micro-batch 4 x 256 peaked at 1,471 MB where the old count gave 1,933).
ADAPTED_INPUT_COPIES_PER_LAYER = 4
INTERMEDIATE_TENSORS_PER_LAYER = 4
# Copies of a chunk of float logits alive at once (logits, log-probabilities, their gradient, casts).
LOGIT_CHUNK_COPIES = 3
DTYPE_BYTES = {"float32": 4, "bfloat16": 2}
# Parameter sharding keeps resident: two layers (the one at work and the one read ahead), a block of
# the embedding's rows (its gradient is built a block at a time, the rest of it is page cache the
# kernel can drop) and AdamW's working set for a piece of rows. Beyond that, the output layer reads
# its whole float32 weight (the tied embedding) from the weights file every step, and those pages
# stay mapped, counted in RSS, until the backward pass releases them or memory runs short: the
# mapped working set (measured at the peak under a 2,560 MB cap: 504 of Qwen2.5-0.5B's 519 MB; under
# tighter caps only what the cap leaves beside the resident need).
SHARDED_BLOCK_MB = 16.0
SHARDED_OPTIMIZER_WORKING_MB = 64.0
# What the fast allocator setting (a 16 MB mmap threshold, ``mftd.protocol.MMAP_THRESHOLDS``) keeps on
# top of the lean one. Only tensors between the two thresholds change place (the lean setting maps
# them, the fast one puts them on the heap), and the heap holds on to freed ones: about six of one
# layer's working sets of such tensors (allocated and freed layer after layer in the backward pass),
# plus a third of those autograd keeps. Fitted on worker runs under both settings
# (benchmarks/allocator_slack.py, README "Memory"): SmolLM2-135M bfloat16 LoRA at micro-batch 4
# kept 542 MB more (213 MB checkpointed), at micro-batch 1, whose hidden-sized tensors are below
# 1 MB, none.
SLACK_LAYER_WORKING_SETS = 6.0
SLACK_SHARE_OF_KEPT = 0.32
# A fast plan also trains with attention as matrix products (jobs/attention.py), which keeps each
# layer's attention weights for the backward pass: float32 from the softmax, and a copy in the
# activations' dtype when that is narrower (the product with the values reads it).
ATTENTION_WEIGHT_BYTES = 4


@dataclass(frozen=True)
class ModelShape:
    """The numbers of a model config that memory depends on."""

    parameters: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_attention_heads: int
    vocab_size: int
    model_type: str = ""

    @classmethod
    def from_config_dict(cls, config: dict[str, Any], parameters: Optional[int] = None) -> "ModelShape":
        """From a parsed config.json (what the daemon has, without transformers).

        Raises:
            ValueError: the config lacks a size the estimate needs.
        """
        text = config.get("text_config") or config
        try:
            return cls.from_config(SimpleNamespace(**text), parameters)
        except AttributeError as error:
            raise ValueError(f"config.json has no {error.name} (nor its usual aliases)") from error

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
        return cls(parameters, hidden, intermediate, layers, heads, vocab, getattr(text, "model_type", "") or "")


@dataclass(frozen=True)
class MemoryEstimate:
    """Estimated peak memory of a run, by part, in MB.

    ``mapped`` is the part of the peak RSS that is file pages the kernel may drop (a sharded run's
    output matrix, read every step): not part of the resident need. From ``estimate_peak`` it is the
    whole mapped working set; in a plan, only what the budget leaves room for (``within``).
    """

    weights: float
    gradients: float
    optimizer: float
    activations: float
    logits: float
    runtime: float
    mapped: float = 0.0
    allocator_slack: float = 0.0

    @property
    def resident(self) -> float:
        """What must stay in memory for the run to go on: whether a plan fits is decided on this."""
        return self.weights + self.gradients + self.optimizer + self.activations + self.logits + self.runtime + self.allocator_slack

    @property
    def total(self) -> float:
        """The expected peak RSS: the resident need and the mapped pages that stay."""
        return self.resident + self.mapped

    def within(self, budget_mb: float) -> "MemoryEstimate":
        """This estimate in a budget: mapped pages stay only in the room the resident need leaves (the kernel drops them first)."""
        return replace(self, mapped=min(self.mapped, max(0.0, budget_mb - self.resident)))

    def describe(self) -> str:
        slack = f", allocator slack {self.allocator_slack:,.0f}" if self.allocator_slack else ""
        mapped = f", mapped {self.mapped:,.0f}; resident {self.resident:,.0f}" if self.mapped else ""
        return (
            f"estimate {self.total:,.0f} MB (weights {self.weights:,.0f}, gradients {self.gradients:,.0f}, optimizer {self.optimizer:,.0f}, "
            f"activations {self.activations:,.0f}, logits {self.logits:,.0f}, runtime {self.runtime:,.0f}{slack}{mapped})"
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
    parameter_sharding: bool = False,
    compute_dtype: str = "float32",
    allocator: str = "lean",
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
        parameter_sharding: full fine-tuning with master weights and optimizer state in mapped files:
            what must stay resident (two layers and a block of embedding rows), and as ``mapped`` the
            float32 output matrix the loss reads in full every step, whose pages stay in RSS while
            memory allows (the rest of the mapped files is page cache that the kernel drops).
        compute_dtype: full fine-tuning's matrix products: bfloat16 autocast keeps a bfloat16 copy of each
            decoder weight for the backward pass (of every layer, or of the one being recomputed or worked on
            with checkpointing or sharding), and a layer's intermediates in bfloat16.
        allocator: "lean" (a 1 MB mmap threshold, what the constants were fitted with) or "fast" (16 MB:
            adds the heap's slack for the tensors between the two thresholds).

    Returns:
        The estimate by part.
    """
    is_full = method == "full"
    trainable = shape.parameters if is_full else lora_parameters(shape, lora_rank)
    activation_bytes = DTYPE_BYTES[compute_dtype] if is_full else DTYPE_BYTES[base_dtype]
    weights = (shape.parameters * (4 if is_full else DTYPE_BYTES[base_dtype]) + (0 if is_full else trainable * 4)) / MB
    gradients, optimizer = trainable * 4 / MB, trainable * 8 / MB
    mapped = 0.0
    if is_full and parameter_sharding:
        embedding = shape.vocab_size * shape.hidden_size
        layer = max(0, shape.parameters - embedding) / shape.num_layers
        weights = 2 * layer * 4 / MB + SHARDED_BLOCK_MB
        gradients = layer * 4 / MB + SHARDED_BLOCK_MB
        optimizer = SHARDED_OPTIMIZER_WORKING_MB
        mapped = embedding * 4 / MB
    if is_full and compute_dtype != "float32":
        embedding = shape.vocab_size * shape.hidden_size
        decoder = max(0, shape.parameters - embedding)
        copied = decoder / shape.num_layers if (parameter_sharding or gradient_checkpointing) else decoder
        weights += copied * DTYPE_BYTES[compute_dtype] / MB
    tokens = micro_batch * sequence
    hidden_tensors = HIDDEN_TENSORS_PER_LAYER_BY_MODEL_TYPE.get(shape.model_type, HIDDEN_TENSORS_PER_LAYER)
    if not is_full and base_dtype == "bfloat16":
        hidden_tensors -= ADAPTED_INPUT_COPIES_PER_LAYER
    per_layer = tokens * (
        hidden_tensors * shape.hidden_size * 4 + INTERMEDIATE_TENSORS_PER_LAYER * shape.intermediate_size * activation_bytes
    ) + micro_batch * shape.num_attention_heads * sequence * sequence * 4
    if gradient_checkpointing:
        activations = shape.num_layers * tokens * shape.hidden_size * activation_bytes + per_layer
    else:
        activations = shape.num_layers * per_layer
    slack = 0.0
    if allocator == "fast":
        weight_bytes = ATTENTION_WEIGHT_BYTES + (activation_bytes if activation_bytes < ATTENTION_WEIGHT_BYTES else 0)
        kept_layers = 1 if gradient_checkpointing else shape.num_layers
        activations += kept_layers * micro_batch * shape.num_attention_heads * sequence * sequence * weight_bytes
        hidden = (hidden_tensors, tokens * shape.hidden_size * 4)
        intermediate = (INTERMEDIATE_TENSORS_PER_LAYER, tokens * shape.intermediate_size * activation_bytes)
        attention = (1, micro_batch * shape.num_attention_heads * sequence * sequence * 4)
        layer_working_set = _between_thresholds_mb([hidden, intermediate, attention])
        if gradient_checkpointing:
            kept = shape.num_layers * _between_thresholds_mb([(1, tokens * shape.hidden_size * activation_bytes)])
        else:
            kept = shape.num_layers * layer_working_set
        slack = SLACK_LAYER_WORKING_SETS * layer_working_set + SLACK_SHARE_OF_KEPT * kept
    chunk = min(CHUNK_LOGIT_ELEMENTS, tokens * shape.vocab_size)
    logits = chunk * 4 * LOGIT_CHUNK_COPIES / MB
    return MemoryEstimate(
        weights=weights,
        gradients=gradients,
        optimizer=optimizer,
        activations=activations / MB,
        logits=logits,
        runtime=RUNTIME_MB + shape.vocab_size * RUNTIME_BYTES_PER_VOCABULARY_ENTRY / MB,
        mapped=mapped,
        allocator_slack=slack,
    )


def _between_thresholds_mb(tensors: list[tuple[int, int]]) -> float:
    """MB of the (count, bytes) tensors whose size puts them on the heap with the fast setting and in mappings with the lean one."""
    return sum(count * size for count, size in tensors if MMAP_THRESHOLDS["lean"] <= size < MMAP_THRESHOLDS["fast"]) / MB


@dataclass(frozen=True)
class PlanRequest:
    """What a job asks for, as far as memory goes; ``None`` leaves a choice to the planner."""

    method: str
    base_dtype: Optional[str]
    lora_rank: int
    batch_size: int
    grad_accum_steps: int
    sequence: int
    gradient_checkpointing: bool
    parameter_sharding: Optional[bool]
    budget_mb: float
    micro_batch_cap: Optional[int] = None
    compute_dtype: Optional[str] = None
    # The CPU multiplies bfloat16 fast (mftd.cpu.has_fast_bfloat16): a null base_dtype or compute_dtype then means bfloat16.
    prefer_bfloat16: bool = False
    # The allocator setting the worker will run with whatever the plan says ("fast" or "lean": the user set
    # MALLOC_MMAP_THRESHOLD_ themselves); None lets the plan choose.
    allocator: Optional[str] = None

    @property
    def effective_batch(self) -> int:
        return self.batch_size * self.grad_accum_steps


@dataclass(frozen=True)
class MemoryPlan:
    """Settings chosen to fit a budget, and their estimate in it (the expected peak RSS; its ``resident`` is what must fit)."""

    micro_batch: int
    grad_accum_steps: int
    gradient_checkpointing: bool
    base_dtype: str
    parameter_sharding: bool
    estimate: MemoryEstimate
    budget_mb: float
    sequence: int
    compute_dtype: str = "float32"
    allocator: str = "lean"

    @property
    def fits(self) -> bool:
        return self.estimate.resident <= self.budget_mb

    @property
    def attention(self) -> str:
        """How the worker computes attention: "matmul" (``jobs.attention``, faster, keeps the attention weights) in a fast plan, else "sdpa"."""
        return "matmul" if self.allocator == "fast" else "sdpa"

    def describe(self) -> str:
        settings = [f"micro-batch {self.micro_batch} x {self.grad_accum_steps}"]
        if self.gradient_checkpointing:
            settings.append("gradient checkpointing")
        if self.base_dtype != "float32":
            settings.append(f"{self.base_dtype} base")
        elif self.compute_dtype != "float32":
            settings.append(f"{self.compute_dtype} compute")
        if self.parameter_sharding:
            settings.append("parameter sharding")
        settings.append(f"{self.allocator} allocator")
        return f"{', '.join(settings)}: {self.estimate.describe()} of a {self.budget_mb:,.0f} MB budget"

    def to_json(self) -> dict[str, Any]:
        """The plan as stored on the job (``memory_plan_json``) and shown by the API."""
        return {
            "micro_batch": self.micro_batch,
            "grad_accum_steps": self.grad_accum_steps,
            "effective_batch": self.micro_batch * self.grad_accum_steps,
            "gradient_checkpointing": self.gradient_checkpointing,
            "base_dtype": self.base_dtype,
            "parameter_sharding": self.parameter_sharding,
            "compute_dtype": self.compute_dtype,
            "allocator": self.allocator,
            "attention": self.attention,
            "sequence": self.sequence,
            "budget_mb": round(self.budget_mb, 1),
            "estimate_mb": round(self.estimate.total, 1),  # the expected peak RSS, compared with peak_mb after the run
            "resident_mb": round(self.estimate.resident, 1),  # what must stay in memory: fits is decided on it
            "estimate": {name: round(value, 1) for name, value in asdict(self.estimate).items()},
            "fits": self.fits,
        }


def plan_request(
    config: Any, budget_mb: float, sequence: int, micro_batch_cap: Optional[int] = None, prefer_bfloat16: bool = False,
    allocator: Optional[str] = None,
) -> PlanRequest:
    """The request of a job's ``JobConfig`` for examples of ``sequence`` tokens, on a CPU that is fast in bfloat16 or not."""
    return PlanRequest(
        method=config.method,
        base_dtype=config.base_dtype,
        lora_rank=config.lora_rank,
        batch_size=config.batch_size,
        grad_accum_steps=config.grad_accum_steps,
        sequence=sequence,
        gradient_checkpointing=config.gradient_checkpointing,
        parameter_sharding=config.parameter_sharding,
        budget_mb=budget_mb,
        micro_batch_cap=micro_batch_cap,
        compute_dtype=getattr(config, "compute_dtype", None),
        prefer_bfloat16=prefer_bfloat16,
        allocator=allocator,
    )


def _micro_batches(request: PlanRequest) -> list[int]:
    """Divisors of the effective batch, largest first, at most the job's batch_size and the cap."""
    largest = min(request.batch_size, request.micro_batch_cap or request.batch_size)
    return [size for size in range(largest, 0, -1) if request.effective_batch % size == 0]


def _candidates(request: PlanRequest) -> list[tuple[int, bool, str, bool]]:
    """(micro-batch, checkpointing, base dtype, sharding), in the order they cost speed or precision.

    A smaller micro-batch costs least (the matrix products stay large), then recomputing
    activations (about a third more time), then a bfloat16 frozen base (rounds the base weights)
    or parameter sharding (reads and writes flash every step). On a CPU that is fast in bfloat16, a
    null dtype is bfloat16 from the start: it is then both the smaller and the faster choice. For full
    fine-tuning the dtype is the compute dtype (the master weights stay float32).
    """
    checkpointing = [True] if request.gradient_checkpointing else [False, True]
    chosen = request.compute_dtype if request.method == "full" else request.base_dtype
    if chosen:
        dtypes = [chosen]
    elif request.prefer_bfloat16:
        dtypes = ["bfloat16"]
    else:
        dtypes = ["float32"] if request.method == "full" else ["float32", "bfloat16"]
    if request.method == "full":
        shardings = [request.parameter_sharding] if request.parameter_sharding is not None else [False, True]
    else:
        shardings = [False]
    return [
        (size, checkpointed, dtype, sharded)
        for dtype in dtypes
        for sharded in shardings
        for checkpointed in checkpointing
        for size in _micro_batches(request)
    ]


def plan_memory(shape: ModelShape, request: PlanRequest) -> MemoryPlan:
    """The first settings (in ``_candidates``' order) whose resident need fits the budget, keeping the effective batch.

    The allocator never changes those settings: the fast one when the budget also has room for its
    slack and the plan is not sharded, else the lean one; a request's own ``allocator`` is kept (the
    fast one's slack counted).
    When nothing fits, the plan with the smallest resident need comes back (its ``fits`` is False).
    """
    smallest: Optional[MemoryPlan] = None
    for size, checkpointed, dtype, sharded in _candidates(request):
        base, compute = ("float32", dtype) if request.method == "full" else (dtype, dtype)
        estimate = estimate_peak(shape, request.method, base, request.lora_rank, size, request.sequence, checkpointed, sharded, compute)
        estimate = estimate.within(request.budget_mb)
        lean = MemoryPlan(size, request.effective_batch // size, checkpointed, base, sharded, estimate, request.budget_mb, request.sequence, compute)
        fast_estimate = estimate_peak(
            shape, request.method, base, request.lora_rank, size, request.sequence, checkpointed, sharded, compute, allocator="fast"
        )
        fast = replace(lean, estimate=fast_estimate.within(request.budget_mb), allocator="fast")
        if request.allocator is None:
            # Sharded plans are made where memory is what limits, and the slack was not measured with sharding.
            plan = fast if fast.fits and not sharded else lean
        else:
            plan = fast if request.allocator == "fast" else lean
        if plan.fits:
            return plan
        if smallest is None or plan.estimate.resident < smallest.estimate.resident:
            smallest = plan
    assert smallest is not None, "there is always micro-batch 1"
    return smallest


def largest_fitting_sequence(shape: ModelShape, request: PlanRequest) -> Optional[int]:
    """The longest sequence (at least 8 tokens) for which some plan fits, or None if none does."""
    low, high = 8, request.sequence
    if not plan_memory(shape, replace(request, sequence=low)).fits:
        return None
    while low < high:
        middle = (low + high + 1) // 2
        if plan_memory(shape, replace(request, sequence=middle)).fits:
            low = middle
        else:
            high = middle - 1
    return low


def _relaxations(request: PlanRequest) -> list[tuple[str, PlanRequest]]:
    """Choices the job took away from the planner, given back one at a time."""
    relaxations = []
    if request.method == "full" and request.parameter_sharding is False:
        relaxations.append(("parameter_sharding true", replace(request, parameter_sharding=True)))
    if request.method != "full" and request.base_dtype == "float32":
        relaxations.append(("base_dtype bfloat16", replace(request, base_dtype="bfloat16")))
    return relaxations


def does_not_fit_message(shape: ModelShape, request: PlanRequest, plan: MemoryPlan) -> str:
    """Why a job cannot run in its budget: the smallest plan's estimate, and the largest thing that would fit."""
    message = f"the job does not fit its memory budget: the smallest plan ({plan.describe()}) is over it."
    for setting, relaxed in _relaxations(request):
        fitting = plan_memory(shape, relaxed)
        if fitting.fits:
            return message + f" It fits with {setting} ({fitting.describe()})."
    sequence = largest_fitting_sequence(shape, request)
    if sequence is not None:
        return message + f" The longest max_seq_len that fits is {sequence}; or raise memory_budget_mb to at least {plan.estimate.resident:,.0f}."
    fixed = plan.estimate.weights + plan.estimate.gradients + plan.estimate.optimizer + plan.estimate.runtime
    hints = "use method lora with base_dtype bfloat16, " if request.method == "full" else "use base_dtype bfloat16, " if request.base_dtype == "float32" else ""
    return message + (
        f" Even 8-token examples need {fixed:,.0f} MB (weights, gradients, optimizer and runtime): {hints}"
        f"pick a smaller model, or raise memory_budget_mb to at least {plan.estimate.resident:,.0f}."
    )
