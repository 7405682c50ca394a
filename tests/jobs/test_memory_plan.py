"""The memory planner: its parts add up, it keeps the effective batch, and its estimate is near a measured peak."""

from __future__ import annotations

import json

import pytest
from transformers import AutoConfig

from mftd.memory_plan import ModelShape, estimate_peak, plan_memory

SMOLLM2 = ModelShape(parameters=134_515_008, hidden_size=576, intermediate_size=1536, num_layers=30, num_attention_heads=9, vocab_size=49152)


def test_parts_add_up_and_settings_shrink_the_estimate():
    full = estimate_peak(SMOLLM2, "full", "float32", 8, 4, 256, False)
    lora = estimate_peak(SMOLLM2, "lora", "float32", 8, 4, 256, False)
    lora_bf16 = estimate_peak(SMOLLM2, "lora", "bfloat16", 8, 4, 256, False)
    checkpointed = estimate_peak(SMOLLM2, "lora", "bfloat16", 8, 4, 256, True)
    assert full.total == pytest.approx(full.weights + full.gradients + full.optimizer + full.activations + full.logits + full.runtime)
    assert full.optimizer == pytest.approx(2 * full.gradients) and full.weights == pytest.approx(SMOLLM2.parameters * 4 / 2**20)
    assert lora.gradients < 0.01 * full.gradients
    assert full.total > lora.total > lora_bf16.total > checkpointed.total
    assert "estimate" in checkpointed.describe() and "activations" in checkpointed.describe()


def test_plan_keeps_the_effective_batch_and_prefers_speed():
    roomy = plan_memory(SMOLLM2, "lora", "float32", 8, 4, 1, 256, False, budget_mb=100_000)
    assert (roomy.micro_batch, roomy.grad_accum_steps, roomy.gradient_checkpointing, roomy.fits) == (4, 1, False, True)
    tight_budget = estimate_peak(SMOLLM2, "lora", "float32", 8, 2, 256, False).total + 1
    tight = plan_memory(SMOLLM2, "lora", "float32", 8, 4, 1, 256, False, budget_mb=tight_budget)
    assert (tight.micro_batch, tight.grad_accum_steps, tight.gradient_checkpointing, tight.fits) == (2, 2, False, True)
    tighter_budget = estimate_peak(SMOLLM2, "lora", "float32", 8, 4, 256, True).total + 1
    tighter = plan_memory(SMOLLM2, "lora", "float32", 8, 4, 1, 256, False, budget_mb=tighter_budget)
    assert tighter.fits and tighter.micro_batch * tighter.grad_accum_steps == 4 and tighter.gradient_checkpointing


def test_nothing_fits_returns_the_smallest_plan():
    plan = plan_memory(SMOLLM2, "full", "float32", 8, 4, 2, 256, False, budget_mb=100)
    assert not plan.fits
    assert (plan.micro_batch, plan.grad_accum_steps, plan.gradient_checkpointing) == (1, 8, True)


def test_shape_from_configs(tiny_model):
    for architecture in ("Qwen2ForCausalLM", "GPT2LMHeadModel", "Gemma3ForCausalLM"):
        shape = ModelShape.from_config(AutoConfig.from_pretrained(tiny_model(architecture)))
        assert shape.hidden_size == 32 and shape.num_layers == 2 and shape.parameters > shape.vocab_size * 32




def test_worker_logs_the_estimate_before_training_and_the_measured_peak_after(tmp_path, settings, engine, tiny_model):
    from jobs.stop import StopSignal
    from jobs.worker import run_worker
    from mftd.protocol import EXIT_SUCCEEDED
    from tests.jobs.helpers import chat_records, create_job, job_events, write_jsonl

    job_id = create_job(engine, tiny_model(), write_jsonl(tmp_path / "chat.jsonl", chat_records(4)), max_steps=1, grad_accum_steps=1)
    assert run_worker(job_id, settings, StopSignal()) == EXIT_SUCCEEDED
    memory = [event for event in job_events(engine, job_id) if event.kind == "memory"]
    assert [event.message.split(" ")[0] for event in memory] == ["memory", "peak"]
    assert memory[0].message.startswith("memory plan: estimate ") and "activations" in memory[0].message
    peak = json.loads(memory[1].data_json)
    assert peak["peak_rss_mb"] > 50 and peak["estimate_mb"] == json.loads(memory[0].data_json)["estimate_mb"]
    assert "error" in memory[1].message
