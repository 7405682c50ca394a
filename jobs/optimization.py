"""The optimizer (AdamW) and the learning-rate schedule (linear warmup, then constant, linear or cosine)."""

from __future__ import annotations

import math
from typing import Callable, Iterable

import torch
from torch.optim.lr_scheduler import LambdaLR


def lr_multiplier(schedule: str, warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """The factor on the peak learning rate for the optimizer step with 0-based index ``step``.

    Warmup rises linearly, ``(step + 1) / warmup_steps``, so the first step already learns and step
    ``warmup_steps - 1`` runs at the peak. After warmup, with ``progress`` going from 0 (first step
    after warmup) towards 1 (one past the last step): ``constant`` stays at 1, ``linear`` is
    ``1 - progress``, ``cosine`` is ``(1 + cos(pi * progress)) / 2``.

    Args:
        schedule: ``constant``, ``linear`` or ``cosine``.
        warmup_steps: steps of linear warmup (0 for none).
        total_steps: optimizer steps in the whole run.

    Returns:
        A function of the step index, for ``torch.optim.lr_scheduler.LambdaLR``.

    Raises:
        ValueError: an unknown schedule name.
    """
    if schedule not in ("constant", "linear", "cosine"):
        raise ValueError(f"unknown lr_schedule {schedule!r}; expected constant, linear or cosine")
    decay_steps = max(1, total_steps - warmup_steps)

    def multiplier(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / decay_steps)
        if schedule == "linear":
            return 1.0 - progress
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0

    return multiplier


def build_optimizer(
    named_parameters: Iterable[tuple[str, torch.nn.Parameter]],
    learning_rate: float,
    weight_decay: float,
    betas: tuple[float, float],
    eps: float,
) -> torch.optim.AdamW:
    """AdamW over the trainable parameters, with decoupled weight decay on matrices only.

    Biases and norm weights (1-dimensional) get no decay: shrinking them towards 0 does not regularise,
    it only shifts activations.

    Args:
        named_parameters: ``model.named_parameters()``; frozen ones are left out.
        learning_rate: the peak rate (the schedule scales it).
        weight_decay: AdamW decoupled weight decay for matrices.
        betas: AdamW (beta1, beta2).
        eps: AdamW epsilon.

    Returns:
        The optimizer, with the decayed group first.
    """
    trainable = [parameter for _name, parameter in named_parameters if parameter.requires_grad]
    groups = [
        {"params": [p for p in trainable if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in trainable if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW([group for group in groups if group["params"]], lr=learning_rate, betas=betas, eps=eps)


def build_lr_scheduler(optimizer: torch.optim.Optimizer, schedule: str, warmup_steps: int, total_steps: int) -> LambdaLR:
    """A ``LambdaLR`` following ``lr_multiplier``; call ``step()`` once per optimizer step."""
    return LambdaLR(optimizer, lr_multiplier(schedule, warmup_steps, total_steps))
