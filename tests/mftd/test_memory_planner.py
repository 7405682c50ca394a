"""The memory planner's choices: it keeps the effective batch, gives up speed before precision, and says what would fit."""

from __future__ import annotations

from dataclasses import replace

import pytest

from mftd.memory_plan import ModelShape, PlanRequest, does_not_fit_message, estimate_peak, largest_fitting_sequence, plan_memory

SMOLLM2 = ModelShape(parameters=134_515_008, hidden_size=576, intermediate_size=1536, num_layers=30, num_attention_heads=9, vocab_size=49152)
QWEN05B = ModelShape(parameters=494_032_768, hidden_size=896, intermediate_size=4864, num_layers=24, num_attention_heads=14, vocab_size=151936)
GEMMA3_270M = ModelShape(parameters=268_098_176, hidden_size=640, intermediate_size=2048, num_layers=18, num_attention_heads=4, vocab_size=262144,
                         model_type="gemma3_text")
LORA = PlanRequest(method="lora", base_dtype=None, lora_rank=8, batch_size=4, grad_accum_steps=1, sequence=256,
                   gradient_checkpointing=False, parameter_sharding=None, budget_mb=100_000)


def budget_for(shape: ModelShape, micro_batch: int, checkpointed: bool, base_dtype: str = "float32", method: str = "lora", sharded: bool = False) -> float:
    return estimate_peak(shape, method, base_dtype, 8, micro_batch, 256, checkpointed, sharded).total + 1


def test_a_roomy_budget_keeps_the_job_as_asked():
    plan = plan_memory(SMOLLM2, LORA)
    assert (plan.micro_batch, plan.grad_accum_steps, plan.gradient_checkpointing, plan.base_dtype, plan.fits) == (4, 1, False, "float32", True)


def test_the_planner_shrinks_the_micro_batch_first_then_checkpoints_then_rounds_the_base():
    smaller = plan_memory(SMOLLM2, replace(LORA, budget_mb=budget_for(SMOLLM2, 2, False)))
    assert (smaller.micro_batch, smaller.grad_accum_steps, smaller.gradient_checkpointing, smaller.base_dtype) == (2, 2, False, "float32")
    checkpointed = plan_memory(SMOLLM2, replace(LORA, budget_mb=budget_for(SMOLLM2, 4, True)))
    assert checkpointed.gradient_checkpointing and checkpointed.base_dtype == "float32"
    assert checkpointed.micro_batch * checkpointed.grad_accum_steps == 4
    rounded = plan_memory(SMOLLM2, replace(LORA, budget_mb=budget_for(SMOLLM2, 1, True, "bfloat16")))
    assert (rounded.micro_batch, rounded.gradient_checkpointing, rounded.base_dtype, rounded.fits) == (1, True, "bfloat16", True)


def test_a_base_dtype_the_job_set_is_never_changed():
    plan = plan_memory(SMOLLM2, replace(LORA, base_dtype="float32", budget_mb=budget_for(SMOLLM2, 1, True, "bfloat16")))
    assert plan.base_dtype == "float32" and not plan.fits


def test_the_cap_from_a_kill_for_memory_bounds_the_micro_batch():
    plan = plan_memory(SMOLLM2, replace(LORA, batch_size=8, micro_batch_cap=3))
    assert (plan.micro_batch, plan.grad_accum_steps) == (2, 4)


def test_full_fine_tuning_shards_only_when_it_must():
    full = PlanRequest(method="full", base_dtype=None, lora_rank=8, batch_size=1, grad_accum_steps=4, sequence=256,
                       gradient_checkpointing=True, parameter_sharding=None, budget_mb=100_000)
    assert not plan_memory(QWEN05B, full).parameter_sharding
    phone = plan_memory(QWEN05B, replace(full, budget_mb=3072))
    assert phone.parameter_sharding and phone.fits
    assert phone.estimate.total < estimate_peak(QWEN05B, "full", "float32", 8, 1, 256, True).total / 2
    refused = plan_memory(QWEN05B, replace(full, budget_mb=3072, parameter_sharding=False))
    assert not refused.fits and not refused.parameter_sharding


def test_when_nothing_fits_the_message_gives_the_estimate_and_the_longest_sequence_that_fits():
    request = replace(LORA, base_dtype="float32", sequence=4096, budget_mb=budget_for(SMOLLM2, 1, True) + 100)
    plan = plan_memory(SMOLLM2, request)
    assert not plan.fits and (plan.micro_batch, plan.gradient_checkpointing) == (1, True)
    longest = largest_fitting_sequence(SMOLLM2, request)
    assert 256 < longest < 4096
    assert plan_memory(SMOLLM2, replace(request, sequence=longest)).fits
    assert not plan_memory(SMOLLM2, replace(request, sequence=longest + 1)).fits
    message = does_not_fit_message(SMOLLM2, request, plan)
    assert f"{plan.estimate.total:,.0f}" in message and f"max_seq_len that fits is {longest}" in message


def test_a_model_too_big_for_the_budget_says_what_to_change():
    request = PlanRequest(method="full", base_dtype=None, lora_rank=8, batch_size=1, grad_accum_steps=1, sequence=256,
                          gradient_checkpointing=False, parameter_sharding=False, budget_mb=1000)
    plan = plan_memory(QWEN05B, request)
    assert largest_fitting_sequence(QWEN05B, request) is None
    message = does_not_fit_message(QWEN05B, request, plan)
    assert "method lora" in message and "memory_budget_mb" in message


def test_plan_json_has_what_the_api_and_the_daemon_read():
    plan = plan_memory(SMOLLM2, replace(LORA, batch_size=2, grad_accum_steps=2))
    shown = plan.to_json()
    assert shown["micro_batch"] * shown["grad_accum_steps"] == shown["effective_batch"] == 4
    assert shown["estimate_mb"] == round(sum(shown["estimate"].values()), 1) or abs(shown["estimate_mb"] - sum(shown["estimate"].values())) < 1
    assert shown["fits"] and shown["budget_mb"] == 100_000


def test_a_choice_the_job_took_from_the_planner_is_named_when_it_would_fit():
    full = PlanRequest(method="full", base_dtype=None, lora_rank=8, batch_size=1, grad_accum_steps=4, sequence=256,
                       gradient_checkpointing=True, parameter_sharding=False, budget_mb=3072)
    message = does_not_fit_message(QWEN05B, full, plan_memory(QWEN05B, full))
    assert "It fits with parameter_sharding true (" in message
    lora = replace(LORA, base_dtype="float32", budget_mb=budget_for(SMOLLM2, 1, True, "bfloat16"))
    assert "It fits with base_dtype bfloat16 (" in does_not_fit_message(SMOLLM2, lora, plan_memory(SMOLLM2, lora))


def test_on_a_cpu_fast_in_bfloat16_a_null_dtype_is_bfloat16_from_the_start():
    fast = replace(LORA, prefer_bfloat16=True)
    plan = plan_memory(SMOLLM2, fast)
    assert (plan.micro_batch, plan.gradient_checkpointing, plan.base_dtype, plan.compute_dtype) == (4, False, "bfloat16", "bfloat16")
    assert plan_memory(SMOLLM2, replace(fast, base_dtype="float32")).base_dtype == "float32", "the job's own choice wins"
    full = replace(LORA, method="full", prefer_bfloat16=True)
    plan = plan_memory(SMOLLM2, full)
    assert (plan.base_dtype, plan.compute_dtype, plan.to_json()["compute_dtype"]) == ("float32", "bfloat16", "bfloat16")
    assert plan_memory(SMOLLM2, replace(full, compute_dtype="float32")).compute_dtype == "float32"
    assert plan_memory(SMOLLM2, replace(full, prefer_bfloat16=False)).compute_dtype == "float32"


def test_bfloat16_autocast_counts_weight_copies_and_halves_intermediates():
    def full(checkpointed: bool, sharded: bool, compute: str):
        return estimate_peak(SMOLLM2, "full", "float32", 8, 4, 256, checkpointed, sharded, compute)

    decoder_mb = (SMOLLM2.parameters - SMOLLM2.vocab_size * SMOLLM2.hidden_size) / 1024**2
    plain, autocast = full(False, False, "float32"), full(False, False, "bfloat16")
    assert autocast.weights - plain.weights == pytest.approx(decoder_mb * 2)  # every layer's bfloat16 copy, kept for backward
    assert autocast.activations < plain.activations
    checkpointed = full(True, False, "bfloat16").weights - full(True, False, "float32").weights
    assert checkpointed == pytest.approx(decoder_mb * 2 / SMOLLM2.num_layers)  # only the layer being recomputed


# benchmarks/memory_full.py's job: full fine-tuning, 4 examples of 256 tokens a step, only memory_budget_mb set, on a CPU fast in bfloat16.
FULL_UNDER_A_CAP = PlanRequest(method="full", base_dtype=None, lora_rank=8, batch_size=4, grad_accum_steps=1, sequence=256,
                               gradient_checkpointing=False, parameter_sharding=None, budget_mb=3072, prefer_bfloat16=True)


def float32_matrix_mb(shape: ModelShape) -> float:
    return shape.vocab_size * shape.hidden_size * 4 / 2**20


def test_a_sharded_plan_expects_the_output_matrix_it_reads_every_step_where_the_budget_has_room():
    """Qwen2.5-0.5B at 2,560 MB: measured peak RSS 2,658 MB against a resident need of 1,864 MB; its float32 embedding is 519 MB."""
    plan = plan_memory(QWEN05B, replace(FULL_UNDER_A_CAP, budget_mb=2560))
    assert (plan.micro_batch, plan.grad_accum_steps, plan.parameter_sharding, plan.compute_dtype, plan.fits) == (2, 2, True, "bfloat16", True)
    assert plan.estimate.mapped == pytest.approx(float32_matrix_mb(QWEN05B)) == pytest.approx(519.3, abs=0.1)
    assert plan.estimate.resident + plan.estimate.mapped < 2560, "the budget has room for all of it"
    assert plan.estimate.total == pytest.approx(plan.estimate.resident + 519.3, abs=0.1)
    shown = plan.to_json()
    assert shown["estimate_mb"] == pytest.approx(plan.estimate.total, abs=0.1) and shown["resident_mb"] == pytest.approx(plan.estimate.resident, abs=0.1)
    assert shown["estimate_mb"] - shown["resident_mb"] == pytest.approx(shown["estimate"]["mapped"], abs=0.2)
    assert "mapped 519; resident " in plan.describe()


@pytest.mark.parametrize("shape, budget_mb", [(QWEN05B, 3072), (GEMMA3_270M, 1536)])
def test_the_mapped_pages_that_stay_are_capped_by_the_budget(shape, budget_mb):
    """Qwen2.5-0.5B at 3 GiB (micro-batch 4) and Gemma 3 270M at 1.5 GiB: resident need and embedding together are over the budget."""
    plan = plan_memory(shape, replace(FULL_UNDER_A_CAP, budget_mb=budget_mb))
    assert plan.parameter_sharding and plan.fits
    unbounded = estimate_peak(shape, "full", "float32", 8, plan.micro_batch, 256, plan.gradient_checkpointing, True, "bfloat16")
    assert unbounded.resident == pytest.approx(plan.estimate.resident)
    assert unbounded.total > budget_mb, "the whole mapped matrix would not fit beside the resident need"
    assert 0 < plan.estimate.mapped < float32_matrix_mb(shape)
    assert plan.estimate.total == pytest.approx(budget_mb)
    assert plan.to_json()["estimate_mb"] == pytest.approx(budget_mb, abs=0.1)


def test_the_fit_is_decided_on_the_resident_need_not_on_the_mapped_pages():
    resident = estimate_peak(QWEN05B, "full", "float32", 2, 2, 256, False, True, "bfloat16").resident
    tight = plan_memory(QWEN05B, replace(FULL_UNDER_A_CAP, budget_mb=resident + 1))
    assert (tight.micro_batch, tight.parameter_sharding, tight.fits) == (2, True, True)
    assert tight.estimate.mapped == pytest.approx(1) and tight.estimate.total == pytest.approx(resident + 1)
    short = plan_memory(QWEN05B, replace(FULL_UNDER_A_CAP, budget_mb=resident - 1))
    assert short.micro_batch == 1 and short.fits, "one byte short of micro-batch 2's resident need, it takes micro-batch 1"


def test_sharded_plans_that_fit_before_the_mapped_part_still_fit_with_the_same_resident_need():
    # The benchmark's runs, planned (and logged) when the estimate was only the resident need: same settings, same figure.
    for shape, budget_mb, prefer_bfloat16, micro_batch, resident_mb in [
        (QWEN05B, 3072, True, 4, 2741), (QWEN05B, 2560, True, 2, 1865), (GEMMA3_270M, 1536, True, 2, 1387),
        (QWEN05B, 3072, False, 2, 2292), (GEMMA3_270M, 1536, False, 2, 1521), (SMOLLM2, 1500, False, 2, 1459),
    ]:
        plan = plan_memory(shape, replace(FULL_UNDER_A_CAP, budget_mb=budget_mb, prefer_bfloat16=prefer_bfloat16))
        assert (plan.micro_batch, plan.parameter_sharding, plan.fits) == (micro_batch, True, True), (shape, budget_mb)
        assert plan.estimate.resident == pytest.approx(resident_mb, abs=1) and plan.to_json()["resident_mb"] == pytest.approx(resident_mb, abs=1)
        assert plan.estimate.total == pytest.approx(min(budget_mb, resident_mb + float32_matrix_mb(shape)), abs=1)


def test_a_plan_that_does_not_fit_expects_no_mapped_pages_and_asks_for_its_resident_need():
    request = replace(FULL_UNDER_A_CAP, budget_mb=900, parameter_sharding=True)
    plan = plan_memory(GEMMA3_270M, request)
    assert not plan.fits and plan.estimate.mapped == 0 and plan.estimate.total == plan.estimate.resident > 900
    assert f"at least {plan.estimate.resident:,.0f}" in does_not_fit_message(GEMMA3_270M, request, plan)


def test_a_budget_with_room_for_the_allocator_slack_gets_the_fast_allocator_and_its_estimate_counts_the_slack():
    lean = estimate_peak(SMOLLM2, "lora", "bfloat16", 8, 4, 256, False)
    fast = estimate_peak(SMOLLM2, "lora", "bfloat16", 8, 4, 256, False, allocator="fast")
    assert lean.allocator_slack == 0 and fast.allocator_slack > 50
    # Fast plans also attend by matrix products, which keep every layer's attention weights: float32 and a bfloat16 copy.
    attention_weights_mb = 30 * 4 * 9 * 256 * 256 * (4 + 2) / 2**20
    assert fast.activations == pytest.approx(lean.activations + attention_weights_mb)
    assert fast.total == pytest.approx(lean.total + fast.allocator_slack + attention_weights_mb)
    plan = plan_memory(SMOLLM2, replace(LORA, base_dtype="bfloat16", budget_mb=fast.total + 1))
    assert (plan.allocator, plan.micro_batch, plan.gradient_checkpointing, plan.fits) == ("fast", 4, False, True)
    assert plan.estimate == fast
    assert plan.to_json()["allocator"] == "fast" and plan.to_json()["estimate"]["allocator_slack"] == round(fast.allocator_slack, 1)
    assert plan.attention == plan.to_json()["attention"] == "matmul"
    assert "fast allocator" in plan.describe() and "allocator slack" in plan.describe()


def test_without_room_for_the_slack_the_plan_keeps_its_settings_with_the_lean_allocator():
    lean = estimate_peak(SMOLLM2, "lora", "bfloat16", 8, 4, 256, False)
    fast = estimate_peak(SMOLLM2, "lora", "bfloat16", 8, 4, 256, False, allocator="fast")
    plan = plan_memory(SMOLLM2, replace(LORA, base_dtype="bfloat16", budget_mb=(lean.total + fast.total) / 2))
    # The allocator never takes a larger micro-batch or no checkpointing away: lean whenever fast does not fit.
    assert (plan.allocator, plan.micro_batch, plan.gradient_checkpointing, plan.fits) == ("lean", 4, False, True)
    assert plan.estimate == lean and "lean allocator" in plan.describe() and plan.attention == "sdpa"
    refused = plan_memory(SMOLLM2, replace(LORA, base_dtype="bfloat16", budget_mb=100))
    assert refused.allocator == "lean" and not refused.fits


def test_checkpointed_fast_plans_keep_one_layers_attention_weights_and_float32_runs_no_copy():
    def extra(dtype: str, checkpointed: bool) -> float:
        lean = estimate_peak(SMOLLM2, "lora", dtype, 8, 2, 128, checkpointed)
        fast = estimate_peak(SMOLLM2, "lora", dtype, 8, 2, 128, checkpointed, allocator="fast")
        return fast.activations - lean.activations

    one_layer_float32 = 2 * 9 * 128 * 128 * 4 / 2**20
    assert extra("float32", True) == pytest.approx(one_layer_float32)
    assert extra("bfloat16", True) == pytest.approx(one_layer_float32 * 6 / 4)
    assert extra("float32", False) == pytest.approx(30 * one_layer_float32)
