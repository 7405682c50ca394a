"""The training loop: gradient accumulation, clipping, AdamW steps, and stopping between micro-batches.

Loss normalisation: every micro-batch's summed token loss is divided by the number of loss tokens of
its whole accumulation group, so the accumulated gradient is exactly the gradient of the mean token
loss over the group, as if the group were one big batch (dividing by ``grad_accum_steps`` instead
would weight a token of a short micro-batch more than one of a long micro-batch).

The loop does no I/O: after each optimizer step it hands a ``StepReport``, the progress and the RNG
state to a callback, which logs, reports and checkpoints.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from enum import Enum
from itertools import islice
from typing import Any, Callable, Iterator, Optional, Protocol

import torch
import torch.nn.functional as F

from jobs.batches import MicroBatch
from jobs.chunked_loss import chunked_summed_token_loss, is_chunkable
from jobs.data import IGNORE_INDEX
from jobs.precision import computing_in
from jobs.training_state import TrainingProgress, capture_rng_state


@dataclass(frozen=True)
class StepReport:
    """What one optimizer step did."""

    step: int
    loss: float
    learning_rate: float
    grad_norm: float
    tokens: int
    seconds: float

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


class LoopEnd(str, Enum):
    COMPLETED = "completed"  # reached total_steps
    STOPPED = "stopped"      # a stop was requested; a partial accumulation was thrown away


@dataclass(frozen=True)
class LoopOutcome:
    """How the loop ended, and the state as of the last completed optimizer step (what a checkpoint must hold)."""

    end: LoopEnd
    progress: TrainingProgress
    rng_state: dict[str, Any]


StepCallback = Callable[[StepReport, TrainingProgress, dict[str, Any]], None]


class Stepper(Protocol):
    """How gradients turn into an optimizer step: the ordinary optimizer, or parameter sharding (``jobs.sharding``)."""

    def backward(self, loss: torch.Tensor, is_last_micro_batch: bool) -> None:
        """Backpropagate one micro-batch's (normalised) loss into the accumulated gradients."""

    def finish_step(self) -> torch.Tensor:
        """Clip and apply the accumulated gradients, then clear them; returns the gradient norm before clipping."""

    def discard(self) -> None:
        """Throw away a partial accumulation."""


class OptimizerStepper:
    """The ordinary path: autograd accumulates into ``.grad``, then ``clip_grad_norm_`` and ``optimizer.step()``."""

    def __init__(self, optimizer: torch.optim.Optimizer, parameters: list[torch.nn.Parameter], max_grad_norm: Optional[float]):
        self.optimizer = optimizer
        self.parameters = parameters
        self.max_grad_norm = max_grad_norm

    def backward(self, loss: torch.Tensor, is_last_micro_batch: bool) -> None:
        loss.backward()

    def finish_step(self) -> torch.Tensor:
        # With max_norm=inf, clip_grad_norm_ only measures (the gradients are multiplied by exactly 1).
        grad_norm = torch.nn.utils.clip_grad_norm_(self.parameters, self.max_grad_norm if self.max_grad_norm is not None else float("inf"))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm

    def discard(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)


def summed_token_loss(model: torch.nn.Module, batch: MicroBatch) -> torch.Tensor:
    """Cross-entropy of next-token prediction, summed over the positions that carry loss.

    Known model families go through ``chunked_summed_token_loss`` (no full logits tensor); others
    through ``plain_summed_token_loss``.
    """
    if is_chunkable(model):
        return chunked_summed_token_loss(model, batch.input_ids, batch.attention_mask, batch.labels, position_ids=batch.position_ids)
    return plain_summed_token_loss(model, batch)


def plain_summed_token_loss(model: torch.nn.Module, batch: MicroBatch) -> torch.Tensor:
    """The loss from the model's own logits for the whole micro-batch (any causal LM; the reference for the chunked loss)."""
    logits = model(input_ids=batch.input_ids, **batch.model_inputs(), use_cache=False).logits
    return F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.size(-1)).float(),
        batch.labels[:, 1:].reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )


def train(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    batches: Iterator[MicroBatch],
    progress: TrainingProgress,
    total_steps: int,
    grad_accum_steps: int,
    max_grad_norm: Optional[float],
    is_stop_requested: Callable[[], bool],
    on_step: StepCallback,
    stepper: Optional[Stepper] = None,
    autocast_dtype: Optional[torch.dtype] = None,
) -> LoopOutcome:
    """Run optimizer steps until ``total_steps`` are done or a stop is requested.

    Args:
        model: the model, trainable parameters set up; it is put in training mode.
        optimizer: over the trainable parameters.
        scheduler: stepped once per optimizer step.
        batches: the micro-batch stream, positioned after ``progress``'s last step.
        progress: where training stands (not modified; the outcome carries the new one).
        total_steps: optimizer steps of the whole run.
        grad_accum_steps: micro-batches per optimizer step.
        max_grad_norm: clip the gradient norm to this; None leaves it (the norm is still reported).
        is_stop_requested: asked once before each micro-batch; True throws away the unfinished
            accumulation and ends the loop.
        on_step: called after every optimizer step with its report, the progress and the RNG state.
        stepper: how gradients become steps; None is the ordinary ``OptimizerStepper`` over ``optimizer``
            (``optimizer`` then only serves the scheduler).
        autocast_dtype: run the forward pass with matrix products in this dtype (``jobs.precision.computing_in``):
            full fine-tuning in bfloat16 (float32 weights, bfloat16 products), or adapters on a bfloat16
            base (float32 adapter weights, bfloat16 products); None computes in the weights' dtypes.

    Returns:
        How the loop ended, with the progress and RNG state of the last completed step.
    """
    model.train()
    if stepper is None:
        stepper = OptimizerStepper(optimizer, [parameter for parameter in model.parameters() if parameter.requires_grad], max_grad_norm)
    progress = dataclasses.replace(progress)
    rng_state = capture_rng_state()
    stepper.discard()
    while progress.step < total_steps:
        started = time.perf_counter()
        group = list(islice(batches, grad_accum_steps))
        group_loss_tokens = sum(batch.num_loss_tokens for batch in group)
        summed_loss = 0.0
        for index, batch in enumerate(group):
            if is_stop_requested():
                stepper.discard()
                return LoopOutcome(LoopEnd.STOPPED, progress, rng_state)
            with computing_in(model, autocast_dtype):
                loss = summed_token_loss(model, batch)
            stepper.backward(loss / group_loss_tokens, is_last_micro_batch=index == len(group) - 1)
            summed_loss += loss.item()
        learning_rate = scheduler.get_last_lr()[0]
        grad_norm = stepper.finish_step()
        scheduler.step()
        tokens = sum(batch.num_tokens for batch in group)
        progress = TrainingProgress(
            step=progress.step + 1,
            epoch=group[-1].next_epoch,
            batch_in_epoch=group[-1].next_batch_in_epoch,
            tokens_seen=progress.tokens_seen + tokens,
        )
        rng_state = capture_rng_state()
        report = StepReport(
            step=progress.step,
            loss=summed_loss / group_loss_tokens,
            learning_rate=learning_rate,
            grad_norm=float(grad_norm),
            tokens=tokens,
            seconds=time.perf_counter() - started,
        )
        on_step(report, progress, rng_state)
    return LoopOutcome(LoopEnd.COMPLETED, progress, rng_state)
