"""Resolving a job's config once: defaults that depend on the model, the data and the machine."""

from __future__ import annotations

import json

import pytest

from jobs.resolved_config import ResolvedJobConfig, resolve_config, total_optimizer_steps, write_resolved_config
from mftd.jobconfig import JobConfig
from mftd.memory_plan import ModelShape, plan_memory, plan_request


@pytest.mark.parametrize(
    "epochs, max_steps, per_epoch, accumulation, expected",
    [(1.0, None, 10, 4, 3), (2.0, None, 10, 4, 5), (0.1, None, 10, 4, 1), (3.0, 7, 10, 4, 7), (1.0, None, 8, 1, 8)],
)
def test_total_steps_cover_the_epochs_or_follow_max_steps(epochs, max_steps, per_epoch, accumulation, expected):
    assert total_optimizer_steps(epochs, max_steps, per_epoch, accumulation) == expected


SHAPE = ModelShape(parameters=1_000_000, hidden_size=64, intermediate_size=256, num_layers=2, num_attention_heads=2, vocab_size=512)


def resolve(micro_batch_cap=None, **fields) -> ResolvedJobConfig:
    config = JobConfig(**fields)
    plan = plan_memory(SHAPE, plan_request(config, 100_000, 64, micro_batch_cap))
    return resolve_config(
        config, architecture="GPT2LMHeadModel", model_type="gpt2", dataset_format="messages", num_examples=9, default_num_threads=3, plan=plan
    )


def test_defaults_are_filled_in_for_the_model_and_data():
    resolved = resolve(batch_size=2, grad_accum_steps=2, epochs=2)
    assert resolved.lora_target_modules == ["c_attn", "attn.c_proj"]
    assert (resolved.batches_per_epoch, resolved.total_steps) == (5, 5)
    assert (resolved.num_threads, resolved.dataset_format, resolved.model_type) == (3, "messages", "gpt2")


def test_the_plan_sets_the_micro_batch_and_the_steps_stay():
    asked = resolve(batch_size=4, grad_accum_steps=1, epochs=2)
    capped = resolve(micro_batch_cap=2, batch_size=4, grad_accum_steps=1, epochs=2)
    assert (capped.batch_size, capped.grad_accum_steps, capped.effective_batch) == (2, 2, 4)
    assert (asked.batch_size, asked.grad_accum_steps, asked.effective_batch) == (4, 1, 4)
    assert capped.total_steps == asked.total_steps == 6  # 9 examples in batches of 4: 3 per epoch
    assert (capped.base_dtype, capped.parameter_sharding, capped.memory_budget_mb) == ("float32", False, 100_000)


def test_given_values_win_over_defaults():
    resolved = resolve(lora_target_modules="all-linear", num_threads=1, max_steps=4)
    assert (resolved.lora_target_modules, resolved.num_threads, resolved.total_steps) == ("all-linear", 1, 4)


def test_full_fine_tuning_has_no_lora_targets():
    assert resolve(method="full").lora_target_modules is None


def test_resolved_config_is_saved_as_json_that_reads_back(tmp_path):
    resolved = resolve(seed=5)
    path = tmp_path / "jobs" / "1" / "config.json"
    write_resolved_config(resolved, path)
    assert ResolvedJobConfig.model_validate(json.loads(path.read_text())) == resolved
    assert not list(path.parent.glob("*.tmp"))


@pytest.mark.parametrize("asked, resolved", [(True, True), (False, False), (None, False)])
def test_parameter_sharding_resolves_to_a_bool(asked, resolved):
    assert resolve(method="full", parameter_sharding=asked).parameter_sharding is resolved


def test_compile_is_off_unless_asked_and_is_recorded():
    assert resolve().compile is False
    assert resolve(compile=True).compile is True
    assert JobConfig.model_validate_json('{"compile": true}').compile is True
