"""Next-token cross-entropy without the [batch, sequence, vocabulary] logits.

The plain loss runs the whole causal LM, so its output layer makes float logits for every position
of the micro-batch at once, and autograd keeps them (and their softmax) until the backward pass: for
Gemma 3's 262,144-token vocabulary that is 1 GB per copy at batch 4 x 256 tokens. Here the decoder
gives the last hidden states, only the positions that carry loss are kept, and the output layer and
the cross-entropy run over chunks of them. For a plain linear output layer, each chunk's gradient with
respect to its hidden states is worked out right away in the forward pass and the chunk's logits are
dropped; the backward pass only scales it by the incoming gradient. An output layer that is not a
plain ``nn.Linear`` (a LoRA-wrapped ``lm_head``) goes through ``torch.utils.checkpoint`` per chunk instead.

A trained output weight gets its gradient in the backward pass, in blocks of vocabulary rows: each
block's logits for all positions are computed again (the forward pass keeps each position's
log-normaliser), turned into their gradient, and ``block_gradient.T @ hidden`` is added into the
weight's gradient target (``jobs.gradient_sink``), so no [vocabulary, hidden] temporary is made. The
input embedding's lookup then adds only its rows there, so a tied embedding's gradient is built in
place. This costs one more logits matmul per micro-batch than forming the weight's gradient in the
forward pass, which needs the incoming gradient's scale before it is known, or a full-size tensor
to hold the gradient until then.

The sum equals the plain loss up to float summation order, and so do the gradients.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from jobs.batches import attention_inputs
from jobs.data import IGNORE_INDEX
from jobs.gradient_sink import can_embed, embed, gradient_target, release_rows
from mftd.memory_plan import CHUNK_LOGIT_ELEMENTS  # logit elements per chunk (64 MB in float32)

# Output-weight gradient rows formed at once in the backward pass (16 MB of float32).
WEIGHT_BLOCK_ELEMENTS = 1 << 22

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
    position_ids: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Cross-entropy of next-token prediction summed over the positions that carry loss, in chunks.

    Args:
        model: a causal LM for which ``is_chunkable`` holds, or a PEFT model around one.
        input_ids: (batch, sequence) token ids.
        attention_mask: (batch, sequence), 1 for real tokens; not passed to the model with ``position_ids``.
        labels: (batch, sequence), ``IGNORE_INDEX`` where there is no loss (not yet shifted).
        chunk_logit_elements: about how many logits one chunk may hold.
        position_ids: packed rows (``jobs.batches.packed_rows``): positions restarting at every example,
            from which the model confines attention to each example.

    Returns:
        The summed loss, a float32 scalar that backpropagates into the model.
    """
    causal_lm = causal_lm_of(model)
    lm_head = causal_lm.get_output_embeddings()
    is_linear_head = type(lm_head) is torch.nn.Linear
    embedding = causal_lm.get_input_embeddings()
    # Only beside a linear head: a tied weight must not get part of its gradient from autograd.
    if is_linear_head and can_embed(embedding):
        inputs = {"inputs_embeds": embed(embedding, input_ids)}
    else:
        inputs = {"input_ids": input_ids}
    hidden = causal_lm.base_model(**inputs, **attention_inputs(attention_mask, position_ids), use_cache=False).last_hidden_state
    # Under autocast (full fine-tuning in bfloat16) the decoder's products are bfloat16, but the output
    # layer and the cross-entropy stay in the weights' dtype: the loss is where rounding would show.
    with torch.autocast(hidden.device.type, enabled=False):
        head_weight = getattr(lm_head, "weight", None)
        if head_weight is not None:
            hidden = hidden.to(head_weight.dtype)
        return _head_loss(causal_lm, lm_head, is_linear_head, hidden, labels, chunk_logit_elements)


def _head_loss(causal_lm, lm_head, is_linear_head: bool, hidden: torch.Tensor, labels: torch.Tensor, chunk_logit_elements: int) -> torch.Tensor:
    """The summed loss of the decoder's last hidden states: the output layer and cross-entropy over chunks of loss positions."""
    targets = labels[:, 1:].reshape(-1)
    carries_loss = targets != IGNORE_INDEX
    hidden = hidden[:, :-1].reshape(-1, hidden.size(-1))[carries_loss]
    targets = targets[carries_loss]
    softcap: Optional[float] = getattr(causal_lm.config, "final_logit_softcapping", None)
    chunk = chunk_positions(lm_head.out_features if hasattr(lm_head, "out_features") else causal_lm.config.vocab_size, chunk_logit_elements)
    if is_linear_head:
        rows_per_block = max(1, min(chunk_logit_elements // max(1, hidden.size(0)), WEIGHT_BLOCK_ELEMENTS // hidden.size(1)))
        return _LinearCrossEntropy.apply(hidden, lm_head.weight, lm_head.bias, targets, softcap, chunk, rows_per_block)
    total = hidden.new_zeros((), dtype=torch.float32)
    needs_graph = torch.is_grad_enabled()
    for start in range(0, hidden.size(0), chunk):
        arguments = (hidden[start : start + chunk], targets[start : start + chunk])
        if needs_graph:
            total = total + checkpoint(_module_chunk_loss, lm_head, softcap, *arguments, use_reentrant=False)
        else:
            total = total + _module_chunk_loss(lm_head, softcap, *arguments)
    return total


def _soft_cap(logits: torch.Tensor, softcap: Optional[float]) -> torch.Tensor:
    return logits if softcap is None else torch.tanh(logits / softcap) * softcap


def _module_chunk_loss(lm_head: torch.nn.Module, softcap: Optional[float], hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = _soft_cap(lm_head(hidden), softcap)
    return F.cross_entropy(logits.float(), targets, reduction="sum")


class _LinearCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of ``hidden @ weight.T (+ bias)``: chunks of positions forward, blocks of vocabulary rows for the weight."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, softcap, chunk, rows_per_block):  # noqa: D401 - autograd signature
        wants_hidden, wants_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        wants_bias = bias is not None and ctx.needs_input_grad[2]
        grad_hidden = torch.zeros_like(hidden) if wants_hidden else None
        grad_bias = torch.zeros_like(bias, dtype=torch.float32) if wants_bias else None
        log_normalizers = hidden.new_empty(hidden.size(0), dtype=torch.float32) if wants_weight else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.size(0), chunk):
            part, part_targets = hidden[start : start + chunk], targets[start : start + chunk]
            raw = F.linear(part, weight, bias)
            logits = _soft_cap(raw, softcap).float()
            if softcap is None:
                del raw
            if wants_weight:
                log_normalizers[start : start + chunk] = torch.logsumexp(logits, dim=-1)
            log_probabilities = torch.log_softmax(logits, dim=-1)
            del logits
            total += -log_probabilities.gather(1, part_targets.unsqueeze(1)).sum()
            if not (wants_hidden or wants_bias):
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
            if wants_bias:
                grad_bias += grad_logits.float().sum(dim=0)
            del grad_logits
        ctx.save_for_backward(grad_hidden, grad_bias, hidden if wants_weight else None, targets, log_normalizers)
        # The weight itself, not a saved copy: its gradient goes into its own gradient target.
        ctx.weight, ctx.bias = weight, bias
        ctx.softcap, ctx.rows_per_block, ctx.wants_weight = softcap, rows_per_block, wants_weight
        return total

    @staticmethod
    def backward(ctx, grad_total):
        grad_hidden, grad_bias, hidden, targets, log_normalizers = ctx.saved_tensors
        if ctx.wants_weight:
            _add_weight_gradient(hidden, ctx.weight, ctx.bias, targets, log_normalizers, ctx.softcap, grad_total, ctx.rows_per_block)
        return (
            None if grad_hidden is None else grad_hidden * grad_total.to(grad_hidden.dtype),
            None,  # added into the weight's gradient target above
            None if grad_bias is None else (grad_bias * grad_total).to(ctx.bias.dtype),
            None,
            None,
            None,
            None,
        )


def _add_weight_gradient(hidden, weight, bias, targets, log_normalizers, softcap, grad_total, rows_per_block) -> None:
    """Add ``grad_total`` times the summed loss's gradient with respect to ``weight`` into its gradient target, block by block of rows."""
    target = gradient_target(weight)
    positions = torch.arange(hidden.size(0), device=hidden.device)
    scale = grad_total.to(weight.dtype)
    for start in range(0, weight.size(0), rows_per_block):
        rows = slice(start, start + rows_per_block)
        raw = F.linear(hidden, weight[rows], None if bias is None else bias[rows])
        logits = _soft_cap(raw, softcap).float()
        # softmax - one_hot(target) for this block's columns, in place of the logits.
        grad_logits = logits.sub_(log_normalizers.unsqueeze(1)).exp_()
        in_block = (targets >= start) & (targets < start + rows_per_block)
        grad_logits[positions[in_block], targets[in_block] - start] -= 1.0
        if softcap is not None:
            grad_logits *= 1.0 - torch.tanh(raw.float() / softcap) ** 2
        del raw, logits
        grad_logits = grad_logits.to(weight.dtype).mul_(scale)
        target[rows].add_(grad_logits.t() @ hidden)
        del grad_logits
        release_rows(weight, rows)
