"""Learning-rate schedules and the optimizer's parameter groups."""

from __future__ import annotations

import math

import pytest
import torch

from jobs.optimization import build_lr_scheduler, build_optimizer, lr_multiplier


def values(schedule: str, warmup: int, total: int) -> list[float]:
    multiplier = lr_multiplier(schedule, warmup, total)
    return [multiplier(step) for step in range(total)]


def test_warmup_rises_linearly_to_the_peak():
    assert values("constant", 4, 6) == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


def test_linear_decays_towards_zero_after_warmup():
    assert values("linear", 2, 6) == pytest.approx([0.5, 1.0, 1.0, 0.75, 0.5, 0.25])


def test_cosine_follows_half_a_cosine_after_warmup():
    expected = [1.0] + [0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(4)]
    assert values("cosine", 1, 5) == pytest.approx(expected)


def test_no_warmup_starts_at_the_peak():
    assert values("cosine", 0, 3)[0] == 1.0


def test_unknown_schedule_is_refused():
    with pytest.raises(ValueError, match="unknown lr_schedule"):
        lr_multiplier("step", 0, 10)


def test_scheduler_sets_the_optimizer_rate_per_step():
    model = torch.nn.Linear(2, 2)
    optimizer = build_optimizer(model.named_parameters(), 0.1, 0.0, (0.9, 0.999), 1e-8)
    scheduler = build_lr_scheduler(optimizer, "linear", 2, 4)
    seen = []
    for _ in range(4):
        seen.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx([0.05, 0.1, 0.1, 0.05])


def test_weight_decay_applies_to_matrices_only_and_frozen_parameters_are_left_out():
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.LayerNorm(3), torch.nn.Linear(3, 1))
    model[2].weight.requires_grad_(False)
    optimizer = build_optimizer(model.named_parameters(), 1e-3, 0.1, (0.8, 0.9), 1e-6)
    decayed, not_decayed = optimizer.param_groups
    assert decayed["weight_decay"] == 0.1 and [p.shape for p in decayed["params"]] == [torch.Size([3, 3])]
    assert not_decayed["weight_decay"] == 0.0 and len(not_decayed["params"]) == 4  # two biases, norm weight and bias
    assert decayed["betas"] == (0.8, 0.9) and decayed["eps"] == 1e-6
