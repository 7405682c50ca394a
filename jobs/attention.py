"""Attention for training on the CPU as plain matrix products, in place of torch's flash kernel.

What SDPA picks on the CPU for a training pass is its flash kernel. At the lengths mftd trains on
(rows of a few hundred tokens, heads of 64) that kernel is slow for the work it does. Its backward pass
runs at about 50 GFLOP/s here, and it allocates buffers in its threads. Given a mask (packed rows,
padded rows), it also computes every block of the row.

``matmul_attention`` does the same arithmetic as two batched matrix products in the activations'
dtype (accumulating in float32) around one float32 softmax:
- the query heads are grouped under the key/value head they share, so keys and values are never
  repeated;
- the scores are scaled, masked and normalised in float32; the weights are rounded to the values'
  dtype for the second product, as in the flash kernel;
- the mask is the boolean one transformers builds for SDPA (True where a query may attend), so
  packed examples, padding and sliding windows reach it exactly as they reach SDPA; it is built
  for plain causal passes too (``always_a_mask``), so every pass reaches the layers in one form.

Measured on SmolLM2-135M LoRA (bfloat16 base, 2 threads), alternating with SDPA in one process:
- the chat benchmark's first 12 packed micro-batches: 307 against 277 useful tokens/s;
- 4 rows of 256 tokens: 360 against 336.
The loss is closer to a float32 model's than SDPA's (a relative difference of 6e-6 against 5e-4 on
a packed chat micro-batch). The gradients are as close (4.7% against 4.1%: the bfloat16 base
accounts for most of it). In float32 the two agree to 3e-6.

The price is memory: autograd keeps each layer's attention weights, batch x heads x sequence²
numbers in float32 and again in the activations' dtype. So only a plan with room for them uses it
(``MemoryPlan.attention``: the plans that also get the fast allocator), and its estimate counts them.
On SmolLM2 at micro-batch 4 x 256 the peak rose from 1,799 to 2,493 MB.

Anything this does not cover goes to transformers' SDPA function unchanged:
- attention dropout;
- soft-capped logits;
- sinks or a position bias;
- a query shorter than its keys (generation with a cache).
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from transformers import AttentionInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

IMPLEMENTATION = "mftd_matmul"
# What transformers would otherwise run, and whose masks this implementation reads.
REPLACES = "sdpa"
# Arguments with which attention is not plain softmax(QK^T)V.
_UNHANDLED_ARGUMENTS = ("softcap", "s_aux", "sinks", "position_bias")


def is_handled(query: torch.Tensor, key: torch.Tensor, dropout: float, kwargs: dict[str, Any]) -> bool:
    """Whether ``matmul_attention`` computes this call itself (else SDPA does)."""
    return (
        dropout == 0.0
        and query.shape[2] == key.shape[2]
        and query.shape[1] % key.shape[1] == 0
        and not kwargs.get("output_attentions", False)
        and all(kwargs.get(name) is None for name in _UNHANDLED_ARGUMENTS)
    )


def matmul_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: Optional[torch.Tensor],
    dropout: float = 0.0,
    scaling: Optional[float] = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Attention in transformers' attention-function convention.

    Args:
        query: (batch, heads, length, head_dim).
        key, value: (batch, kv_heads, length, head_dim).
        attention_mask: boolean (batch or 1, 1, length, length), True where a query may attend; None for plain causal.

    Returns:
        The output as (batch, length, heads, head_dim), in the query's dtype, and no weights.
    """
    if not is_handled(query, key, dropout, kwargs):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    batch, heads, length, head_dim = query.shape
    kv_heads = key.shape[1]
    groups = heads // kv_heads
    scale = scaling if scaling is not None else head_dim**-0.5
    if attention_mask is None:  # not from always_a_mask (a model that builds no mask): plain causal
        attention_mask = torch.ones(length, length, dtype=torch.bool, device=query.device).tril()
    elif attention_mask.dtype != torch.bool:  # an additive float mask: 0 where attending
        attention_mask = attention_mask == 0
    # repeat_kv gives key/value head i to query heads i * groups ... (i + 1) * groups - 1: a reshape groups them.
    grouped = query.reshape(batch, kv_heads, groups * length, head_dim)
    scores = torch.matmul(grouped, key.transpose(-1, -2)).view(batch, kv_heads, groups, length, length)
    keep = attention_mask.reshape(-1, 1, 1, length, length)
    # The float minimum, not -inf: a row with nowhere to attend gets even weights, not NaN.
    scores = scores.float().mul_(scale).masked_fill_(~keep, torch.finfo(torch.float32).min)
    weights = torch.softmax(scores, dim=-1).to(value.dtype).view(batch, kv_heads, groups * length, length)
    output = torch.matmul(weights, value).view(batch, heads, length, head_dim)
    return output.transpose(1, 2).to(query.dtype), None


def always_a_mask(*args: Any, **kwargs: Any) -> Optional[torch.Tensor]:
    """SDPA's boolean mask, made even where SDPA would leave it out for a plain causal pass.

    Every micro-batch then reaches the layers with a mask of one layout: a tensor of its own, contiguous
    (a plain causal mask comes expanded over the batch, with strides of 0, and a packed one as a view,
    and compiled code keeps apart what it saw of either): a row holding one example and no padding
    looks like any packed one, so layers compiled for one need no second graph for the other
    (``jobs/compile.py``). The mask is made once per forward pass, for all layers.
    """
    mask = sdpa_mask(*args, **{**kwargs, "allow_is_causal_skip": False})
    return mask.clone(memory_format=torch.contiguous_format) if mask is not None else None


AttentionInterface.register(IMPLEMENTATION, matmul_attention)
AttentionMaskInterface.register(IMPLEMENTATION, always_a_mask)


def use_matmul_attention(model: PreTrainedModel) -> bool:
    """Switch ``model`` (or the model a PEFT model wraps) from SDPA to ``matmul_attention``; False when it does not run SDPA."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(base.config, "_attn_implementation", None) != REPLACES:
        return False
    base.set_attn_implementation(IMPLEMENTATION)
    return True
