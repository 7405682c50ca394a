"""``run_worker`` end to end in this process: what it writes for people and the daemon, and its exit codes."""

from __future__ import annotations

import errno
import json

import pytest
from sqlmodel import select

from jobs.precision import bfloat16_matmul_supported
from jobs.stop import StopSignal
from jobs.worker import describe_failure, run_worker
from mftd.db import new_session
from mftd.protocol import ADAPTER_DIRNAME, EXIT_BAD_CONFIG, EXIT_FAILED, EXIT_SUCCEEDED, RESOLVED_CONFIG_FILENAME
from mftd.tables import Job, Metric
from tests.jobs.helpers import chat_records, create_job, job_events, job_row, prompt_completion_records, text_records, train_metrics, write_jsonl


def error_events(engine, job_id):
    return [event for event in job_events(engine, job_id) if event.kind == "error"]


def test_successful_run_reports_progress_metrics_and_artifacts(tmp_path, settings, engine, tiny_model):
    dataset = write_jsonl(tmp_path / "pc.jsonl", prompt_completion_records(10))
    # 10 examples, 2 x 2 per step, 2 epochs: 5 steps.
    job_id = create_job(engine, tiny_model(), dataset, batch_size=2, grad_accum_steps=2, epochs=2, log_every_steps=2)
    assert run_worker(job_id, settings, StopSignal()) == EXIT_SUCCEEDED

    messages = [event.message for event in job_events(engine, job_id)]
    assert messages[0].startswith("dataset: 10 examples, ") and messages[0].endswith(" tokens, 0 truncated")
    dtype_shown = ", bfloat16 base" if bfloat16_matmul_supported() else ""  # a null base_dtype
    assert messages[1].startswith(f"memory plan: micro-batch 2 x 2{dtype_shown}, fast allocator: estimate ")
    assert messages[2].startswith("allocator: fast")
    assert messages[3].startswith("packing: micro-batches of 2 examples are ") and "% real tokens (" in messages[3]
    assert messages[4].startswith("threads: ")
    assert messages[5] == "loading model"
    assert messages[6].startswith("attention: matrix products")  # the fast plan's attention, on this SDPA model
    assert messages[7].startswith("model loaded (") and " trainable)" in messages[7]
    assert messages[-1] == "artifacts saved"
    resolved = json.loads((settings.job_dir(job_id) / RESOLVED_CONFIG_FILENAME).read_text())
    assert resolved["total_steps"] == 5 and resolved["lora_target_modules"] == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert resolved["dataset_format"] == "prompt_completion" and resolved["num_threads"] >= 1
    job = job_row(engine, job_id)
    assert (job.step, job.total_steps, job.status) == (5, 5, "queued") and job.loss > 0 and job.heartbeat_at is not None
    with new_session(engine) as session:
        metrics = session.exec(select(Metric).where(Metric.job_id == job_id).order_by(Metric.step)).all()
    assert [metric.step for metric in metrics] == [2, 4, 5]  # every log_every_steps, and the last step
    assert all(m.loss > 0 and m.learning_rate > 0 and m.grad_norm > 0 and m.tokens > 0 and m.tokens_per_second > 0 and m.rss_mb > 10 for m in metrics)
    assert (settings.job_dir(job_id) / ADAPTER_DIRNAME / "adapter_model.safetensors").is_file()


def test_packing_trains_the_same_steps_on_the_same_examples(tmp_path, settings, engine, tiny_model):
    """Packed and padded runs take the same steps over the same tokens, and their losses agree to float tolerance."""
    # Mostly short texts and one long one, which sets the rows' capacity: packing has something to save.
    dataset = write_jsonl(tmp_path / "text.jsonl", text_records(11) + [{"text": " ".join(record["text"] for record in text_records(4, seed=1))}])
    runs = {}
    for packing in (True, False):
        job_id = create_job(
            engine, tiny_model(), dataset, batch_size=4, grad_accum_steps=1, max_seq_len=128, base_dtype="float32", log_every_steps=1, packing=packing
        )
        assert run_worker(job_id, settings, StopSignal()) == EXIT_SUCCEEDED
        resolved = json.loads((settings.job_dir(job_id) / RESOLVED_CONFIG_FILENAME).read_text())
        assert resolved["packing"] is packing and resolved["total_steps"] == resolved["batches_per_epoch"] == 3
        runs[packing] = (job_id, train_metrics(engine, job_id))
    (packed_job, packed), (_, padded) = runs[True], runs[False]
    assert [(step, tokens) for step, _, _, _, tokens in packed] == [(step, tokens) for step, _, _, _, tokens in padded]
    for (_, packed_loss, _, packed_norm, _), (_, padded_loss, _, padded_norm, _) in zip(packed, padded):
        assert packed_loss == pytest.approx(padded_loss, rel=1e-4) and packed_norm == pytest.approx(padded_norm, rel=1e-3)
    [event] = [event for event in job_events(engine, packed_job) if event.message.startswith("packing: ")]
    fill = json.loads(event.data_json)
    assert fill["padded_fill"] < fill["fill"] <= 1, "the text records differ in length, so packing saves padding"
    [dataset_event] = [event for event in job_events(engine, packed_job) if event.message.startswith("dataset: ")]
    assert sum(tokens for *_, tokens in packed) == json.loads(dataset_event.data_json)["tokens"], "one epoch: every token once"


def test_text_dataset_with_full_fine_tuning_and_gradient_checkpointing(tmp_path, settings, engine, tiny_model):
    dataset = write_jsonl(tmp_path / "text.jsonl", text_records(6))
    job_id = create_job(engine, tiny_model("GPT2LMHeadModel"), dataset, method="full", max_steps=2, gradient_checkpointing=True, max_seq_len=8)
    assert run_worker(job_id, settings, StopSignal()) == EXIT_SUCCEEDED
    assert (settings.job_dir(job_id) / "model" / "model.safetensors").is_file()
    warnings = [event.message for event in job_events(engine, job_id) if event.level == "warning"]
    assert len(warnings) == 1 and "longer than max_seq_len=8" in warnings[0]


def test_missing_model_folder_is_a_bad_config_with_an_error_event(tmp_path, settings, engine):
    job_id = create_job(engine, tmp_path / "gone", write_jsonl(tmp_path / "chat.jsonl", chat_records(2)))
    assert run_worker(job_id, settings, StopSignal()) == EXIT_BAD_CONFIG
    [event] = error_events(engine, job_id)
    assert event.level == "error" and "does not exist" in event.message and str(tmp_path / "gone") in event.message
    assert "\n" not in event.message
    assert "Traceback" in json.loads(event.data_json)["traceback"]


def test_invalid_config_lists_every_problem(tmp_path, settings, engine, tiny_model):
    job_id = create_job(engine, tiny_model(), write_jsonl(tmp_path / "chat.jsonl", chat_records(2)), batch_size=0, learning_rat=1)
    assert run_worker(job_id, settings, StopSignal()) == EXIT_BAD_CONFIG
    [event] = error_events(engine, job_id)
    assert "batch_size" in event.message and "learning_rat" in event.message


def test_dataset_with_nothing_to_train_is_a_bad_config(tmp_path, settings, engine, tiny_model):
    (tmp_path / "blank.jsonl").write_text("\n\n")
    job_id = create_job(engine, tiny_model(), tmp_path / "blank.jsonl")
    assert run_worker(job_id, settings, StopSignal()) == EXIT_BAD_CONFIG
    assert "no examples" in error_events(engine, job_id)[0].message


def test_lora_targets_the_model_lacks_are_a_bad_config(tmp_path, settings, engine, tiny_model):
    job_id = create_job(engine, tiny_model(), write_jsonl(tmp_path / "chat.jsonl", chat_records(2)), lora_target_modules=["c_attn"])
    assert run_worker(job_id, settings, StopSignal()) == EXIT_BAD_CONFIG
    assert "lora_target_modules" in error_events(engine, job_id)[0].message


def test_unknown_job_is_a_bad_config(settings, engine):
    assert run_worker(404, settings, StopSignal()) == EXIT_BAD_CONFIG


def test_unexpected_failure_exits_1_with_an_error_event(tmp_path, settings, engine, tiny_model):
    job_id = create_job(engine, tiny_model(), write_jsonl(tmp_path / "chat.jsonl", chat_records(2)))
    settings.job_dir(job_id).parent.mkdir(parents=True, exist_ok=True)
    settings.job_dir(job_id).write_text("a file where the job folder should be")
    assert run_worker(job_id, settings, StopSignal()) == EXIT_FAILED
    [event] = error_events(engine, job_id)
    assert event.message.startswith("training failed: FileExistsError: ")
    assert json.loads(event.data_json)["error_type"] == "FileExistsError"


def test_failure_messages_say_how_to_fix():
    assert "lower batch_size" in describe_failure(MemoryError())
    assert "lower batch_size" in describe_failure(RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"))
    assert "free some storage" in describe_failure(OSError(errno.ENOSPC, "No space left on device"))
    assert describe_failure(ValueError("bad\nsecond line")) == "training failed: ValueError: bad; the traceback is in this event and in worker.log"


def test_the_worker_never_writes_the_job_status(tmp_path, settings, engine, tiny_model):
    job_id = create_job(engine, tiny_model(), write_jsonl(tmp_path / "chat.jsonl", chat_records(4)), max_steps=1)
    with new_session(engine) as session:
        job = session.get(Job, job_id)
        job.status = "running"
        session.add(job)
        session.commit()
    assert run_worker(job_id, settings, StopSignal()) == EXIT_SUCCEEDED
    assert job_row(engine, job_id).status == "running"
    assert not [event for event in job_events(engine, job_id) if event.kind == "status"]
