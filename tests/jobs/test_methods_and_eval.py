"""DoRA, a bfloat16 base for LoRA, and validation loss/perplexity that leaves training untouched."""

from __future__ import annotations

import json
import math
import shutil

import torch
from peft import PeftModel
from sqlmodel import select
from transformers import AutoModelForCausalLM

from jobs.stop import StopSignal
from jobs.worker import run_worker
from mftd.db import new_session
from mftd.protocol import ADAPTER_DIRNAME, EXIT_STOPPED, EXIT_SUCCEEDED, RESOLVED_CONFIG_FILENAME
from mftd.tables import Dataset, Metric
from tests.jobs.helpers import (
    StopAtMicroBatch,
    assert_same_tensors,
    chat_records,
    create_job,
    final_weights,
    train_metrics,
    write_jsonl,
)

CONFIG = dict(batch_size=2, grad_accum_steps=2, max_steps=4, learning_rate=1e-2, lora_dropout=0.1, seed=3, checkpoint_every_steps=2)


def _add_dataset(engine, name: str, path) -> None:
    with new_session(engine) as session:
        session.add(Dataset(name=name, path=str(path), format="messages", num_examples=0, size_bytes=0))
        session.commit()


def _eval_metrics(engine, job_id: int) -> list[tuple]:
    with new_session(engine) as session:
        rows = session.exec(select(Metric).where(Metric.job_id == job_id, Metric.split == "eval").order_by(Metric.step)).all()
    return [(row.step, row.loss, row.perplexity, row.tokens) for row in rows]


def test_dora_trains_an_adapter_peft_loads_as_dora(tmp_path, settings, engine, tiny_model):
    model_path = tiny_model("Qwen2ForCausalLM")
    dataset = write_jsonl(tmp_path / "chat.jsonl", chat_records(8))
    job_id = create_job(engine, model_path, dataset, method="dora", **CONFIG)
    assert run_worker(job_id, settings, StopSignal()) == EXIT_SUCCEEDED

    adapter_dir = settings.job_dir(job_id) / ADAPTER_DIRNAME
    assert json.loads((adapter_dir / "adapter_config.json").read_text())["use_dora"] is True
    weights = final_weights(settings, job_id, "dora")
    assert any("lora_magnitude_vector" in name for name in weights), sorted(weights)[:5]
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_path), adapter_dir)
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert not torch.equal(AutoModelForCausalLM.from_pretrained(model_path)(ids).logits, tuned(ids).logits)


def test_lora_on_a_bfloat16_base_keeps_the_adapter_in_float32(tmp_path, settings, engine, tiny_model):
    # A copy: the worker writes the base's bfloat16 copy into the model folder, and the shared tiny model stays as built.
    model_path = shutil.copytree(tiny_model("LlamaForCausalLM"), tmp_path / "model")
    dataset = write_jsonl(tmp_path / "chat.jsonl", chat_records(8))
    job_id = create_job(engine, model_path, dataset, method="lora", base_dtype="bfloat16", **CONFIG)
    assert run_worker(job_id, settings, StopSignal()) == EXIT_SUCCEEDED
    assert (model_path / "model.bfloat16.safetensors").is_file()  # the base was mapped from the converted copy

    weights = final_weights(settings, job_id)
    assert weights and all(tensor.dtype == torch.float32 for tensor in weights.values())
    assert all(math.isfinite(loss) for _step, loss, *_ in train_metrics(engine, job_id))
    resolved = json.loads((settings.job_dir(job_id) / RESOLVED_CONFIG_FILENAME).read_text())
    assert resolved["base_dtype"] == "bfloat16"


def test_validation_metrics_leave_training_bit_exact_and_survive_a_resume(tmp_path, settings, engine, tiny_model):
    model_path = tiny_model("GPT2LMHeadModel")  # dropout in its blocks: evaluation must not move the RNG
    dataset = write_jsonl(tmp_path / "chat.jsonl", chat_records(12))
    _add_dataset(engine, "held-out", write_jsonl(tmp_path / "val.jsonl", chat_records(5, seed=99)))
    plain = create_job(engine, model_path, dataset, **CONFIG)
    evaluated = create_job(engine, model_path, dataset, validation_dataset="held-out", eval_every_steps=1, **CONFIG)
    resumed = create_job(engine, model_path, dataset, validation_dataset="held-out", eval_every_steps=1, **CONFIG)

    assert run_worker(plain, settings, StopSignal()) == EXIT_SUCCEEDED
    assert run_worker(evaluated, settings, StopSignal()) == EXIT_SUCCEEDED
    assert run_worker(resumed, settings, StopAtMicroBatch(5)) == EXIT_STOPPED
    assert run_worker(resumed, settings, StopSignal()) == EXIT_SUCCEEDED

    assert_same_tensors(final_weights(settings, plain), final_weights(settings, evaluated))
    assert_same_tensors(final_weights(settings, plain), final_weights(settings, resumed))
    assert train_metrics(engine, plain) == train_metrics(engine, evaluated) == train_metrics(engine, resumed)

    evals = _eval_metrics(engine, evaluated)
    assert [step for step, *_ in evals] == [1, 2, 3, 4]
    assert all(perplexity == math.exp(loss) and tokens > 0 for _step, loss, perplexity, tokens in evals)
    assert evals[-1][1] < evals[0][1], "validation loss did not fall on data of the same kind"
    assert _eval_metrics(engine, resumed) == evals


def test_without_eval_interval_the_validation_runs_once_at_the_end(tmp_path, settings, engine, tiny_model):
    model_path = tiny_model("Qwen2ForCausalLM")
    dataset = write_jsonl(tmp_path / "chat.jsonl", chat_records(8))
    _add_dataset(engine, "held-out", write_jsonl(tmp_path / "val.jsonl", chat_records(3, seed=5)))
    job_id = create_job(engine, model_path, dataset, validation_dataset="held-out", **CONFIG)
    assert run_worker(job_id, settings, StopSignal()) == EXIT_SUCCEEDED
    assert [step for step, *_ in _eval_metrics(engine, job_id)] == [4]
