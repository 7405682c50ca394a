"""Exact resume: a run stopped and resumed ends bit for bit where an uninterrupted run ends.

Each job runs through ``run_worker`` against a real SQLite database, with a scripted stop standing
in for SIGTERM at a chosen micro-batch.
"""

from __future__ import annotations

import json

import pytest
from jobs.checkpoint import TRAINABLE_WEIGHTS_FILENAME, checkpoint_folders
from jobs.stop import StopSignal
from jobs.worker import run_worker
from mftd.db import new_session
from mftd.protocol import CHECKPOINTS_DIRNAME, EXIT_STOPPED, EXIT_SUCCEEDED
from mftd.tables import Job
from tests.jobs.helpers import (
    StopAtMicroBatch,
    assert_same_tensors,
    chat_records,
    checkpoint_rows,
    create_job,
    final_weights,
    job_events,
    job_row,
    train_metrics,
    write_jsonl,
)

# 20 examples in micro-batches of 2 (10 per epoch), 3 per optimizer step, 8 steps: 24 micro-batches,
# so the run crosses two epoch boundaries, one of them inside an accumulation group.
CONFIG = dict(
    batch_size=2, grad_accum_steps=3, max_steps=8, checkpoint_every_steps=3, keep_checkpoints=2,
    learning_rate=1e-2, warmup_steps=2, lr_schedule="cosine", lora_dropout=0.1, weight_decay=0.01, seed=7,
)


def run_with_stops(settings, job_id: int, stops: list[int]) -> list[int]:
    """Run the worker once per scripted stop (after that many micro-batches), then once to the end."""
    codes = [run_worker(job_id, settings, StopAtMicroBatch(count)) for count in stops]
    return codes + [run_worker(job_id, settings, StopSignal())]


@pytest.mark.parametrize(
    "architecture, method",
    [
        ("Qwen2ForCausalLM", "lora"),
        ("Qwen2ForCausalLM", "full"),
        ("GPT2LMHeadModel", "lora"),  # GPT-2 keeps dropout on in its blocks: the RNG state must be restored
        ("Gemma3ForCausalLM", "lora"),
        ("LlamaForCausalLM", "full"),
    ],
)
def test_interrupted_run_equals_uninterrupted_run(tmp_path, settings, engine, tiny_model, architecture, method):
    dataset = write_jsonl(tmp_path / "chat.jsonl", chat_records(20))
    model_path = tiny_model(architecture)
    straight = create_job(engine, model_path, dataset, method=method, **CONFIG)
    interrupted = create_job(engine, model_path, dataset, method=method, **CONFIG)

    assert run_with_stops(settings, straight, []) == [EXIT_SUCCEEDED]
    # Stop 1: 11 micro-batches = steps 1-3 (checkpoint at 3) and 2 of step 4's 3, thrown away.
    # Stop 2: 4 micro-batches = step 4 and 1 of step 5; a checkpoint of step 4 is written on the stop.
    # Stop 3: 6 micro-batches = steps 5 and 6, stopping exactly after the periodic checkpoint at 6.
    assert run_with_stops(settings, interrupted, [11, 4, 6]) == [EXIT_STOPPED] * 3 + [EXIT_SUCCEEDED]

    assert_same_tensors(final_weights(settings, straight, method), final_weights(settings, interrupted, method))
    assert train_metrics(engine, interrupted) == train_metrics(engine, straight)
    assert [step for step, *_ in train_metrics(engine, straight)] == list(range(1, 9))
    resumed = [event.message for event in job_events(engine, interrupted) if event.message.startswith("resumed")]
    assert resumed == ["resumed from step 3", "resumed from step 4", "resumed from step 6"]
    assert job_row(engine, interrupted).step == 8


def test_stop_checkpoint_is_of_the_last_completed_step(tmp_path, settings, engine, tiny_model):
    job_id = create_job(engine, tiny_model(), write_jsonl(tmp_path / "chat.jsonl", chat_records(20)), **CONFIG)
    assert run_worker(job_id, settings, StopAtMicroBatch(14)) == EXIT_STOPPED  # steps 1-4, then 2 of step 5
    checkpoints_dir = settings.job_dir(job_id) / CHECKPOINTS_DIRNAME
    assert [folder.name for folder in checkpoint_folders(checkpoints_dir)] == ["step-00000004", "step-00000003"]
    assert [(row.step, row.path) for row in checkpoint_rows(engine, job_id)] == [
        (step, str(checkpoints_dir / f"step-{step:08d}")) for step in (3, 4)
    ]
    job = job_row(engine, job_id)
    assert (job.step, job.total_steps, job.status) == (4, 8, "queued")  # the worker never writes the status
    assert [step for step, *_ in train_metrics(engine, job_id)] == [1, 2, 3, 4]


def test_stop_before_the_first_step_writes_no_checkpoint(tmp_path, settings, engine, tiny_model):
    job_id = create_job(engine, tiny_model(), write_jsonl(tmp_path / "chat.jsonl", chat_records(20)), **CONFIG)
    assert run_worker(job_id, settings, StopAtMicroBatch(2)) == EXIT_STOPPED
    assert checkpoint_folders(settings.job_dir(job_id) / CHECKPOINTS_DIRNAME) == []
    assert job_row(engine, job_id).step == 0


def test_corrupt_newest_checkpoint_is_skipped_and_resume_is_still_exact(tmp_path, settings, engine, tiny_model):
    dataset = write_jsonl(tmp_path / "chat.jsonl", chat_records(20))
    straight = create_job(engine, tiny_model(), dataset, **CONFIG)
    interrupted = create_job(engine, tiny_model(), dataset, **CONFIG)
    assert run_worker(straight, settings, StopSignal()) == EXIT_SUCCEEDED
    assert run_worker(interrupted, settings, StopAtMicroBatch(14)) == EXIT_STOPPED  # checkpoints at 3 and 4
    newest = settings.job_dir(interrupted) / CHECKPOINTS_DIRNAME / "step-00000004" / TRAINABLE_WEIGHTS_FILENAME
    newest.write_bytes(newest.read_bytes()[:-8] + b"\0" * 8)

    assert run_worker(interrupted, settings, StopSignal()) == EXIT_SUCCEEDED

    warnings = [event for event in job_events(engine, interrupted) if event.level == "warning"]
    assert len(warnings) == 1 and "skipped checkpoint step-00000004" in warnings[0].message
    assert "checksum" in warnings[0].message
    # The corrupt one was deleted, so pruning did not keep it over the new step-6 checkpoint.
    checkpoints_dir = settings.job_dir(interrupted) / CHECKPOINTS_DIRNAME
    assert [folder.name for folder in checkpoint_folders(checkpoints_dir)] == ["step-00000006", "step-00000003"]
    assert [row.step for row in checkpoint_rows(engine, interrupted)] == [3, 6]
    assert any(event.message == "resumed from step 3" for event in job_events(engine, interrupted))
    assert_same_tensors(final_weights(settings, straight), final_weights(settings, interrupted))
    assert train_metrics(engine, interrupted) == train_metrics(engine, straight)


def test_checkpoint_of_another_config_is_not_resumed(tmp_path, settings, engine, tiny_model):
    dataset = write_jsonl(tmp_path / "chat.jsonl", chat_records(20))
    job_id = create_job(engine, tiny_model(), dataset, **CONFIG)
    assert run_worker(job_id, settings, StopAtMicroBatch(14)) == EXIT_STOPPED
    write_jsonl(dataset, chat_records(30))  # the dataset changed under the job
    assert run_worker(job_id, settings, StopAtMicroBatch(0)) == EXIT_STOPPED
    messages = [event.message for event in job_events(engine, job_id)]
    assert any("skipped checkpoint step-00000004: it was trained with a different config" in m and "num_examples" in m for m in messages)
    assert not any(message.startswith("resumed") for message in messages)


def test_bookkeeping_changes_do_not_discard_the_checkpoint(tmp_path, settings, engine, tiny_model):
    job_id = create_job(engine, tiny_model(), write_jsonl(tmp_path / "chat.jsonl", chat_records(20)), **CONFIG)
    assert run_worker(job_id, settings, StopAtMicroBatch(14)) == EXIT_STOPPED
    with new_session(engine) as session:
        job = session.get(Job, job_id)
        job.config_json = json.dumps({**CONFIG, "keep_checkpoints": 5, "log_every_steps": 2, "num_threads": 2})
        session.add(job)
        session.commit()
    assert run_worker(job_id, settings, StopSignal()) == EXIT_SUCCEEDED
    assert "resumed from step 4" in [event.message for event in job_events(engine, job_id)]
