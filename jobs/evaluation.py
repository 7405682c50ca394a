"""Validation loss and perplexity on a held-out dataset, without disturbing training.

The loss is the mean over every loss-carrying token of the whole validation set (not a mean of
per-batch means), and perplexity is its exponential. Evaluation runs in eval mode without gradients
and restores the RNG states and the training mode afterwards, so a run that evaluates produces the
same weights as one that does not, and a resumed run stays bit-exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from jobs.batches import MicroBatch, pad_examples
from jobs.data import TokenizedExample
from jobs.precision import computing_in
from jobs.training import summed_token_loss
from jobs.training_state import capture_rng_state, restore_rng_state

# exp() of a larger loss overflows a float; such a model is untrained anyway.
MAX_LOSS_FOR_PERPLEXITY = 700.0


@dataclass(frozen=True)
class EvalResult:
    """Token-mean loss over a validation set, its perplexity and the number of loss tokens."""

    loss: float
    perplexity: float
    loss_tokens: int


def perplexity_of(loss: float) -> float:
    """exp(loss), or infinity for a loss too large to exponentiate."""
    return math.exp(loss) if loss < MAX_LOSS_FOR_PERPLEXITY else math.inf


def evaluate(
    model: torch.nn.Module, examples: Sequence[TokenizedExample], batch_size: int, pad_token_id: int, compute_dtype: Optional[torch.dtype] = None
) -> EvalResult:
    """The model's token-mean loss and perplexity on ``examples``, in their order.

    Args:
        model: the model being trained; it is back in its previous mode afterwards.
        examples: tokenized validation examples.
        batch_size: examples per forward pass.
        pad_token_id: the id padding positions get.
        compute_dtype: the dtype training multiplies in (``jobs.precision.computing_in``); None: the weights' dtypes.

    Returns:
        The loss, perplexity and loss-token count.
    """
    was_training = model.training
    rng_state = capture_rng_state()
    model.eval()
    summed, loss_tokens = 0.0, 0
    try:
        with torch.no_grad():
            for start in range(0, len(examples), batch_size):
                input_ids, attention_mask, labels = pad_examples(examples[start : start + batch_size], pad_token_id)
                batch = MicroBatch(input_ids, attention_mask, labels, next_epoch=0, next_batch_in_epoch=0)
                with computing_in(model, compute_dtype):
                    summed += summed_token_loss(model, batch).item()
                loss_tokens += batch.num_loss_tokens
    finally:
        model.train(was_training)
        restore_rng_state(rng_state)
    loss = summed / loss_tokens if loss_tokens else math.nan
    return EvalResult(loss=loss, perplexity=perplexity_of(loss), loss_tokens=loss_tokens)
