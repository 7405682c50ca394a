"""Embedding-sized gradients added straight into the tensor that accumulates them, a block of rows at a time.

Autograd hands a weight its gradient as one dense tensor per use and sums them: for a tied
[vocabulary, hidden] embedding that is a full-size tensor from the output projection, another from
the input lookup (a few hundred rows scattered into zeros), and their sum, on top of the gradient
being accumulated over micro-batches. For Gemma 3's 262,144-token vocabulary each is 671 MB in
float32. The chunked loss (``jobs.chunked_loss``) and ``embed`` here instead add their part into
the weight's gradient target, rows at a time:

* by default the weight's ``.grad``, created as zeros at the first micro-batch of a step (what
  ``optimizer.zero_grad(set_to_none=True)`` leaves);
* with parameter sharding, a ``GradientSink`` on the weight (attribute ``GRADIENT_SINK``): a slot of
  a mapped file, zeroed at the first micro-batch of a step, whose pages go back to the kernel as
  soon as a block of rows is done.

Both run the same arithmetic in the same order on the same numbers, so they give the same bits. A
weight trained this way gets no gradient from autograd: its ``post_accumulate_grad`` hooks do not
fire, and ``torch.autograd.grad`` does not see this part of its gradient.
"""

from __future__ import annotations

from typing import Optional, Protocol

import torch
import torch.nn.functional as F

# The attribute under which a parameter may carry its GradientSink.
GRADIENT_SINK = "gradient_sink"


class GradientSink(Protocol):
    """Where a parameter's gradient is accumulated, when something other than the default ``.grad``."""

    def open(self) -> torch.Tensor:
        """The tensor (the parameter's shape) to add this micro-batch's gradient into; zeros at a step's first micro-batch."""

    def release_rows(self, rows: slice) -> None:
        """The pass is done with these rows of the parameter and of its gradient for now."""


def gradient_target(weight: torch.nn.Parameter) -> torch.Tensor:
    """The tensor to add ``weight``'s gradient into: its sink's, or ``.grad`` (created as zeros if there is none)."""
    sink: Optional[GradientSink] = getattr(weight, GRADIENT_SINK, None)
    if sink is not None:
        return sink.open()
    if weight.grad is None:
        weight.grad = torch.zeros_like(weight)
    return weight.grad


def release_rows(weight: torch.nn.Parameter, rows: slice) -> None:
    """Tell ``weight``'s sink, if it has one, that a block of rows is done."""
    sink: Optional[GradientSink] = getattr(weight, GRADIENT_SINK, None)
    if sink is not None:
        sink.release_rows(rows)


def can_embed(embedding: torch.nn.Module) -> bool:
    """Whether ``embed`` knows how ``embedding`` computes its output and it has a weight to train."""
    return (
        isinstance(embedding, torch.nn.Embedding)
        and embedding.weight.requires_grad
        and embedding.max_norm is None
        and not embedding.scale_grad_by_freq
        and not embedding.sparse
        # nn.Embedding itself, or the Gemma family's, which multiplies by a constant (embed_scale).
        and (type(embedding).forward is torch.nn.Embedding.forward or type(embedding).__name__.endswith("ScaledWordEmbedding"))
    )


def embed(embedding: torch.nn.Embedding, input_ids: torch.Tensor) -> torch.Tensor:
    """``embedding(input_ids)``, whose weight gradient only adds the looked-up rows into ``gradient_target``.

    Requires ``can_embed(embedding)``.
    """
    output = _RowGradientEmbedding.apply(input_ids, embedding.weight, embedding.padding_idx)
    if type(embedding).forward is torch.nn.Embedding.forward:
        return output
    return output * embedding.embed_scale.to(embedding.weight.dtype)


class _RowGradientEmbedding(torch.autograd.Function):
    """An embedding lookup whose backward pass adds the output gradient into the looked-up rows of the weight's gradient target."""

    @staticmethod
    def forward(ctx, input_ids, weight, padding_idx):  # noqa: D401 - autograd signature
        ctx.save_for_backward(input_ids)
        ctx.weight, ctx.padding_idx = weight, padding_idx
        return F.embedding(input_ids, weight, padding_idx)

    @staticmethod
    def backward(ctx, grad_output):
        (input_ids,) = ctx.saved_tensors
        weight = ctx.weight
        rows = input_ids.reshape(-1)
        grad_rows = grad_output.reshape(-1, weight.size(1))
        if ctx.padding_idx is not None:  # as nn.Embedding: the padding row gets no gradient
            keep = rows != ctx.padding_idx
            rows, grad_rows = rows[keep], grad_rows[keep]
        target = gradient_target(weight)
        target.index_add_(0, rows, grad_rows.to(target.dtype))
        release_rows(weight, slice(None))
        return None, None, None
