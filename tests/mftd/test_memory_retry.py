"""The decision after a memory kill, from the plan JSON the worker writes."""

from __future__ import annotations

import json
import re
from dataclasses import replace

import pytest

from mftd.memory_plan import plan_memory
from mftd.memory_retry import after_memory_kill, next_micro_batch
from tests.mftd.conftest import plan_json
from tests.mftd.test_memory_planner import FULL_UNDER_A_CAP, QWEN05B

KILLER = "the out-of-memory killer"


@pytest.mark.parametrize(
    "micro_batch, effective_batch, expected",
    [(8, 8, 4), (4, 8, 2), (2, 8, 1), (1, 8, None), (6, 12, 4), (3, 6, 2), (5, 5, 1), (16, 16, 8)],
)
def test_next_micro_batch_divides_the_effective_batch(micro_batch, effective_batch, expected):
    assert next_micro_batch(micro_batch, effective_batch) == expected


def test_a_kill_at_micro_batch_8_retries_at_4_with_the_same_effective_batch():
    verdict = after_memory_kill(plan_json(8, 8), None, KILLER)
    assert verdict.is_retry and verdict.micro_batch_cap == 4
    assert verdict.event_message == (
        "the worker was killed for memory (the out-of-memory killer) at micro-batch 8 x 1 "
        "(estimate 1,234 MB, budget 9,642 MB); retrying with micro-batch 4 x 2, same effective batch 8"
    )
    assert "resumes from its last checkpoint with micro-batch 4 x 2" in verdict.status_reason


def test_a_plan_above_the_cap_is_from_an_earlier_run_and_the_cap_is_what_it_ran_at():
    """Killed while loading, before it planned: the old plan says 8, but the cap of 4 held."""
    verdict = after_memory_kill(plan_json(8, 8), 4, KILLER)
    assert verdict.micro_batch_cap == 2


def test_a_kill_at_micro_batch_1_fails_with_the_planner_numbers_and_what_to_do():
    verdict = after_memory_kill(plan_json(1, 8), 1, KILLER)
    assert not verdict.is_retry
    reason = verdict.status_reason
    assert reason.startswith("the worker was killed for memory (the out-of-memory killer) at micro-batch 1 x 8, the smallest")
    assert "estimate 1,234 MB (weights 17, gradients 0, optimizer 1, activations 770, logits 26, runtime 420)" in reason
    assert "budget of 9,642 MB" in reason
    for advice in ("gradient_checkpointing true", "max_seq_len", "method lora", "base_dtype bfloat16", "parameter_sharding", "smaller model", "free memory"):
        assert advice in reason
    assert "a memory_budget_mb below 9,642 that the device really has free" in reason
    checkpointed = after_memory_kill(plan_json(1, 1, gradient_checkpointing=True, fits=False), None, KILLER)
    assert "gradient_checkpointing true" not in checkpointed.status_reason
    assert "memory_budget_mb" not in checkpointed.status_reason


@pytest.mark.parametrize("plan", [None, "", "not json", json.dumps({"micro_batch": 8}), json.dumps([1, 2]), plan_json(8, 8).replace('"effective_batch": 8', '"effective_batch": 4')])
def test_no_usable_plan_means_no_verdict(plan):
    assert after_memory_kill(plan, None, KILLER) is None


def test_a_sharded_run_killed_at_micro_batch_1_shows_the_mapped_pages_beside_its_resident_need():
    plan = plan_memory(QWEN05B, replace(FULL_UNDER_A_CAP, budget_mb=2560, micro_batch_cap=1))
    assert plan.micro_batch == 1 and plan.parameter_sharding and plan.estimate.mapped > 500
    reason = after_memory_kill(json.dumps(plan.to_json()), 1, KILLER).status_reason
    assert f"expected estimate {plan.estimate.total:,.0f} MB (weights" in reason
    shown = re.search(r"runtime 501, mapped 519; resident ([\d,]+)\)", reason)
    # Rebuilt from the stored parts (each rounded to 0.1 MB), the resident sum may land on the next whole MB.
    assert shown and float(shown[1].replace(",", "")) == pytest.approx(plan.estimate.resident, abs=1)
