"""Next-token cross-entropy without the [batch, sequence, vocabulary] logits.

The plain loss runs the whole causal LM, so its output layer makes float logits for every position
of the micro-batch at once, and autograd keeps them (and their softmax) until the backward pass: for
Gemma 3's 262,144-token vocabulary that is 1 GB per copy at batch 4 x 256 tokens. Here the decoder
gives the last hidden states, only the positions that carry loss are kept, and the output layer and
the cross-entropy run over chunks of them. For a plain linear output layer, each chunk's gradient with
respect to its hidden states (and to the output weight, if that trains) is worked out right away in
the forward pass and the chunk's logits are dropped; the backward pass only scales it by the
incoming gradient, so nothing is computed twice. An output layer that is not a plain ``nn.Linear``
(a LoRA-wrapped ``lm_head``) goes through ``torch.utils.checkpoint`` per chunk instead.

The sum equals the plain loss up to float summation order, and so do the gradients.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from jobs.data import IGNORE_INDEX
from mftd.memory_plan import CHUNK_LOGIT_ELEMENTS  # logit elements per chunk (64 MB in float32)

# An attribute a trainable output weight may carry: a function returning a zeroed float32 tensor of its shape.
WEIGHT_GRADIENT_ALLOCATOR = "weight_gradient_allocator"

# Model families whose causal LM computes logits as ``lm_head(decoder(...).last_hidden_state)``,
# optionally soft-capped by ``config.final_logit_softcapping``; others use the plain loss.
CHUNKABLE_MODEL_TYPES = frozenset(
    {"gpt2", "qwen2", "qwen3", "llama", "mistral", "gemma", "gemma2", "gemma3_text"}
)


def causal_lm_of(model: torch.nn.Module) -> torch.nn.Module:
    """The Hugging Face causal LM inside ``model`` (a PEFT wrapper's base model, or ``model`` itself)."""
    get_base_model = getattr(model, "get_base_model", None)
    return get_base_model() if get_base_model is not None else model


def is_chunkable(model: torch.nn.Module) -> bool:
    """Whether ``chunked_summed_token_loss`` knows how this model turns hidden states into logits."""
    causal_lm = causal_lm_of(model)
    config = getattr(causal_lm, "config", None)
    return (
        config is not None
        and getattr(config, "model_type", None) in CHUNKABLE_MODEL_TYPES
        and getattr(causal_lm, "base_model", None) is not None
        and causal_lm.base_model is not causal_lm
        and causal_lm.get_output_embeddings() is not None
    )


def chunk_positions(vocab_size: int, chunk_logit_elements: int = CHUNK_LOGIT_ELEMENTS) -> int:
    """Positions per chunk, so that a chunk's float logits hold about ``chunk_logit_elements`` numbers."""
    return max(1, chunk_logit_elements // max(1, vocab_size))


def chunked_summed_token_loss(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    chunk_logit_elements: int = CHUNK_LOGIT_ELEMENTS,
) -> torch.Tensor:
    """Cross-entropy of next-token prediction summed over the positions that carry loss, in chunks.

    Args:
        model: a causal LM for which ``is_chunkable`` holds, or a PEFT model around one.
        input_ids: (batch, sequence) token ids.
        attention_mask: (batch, sequence), 1 for real tokens.
        labels: (batch, sequence), ``IGNORE_INDEX`` where there is no loss (not yet shifted).
        chunk_logit_elements: about how many logits one chunk may hold.

    Returns:
        The summed loss, a float32 scalar that backpropagates into the model.
    """
    causal_lm = causal_lm_of(model)
    hidden = causal_lm.base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    targets = labels[:, 1:].reshape(-1)
    carries_loss = targets != IGNORE_INDEX
    hidden = hidden[:, :-1].reshape(-1, hidden.size(-1))[carries_loss]
    targets = targets[carries_loss]
    lm_head = causal_lm.get_output_embeddings()
    softcap: Optional[float] = getattr(causal_lm.config, "final_logit_softcapping", None)
    chunk = chunk_positions(lm_head.out_features if hasattr(lm_head, "out_features") else causal_lm.config.vocab_size, chunk_logit_elements)
    if type(lm_head) is torch.nn.Linear:
        return _LinearCrossEntropy.apply(hidden, lm_head.weight, lm_head.bias, targets, softcap, chunk)
    total = hidden.new_zeros((), dtype=torch.float32)
    needs_graph = torch.is_grad_enabled()
    for start in range(0, hidden.size(0), chunk):
        arguments = (hidden[start : start + chunk], targets[start : start + chunk])
        if needs_graph:
            total = total + checkpoint(_module_chunk_loss, lm_head, softcap, *arguments, use_reentrant=False)
        else:
            total = total + _module_chunk_loss(lm_head, softcap, *arguments)
    return total


def _new_weight_gradient(weight: torch.Tensor) -> torch.Tensor:
    """A zeroed float32 tensor for the output weight's gradient, from the weight's own allocator if it has one.

    Parameter sharding gives the output weight an allocator (``WEIGHT_GRADIENT_ALLOCATOR``) that maps
    the tensor from a file, so this full-vocabulary gradient need not sit in RAM.
    """
    allocate = getattr(weight, WEIGHT_GRADIENT_ALLOCATOR, None)
    return allocate() if allocate is not None else torch.zeros_like(weight, dtype=torch.float32)


def _soft_cap(logits: torch.Tensor, softcap: Optional[float]) -> torch.Tensor:
    return logits if softcap is None else torch.tanh(logits / softcap) * softcap


def _module_chunk_loss(lm_head: torch.nn.Module, softcap: Optional[float], hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = _soft_cap(lm_head(hidden), softcap)
    return F.cross_entropy(logits.float(), targets, reduction="sum")


class _LinearCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of ``hidden @ weight.T (+ bias)``, whose gradients are found chunk by chunk in the forward pass."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, softcap, chunk):  # noqa: D401 - autograd signature
        wants_hidden, wants_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        wants_bias = bias is not None and ctx.needs_input_grad[2]
        grad_hidden = torch.zeros_like(hidden) if wants_hidden else None
        grad_weight = _new_weight_gradient(weight) if wants_weight else None
        grad_bias = torch.zeros_like(bias, dtype=torch.float32) if wants_bias else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.size(0), chunk):
            part, part_targets = hidden[start : start + chunk], targets[start : start + chunk]
            raw = F.linear(part, weight, bias)
            logits = _soft_cap(raw, softcap).float()
            if softcap is None:
                del raw
            log_probabilities = torch.log_softmax(logits, dim=-1)
            del logits
            total += -log_probabilities.gather(1, part_targets.unsqueeze(1)).sum()
            if not (wants_hidden or wants_weight or wants_bias):
                continue
            # d(summed loss)/d(logits) = softmax - one_hot(target), built in place of the log-probabilities.
            grad_logits = log_probabilities.exp_()
            del log_probabilities
            grad_logits[torch.arange(part.size(0), device=part.device), part_targets] -= 1.0
            if softcap is not None:
                grad_logits *= 1.0 - torch.tanh(raw.float() / softcap) ** 2
                del raw
            grad_logits = grad_logits.to(weight.dtype)
            if wants_hidden:
                grad_hidden[start : start + chunk] = grad_logits @ weight
            if wants_weight:
                grad_weight += (grad_logits.t() @ part).float()
            if wants_bias:
                grad_bias += grad_logits.float().sum(dim=0)
            del grad_logits
        ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
        ctx.parameter_dtypes = (weight.dtype, None if bias is None else bias.dtype)
        return total

    @staticmethod
    def backward(ctx, grad_total):
        grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
        weight_dtype, bias_dtype = ctx.parameter_dtypes
        return (
            None if grad_hidden is None else grad_hidden * grad_total.to(grad_hidden.dtype),
            # In place: for a tied embedding autograd holds this until the input embedding's gradient arrives.
            None if grad_weight is None else grad_weight.mul_(grad_total).to(weight_dtype),
            None if grad_bias is None else (grad_bias * grad_total).to(bias_dtype),
            None,
            None,
            None,
        )
