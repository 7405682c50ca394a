"""What a job becomes after its worker was killed for memory: a retry at a smaller micro-batch, or a failure with the planner's numbers.

The worker writes its memory plan (``job.memory_plan_json``) before training starts and never picks
a micro-batch above ``job.micro_batch_cap``. After a memory kill the daemon lowers the cap to the next
smaller micro-batch that divides the effective batch (8 -> 4 -> 2 -> 1), so the retry trains the same
effective batch with more accumulation. Each retry lowers the cap, so the retries end: a job killed
at micro-batch 1 cannot be made smaller this way and fails, saying what the planner expected and
what would make it fit.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Optional

from mftd.memory_plan import MemoryEstimate

FIT_ADVICE = (
    "a shorter max_seq_len, method lora, base_dtype bfloat16, parameter_sharding true (full fine-tuning), "
    "a smaller model, or more free memory on the device (close other apps)"
)


@dataclass(frozen=True)
class MemoryVerdict:
    """The daemon's answer to a memory kill.

    ``micro_batch_cap`` is the cap for the retry; None means the job fails.
    """

    micro_batch_cap: Optional[int]
    event_message: str
    status_reason: str

    @property
    def is_retry(self) -> bool:
        return self.micro_batch_cap is not None


def next_micro_batch(micro_batch: int, effective_batch: int) -> Optional[int]:
    """The largest micro-batch below ``micro_batch`` that divides ``effective_batch``; None below 1."""
    for size in range(min(micro_batch, effective_batch + 1) - 1, 0, -1):
        if effective_batch % size == 0:
            return size
    return None


def after_memory_kill(plan_json: Optional[str], micro_batch_cap: Optional[int], killer: str) -> Optional[MemoryVerdict]:
    """Decide the retry (or the failure) of a job whose worker ``killer`` killed for memory.

    Args:
        plan_json: the job's ``memory_plan_json`` as the worker wrote it for this run.
        micro_batch_cap: the job's cap during the run; a plan above it is from an earlier run
            (the worker was killed before it planned), so the cap is what it ran at, at most.
        killer: who killed it, for people ("the out-of-memory killer").

    Returns:
        The verdict, or None when the plan is missing or unreadable (nothing to shrink; the kill is
        then a plain interruption).
    """
    plan = _read_plan(plan_json)
    if plan is None:
        return None
    micro_batch = plan["micro_batch"] if micro_batch_cap is None else min(plan["micro_batch"], micro_batch_cap)
    effective = plan["effective_batch"]
    killed_at = f"the worker was killed for memory ({killer}) at micro-batch {micro_batch} x {effective // micro_batch}"
    smaller = next_micro_batch(micro_batch, effective)
    if smaller is None:
        return _failure(killed_at, plan)
    numbers = f"estimate {plan['estimate_mb']:,.0f} MB, budget {plan['budget_mb']:,.0f} MB"
    retry = f"micro-batch {smaller} x {effective // smaller}, same effective batch {effective}"
    return MemoryVerdict(
        micro_batch_cap=smaller,
        event_message=f"{killed_at} ({numbers}); retrying with {retry}",
        status_reason=f"{killed_at}; it resumes from its last checkpoint with {retry}",
    )


def _failure(killed_at: str, plan: dict[str, Any]) -> MemoryVerdict:
    estimate = _estimate_text(plan)
    checkpointing = "" if plan.get("gradient_checkpointing") else "gradient_checkpointing true, "
    # A plan that fit its budget was killed anyway: the budget promised more than the device had.
    budget = (
        f"a memory_budget_mb below {plan['budget_mb']:,.0f} that the device really has free (the planner then picks settings that fit it), "
        if plan.get("fits", True)
        else ""
    )
    reason = (
        f"{killed_at}, the smallest micro-batch there is, so it cannot be made to fit by accumulating more. "
        f"The planner expected {estimate} against a budget of {plan['budget_mb']:,.0f} MB; the run needed more than the device could give it. "
        f"To fit, try {budget}{checkpointing}{FIT_ADVICE}, then submit the job again."
    )
    return MemoryVerdict(micro_batch_cap=None, event_message=reason, status_reason=reason)


def _estimate_text(plan: dict[str, Any]) -> str:
    """The estimate by part as the planner describes it, or just its total if the parts are missing.

    A part with a default (``mapped``) may be missing: plans written before it existed lack it.
    """
    try:
        # A plan stored before a part was estimated (mapped pages, allocator slack) lacks it; its default is 0.
        parts = {part: float(value) for part, value in plan["estimate"].items() if part in MemoryEstimate.__dataclass_fields__}
        return MemoryEstimate(**parts).describe()
    except (AttributeError, KeyError, TypeError, ValueError):
        return f"estimate {plan['estimate_mb']:,.0f} MB"


def _read_plan(plan_json: Optional[str]) -> Optional[dict[str, Any]]:
    """The plan's fields this module needs, checked; None when the plan is missing or not what the worker writes."""
    if not plan_json:
        return None
    try:
        plan = json.loads(plan_json)
        micro_batch, effective = int(plan["micro_batch"]), int(plan["effective_batch"])
        plan.update(micro_batch=micro_batch, effective_batch=effective, estimate_mb=float(plan["estimate_mb"]), budget_mb=float(plan["budget_mb"]))
    except (ValueError, TypeError, KeyError, AttributeError):
        return None
    if micro_batch < 1 or effective < micro_batch:
        return None
    return plan
