"""Whether bfloat16 matmuls are fast here: the CPU's instructions and torch's own build must both allow it.

A bfloat16 base halves a LoRA run's weight memory; on a CPU that multiplies bfloat16 natively its
matmuls are also about twice as fast as float32. Elsewhere torch emulates them through float32 and
they are slower, so a run planned with bfloat16 for speed should fall back to float32, saying why.
Measured on one core of an AVX512-BF16 x86 (1024-square ``torch.mm``, best of 5): bfloat16 209
GFLOP/s against float32's 95; with oneDNN held to plain AVX-512 (``ONEDNN_MAX_CPU_ISA=AVX512_CORE``,
as on a CPU without the instructions), bfloat16 38 against 80.

``computing_in`` is how a run multiplies in bfloat16 (``jobs.training.train`` and
``jobs.evaluation.evaluate`` both enter it): under CPU autocast, with PEFT's own input casting off.
PEFT casts every adapter's input to the adapter's float32 and adds the float32 update to the
bfloat16 output before casting it back: three copies of an activation per adapted layer, forward
and backward. Under autocast the adapter multiplies in bfloat16 straight from the base's output
(its float32 weights are cast, which costs next to nothing at rank r) and gradients still reach
the float32 weights. Measured on SmolLM2-135M LoRA (bfloat16 base, q/k/v/o, 4 x 256 tokens, the two
variants alternated in one process): 14 against 10 tokens/s with both cores heavily shared; the
gradients differ from PEFT's casts by 2.4% of their norm, the loss by 0.03%.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import ContextManager, Optional

import torch

from mftd.cpu import CPUINFO_PATH, has_fast_bfloat16


def bfloat16_matmul_problem(cpuinfo: Path = CPUINFO_PATH) -> Optional[str]:
    """Why bfloat16 matmuls would be slow on this machine, as a sentence for a warning; None when they are fast.

    Args:
        cpuinfo: ``/proc/cpuinfo``, for the CPU's bfloat16 instructions.
    """
    if not has_fast_bfloat16(cpuinfo):
        return (
            "this CPU has no bfloat16 matrix instructions (x86 avx512_bf16 or amx_bf16, Arm bf16), "
            "so torch would emulate bfloat16 matmuls through float32, slower than float32 itself"
        )
    if not torch.backends.mkldnn.is_available():
        return "this torch build has no oneDNN (mkldnn), which is what runs bfloat16 matmuls on the CPU's bfloat16 instructions"
    try:
        supported_by_onednn = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    except (AttributeError, RuntimeError):  # an older or trimmed build without the check: the CPU's flags decide
        return None
    if not supported_by_onednn:
        return "torch's oneDNN does not report bfloat16 support on this CPU"
    return None


def bfloat16_matmul_supported(cpuinfo: Path = CPUINFO_PATH) -> bool:
    """True when both the CPU and torch can multiply bfloat16 matrices natively (see ``bfloat16_matmul_problem``)."""
    return bfloat16_matmul_problem(cpuinfo) is None


def computing_in(model: torch.nn.Module, dtype: Optional[torch.dtype]) -> ContextManager:
    """Run ``model``'s forward passes with matrix products in ``dtype`` (None: in its weights' dtypes).

    CPU autocast without its weight cache (a bfloat16 copy of a weight lives only as long as autograd
    needs it), and for a PEFT model its adapters' input casting off, so that an adapter multiplies
    the base's bfloat16 activations directly instead of copying them to float32 and back.
    """
    if dtype is None:
        return contextlib.nullcontext()
    stack = contextlib.ExitStack()
    stack.enter_context(torch.autocast("cpu", dtype=dtype, cache_enabled=False))
    if hasattr(model, "peft_config"):
        from peft.helpers import disable_input_dtype_casting

        stack.enter_context(disable_input_dtype_casting(model))
    return stack
