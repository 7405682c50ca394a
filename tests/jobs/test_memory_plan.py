"""The memory planner: its parts add up, it keeps the effective batch, and its estimate is near a measured peak."""

from __future__ import annotations

import json

import pytest
from transformers import AutoConfig

from jobs.precision import bfloat16_matmul_supported
from jobs.stop import StopSignal
from jobs.worker import run_worker
from mftd.db import new_session
from mftd.memory_plan import ModelShape, estimate_peak
from mftd.protocol import EXIT_BAD_CONFIG, EXIT_STOPPED, EXIT_SUCCEEDED, RESOLVED_CONFIG_FILENAME
from mftd.tables import Job
from tests.jobs.helpers import StopAtMicroBatch, chat_records, create_job, job_events, job_row, train_metrics, write_jsonl

SMOLLM2 = ModelShape(parameters=134_515_008, hidden_size=576, intermediate_size=1536, num_layers=30, num_attention_heads=9, vocab_size=49152)


def test_parts_add_up_and_settings_shrink_the_estimate():
    full = estimate_peak(SMOLLM2, "full", "float32", 8, 4, 256, False)
    lora = estimate_peak(SMOLLM2, "lora", "float32", 8, 4, 256, False)
    lora_bf16 = estimate_peak(SMOLLM2, "lora", "bfloat16", 8, 4, 256, False)
    checkpointed = estimate_peak(SMOLLM2, "lora", "bfloat16", 8, 4, 256, True)
    assert full.total == pytest.approx(full.weights + full.gradients + full.optimizer + full.activations + full.logits + full.runtime)
    assert full.optimizer == pytest.approx(2 * full.weights) and full.weights == pytest.approx(SMOLLM2.parameters * 4 / 2**20)
    assert full.gradients == pytest.approx(full.weights)
    assert lora.gradients < 0.01 * full.gradients
    assert full.total > lora.total > lora_bf16.total > checkpointed.total
    assert "estimate" in checkpointed.describe() and "activations" in checkpointed.describe()


def test_shape_from_configs(tiny_model):
    for architecture in ("Qwen2ForCausalLM", "GPT2LMHeadModel", "Gemma3ForCausalLM"):
        folder = tiny_model(architecture)
        shape = ModelShape.from_config(AutoConfig.from_pretrained(folder))
        assert shape.hidden_size == 32 and shape.num_layers == 2 and shape.parameters > shape.vocab_size * 32
        # The daemon reads config.json without transformers and must see the same numbers.
        assert ModelShape.from_config_dict(json.loads((folder / "config.json").read_text())) == shape




def test_worker_shows_the_plan_before_training_and_the_measured_peak_after(tmp_path, settings, engine, tiny_model):
    job_id = create_job(engine, tiny_model(), write_jsonl(tmp_path / "chat.jsonl", chat_records(4)), max_steps=1, grad_accum_steps=1)
    assert run_worker(job_id, settings, StopSignal()) == EXIT_SUCCEEDED
    memory = [event for event in job_events(engine, job_id) if event.kind == "memory"]
    assert [event.message.split(" ")[0] for event in memory] == ["memory", "allocator:", "attention:", "peak"]
    dtype_shown = ", bfloat16 base" if bfloat16_matmul_supported() else ""  # a null base_dtype
    settings_shown = f"micro-batch 1 x 1{dtype_shown}, fast allocator"  # the default budget has room for the slack
    assert memory[0].message.startswith(f"memory plan: {settings_shown}: estimate ") and "activations" in memory[0].message
    assert memory[1].message.startswith("allocator: fast (mmap threshold 16 MB, ") or "not applied" in memory[1].message
    # The fast plan's attention: matrix products on this SDPA model (jobs/attention.py), kept as the plan counted.
    assert memory[2].message.startswith("attention: matrix products") and json.loads(memory[2].data_json) == {"attention": "matmul"}
    peak = json.loads(memory[3].data_json)
    assert peak["peak_rss_mb"] > 50 and peak["estimate_mb"] == pytest.approx(json.loads(memory[0].data_json)["estimate_mb"], abs=0.1)
    assert "error" in memory[3].message
    shown = json.loads(job_row(engine, job_id).memory_plan_json)
    assert shown["peak_mb"] == pytest.approx(peak["peak_rss_mb"], abs=0.1) and shown["budget_mb"] == settings.default_memory_budget_mb


def test_worker_follows_the_plan_and_the_cap(tmp_path, settings, engine, tiny_model):
    job_id = create_job(engine, tiny_model(), write_jsonl(tmp_path / "chat.jsonl", chat_records(8)), max_steps=2, batch_size=4, grad_accum_steps=1)
    set_cap(engine, job_id, 3)
    assert run_worker(job_id, settings, StopSignal()) == EXIT_SUCCEEDED
    resolved = json.loads((settings.job_dir(job_id) / RESOLVED_CONFIG_FILENAME).read_text())
    assert (resolved["batch_size"], resolved["grad_accum_steps"], resolved["effective_batch"]) == (2, 2, 4)
    assert json.loads(job_row(engine, job_id).memory_plan_json)["micro_batch"] == 2


def test_worker_refuses_a_job_that_cannot_fit_with_the_numbers(tmp_path, settings, engine, tiny_model):
    job_id = create_job(engine, tiny_model(), write_jsonl(tmp_path / "chat.jsonl", chat_records(4)), max_steps=1, memory_budget_mb=64)
    assert run_worker(job_id, settings, StopSignal()) == EXIT_BAD_CONFIG
    errors = [event.message for event in job_events(engine, job_id) if event.level == "error"]
    assert any("does not fit its memory budget" in message and "memory_budget_mb to at least" in message for message in errors), errors
    assert json.loads(job_row(engine, job_id).memory_plan_json)["fits"] is False


def test_a_run_replanned_with_a_smaller_micro_batch_resumes_from_its_checkpoint(tmp_path, settings, engine, tiny_model):
    """After a kill for memory the daemon caps the micro-batch: the checkpoint must still be used, at the same data position."""
    # A float32 base: the comparison below is tighter than bfloat16 products of other shapes round to.
    config = dict(max_steps=4, batch_size=4, grad_accum_steps=1, checkpoint_every_steps=1, learning_rate=1e-2, base_dtype="float32")
    dataset = write_jsonl(tmp_path / "chat.jsonl", chat_records(12))
    job_id = create_job(engine, tiny_model(), dataset, **config)
    assert run_worker(job_id, settings, StopAtMicroBatch(2)) == EXIT_STOPPED
    set_cap(engine, job_id, 2)
    assert run_worker(job_id, settings, StopSignal()) == EXIT_SUCCEEDED
    assert "resumed from step 2" in [event.message for event in job_events(engine, job_id)]
    straight = create_job(engine, tiny_model(), dataset, **config)
    assert run_worker(straight, settings, StopSignal()) == EXIT_SUCCEEDED
    # Same examples in every step (the losses agree), packed and summed in another order (so not bit for bit).
    assert [row[4] for row in train_metrics(engine, job_id)] == [row[4] for row in train_metrics(engine, straight)]
    assert [row[1] for row in train_metrics(engine, job_id)] == pytest.approx([row[1] for row in train_metrics(engine, straight)], rel=1e-4)


def set_cap(engine, job_id: int, cap: int) -> None:
    with new_session(engine) as session:
        job = session.get(Job, job_id)
        job.micro_batch_cap = cap
        session.add(job)
        session.commit()
