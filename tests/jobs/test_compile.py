"""The ``compile`` job setting on tiny real models: compiled layers train like eager ones, and any failure falls back to eager.

Compiling two tiny decoder layers took 13 s from a warm cache and 40 s cold on the 2-core box at
load 3, and a test that compiles 70 to 100 s at load 10, so the tests that compile are marked slow. They share one cache
folder (set through ``TORCHINDUCTOR_CACHE_DIR``, which the worker leaves as it finds it).
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
from pathlib import Path

import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters
from torch._inductor import config as inductor_config

from jobs.batches import MicroBatch, packed_rows
from jobs.checkpoint import checkpoint_folders, read_checkpoint
from jobs.compile import CACHE_DIR_ENV, compile_decoder_layers, use_inductor_cache_dir
from jobs.data import TokenizedExample
from jobs.model_setup import add_lora_adapter, load_model
from jobs.stop import StopSignal
from jobs.training import summed_token_loss
from jobs.worker import run_worker
from mftd.protocol import CHECKPOINTS_DIRNAME, EXIT_SUCCEEDED, RESOLVED_CONFIG_FILENAME
from tests.jobs.helpers import assert_same_tensors, create_job, final_weights, job_events, text_records, train_metrics, write_jsonl

# Examples of 4 to 9 words, packed into rows of up to 24 tokens: rows of several lengths, and a last micro-batch with fewer rows.
PACKED_LORA = dict(batch_size=3, grad_accum_steps=1, max_seq_len=24, epochs=1, learning_rate=1e-2, gradient_checkpointing=True,
                   base_dtype="bfloat16", checkpoint_every_steps=1, keep_checkpoints=1)


# Like inductor's own default cache (torchinductor_<user> in the temp folder), it outlives the test session.
CACHE_DIR = Path(tempfile.gettempdir()) / "mftd-tests-inductor-cache"


@pytest.fixture(autouse=True)
def fresh_compiler_state(monkeypatch):
    """Each test compiles anew (from the on-disk cache) and finds the compiler settings as a new worker process would."""
    monkeypatch.setenv(CACHE_DIR_ENV, str(CACHE_DIR))
    compiler_setting = inductor_config.cpp.cxx  # the worker sets the compiler it found
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()
    inductor_config.cpp.cxx = compiler_setting


def compile_events(engine, job_id):
    return [event for event in job_events(engine, job_id) if event.kind == "compile"]


def losses(engine, job_id):
    return [loss for _step, loss, *_ in train_metrics(engine, job_id)]


@pytest.mark.slow
def test_compiled_lora_on_packed_rows_trains_like_eager_with_two_graphs_at_most_and_the_same_keys(tmp_path, settings, engine, tiny_model):
    dataset = write_jsonl(tmp_path / "text.jsonl", text_records(20))
    eager = create_job(engine, tiny_model(), dataset, **PACKED_LORA)
    compiled = create_job(engine, tiny_model(), dataset, **PACKED_LORA, compile=True)
    assert run_worker(eager, settings, StopSignal()) == EXIT_SUCCEEDED
    assert not compile_events(engine, eager)
    assert run_worker(compiled, settings, StopSignal()) == EXIT_SUCCEEDED

    [event] = compile_events(engine, compiled)
    assert event.level == "info" and event.message.startswith("compiled 2 decoder layers (Qwen2DecoderLayer, ")
    assert json.loads((settings.job_dir(compiled) / RESOLVED_CONFIG_FILENAME).read_text())["compile"] is True
    # Every row length, one row or several, and the short last micro-batch ran through the graphs the trial
    # compiled (dynamic ones, with the forward and the recomputation of gradient checkpointing): none was
    # compiled during training.
    assert 2 <= counters["stats"]["unique_graphs"] == json.loads(event.data_json)["graphs"] <= 4
    eager_losses, compiled_losses = losses(engine, eager), losses(engine, compiled)
    assert len(compiled_losses) == len(eager_losses) >= 3
    assert compiled_losses == pytest.approx(eager_losses, rel=1e-2)
    assert compiled_losses != eager_losses, "the compiled kernels round differently: equal losses would mean nothing was compiled"
    eager_weights, compiled_weights = final_weights(settings, eager), final_weights(settings, compiled)
    assert compiled_weights.keys() == eager_weights.keys() and not any("_orig_mod" in key for key in compiled_weights)
    [eager_checkpoint] = checkpoint_folders(settings.job_dir(eager) / CHECKPOINTS_DIRNAME)
    [compiled_checkpoint] = checkpoint_folders(settings.job_dir(compiled) / CHECKPOINTS_DIRNAME)
    assert read_checkpoint(compiled_checkpoint).trainable_weights.keys() == read_checkpoint(eager_checkpoint).trainable_weights.keys()


@pytest.mark.slow
def test_compiled_full_fine_tuning_under_bfloat16_autocast_trains_like_eager(tmp_path, settings, engine, tiny_model):
    dataset = write_jsonl(tmp_path / "text.jsonl", text_records(12))
    config = dict(method="full", compute_dtype="bfloat16", packing=False, batch_size=2, grad_accum_steps=2, max_steps=3, learning_rate=1e-3)
    eager = create_job(engine, tiny_model("LlamaForCausalLM"), dataset, **config)
    compiled = create_job(engine, tiny_model("LlamaForCausalLM"), dataset, **config, compile=True)
    assert run_worker(eager, settings, StopSignal()) == EXIT_SUCCEEDED
    assert run_worker(compiled, settings, StopSignal()) == EXIT_SUCCEEDED

    [event] = compile_events(engine, compiled)
    assert event.message.startswith("compiled 2 decoder layers (LlamaDecoderLayer, ")
    assert losses(engine, compiled) == pytest.approx(losses(engine, eager), rel=1e-2)
    assert final_weights(settings, compiled, "full").keys() == final_weights(settings, eager, "full").keys()


@pytest.mark.slow
@pytest.mark.parametrize("first_rows", [2, 1])
def test_the_trial_compiles_one_row_and_several_so_training_compiles_nothing_more(first_rows, tiny_model):
    """A size of 1 is specialized even in dynamic shapes: without the trial's second pass, the first
    micro-batch with the other row count would compile every layer again in the middle of training."""
    examples = [TokenizedExample(list(range(10, 10 + length)), list(range(10, 10 + length))) for length in (5, 7, 6, 9, 4, 8, 11, 3)]

    def packed(rows):
        input_ids, attention_mask, labels, position_ids = packed_rows(examples, rows, pad_token_id=0)
        return MicroBatch(input_ids, attention_mask, labels, 0, 0, position_ids)

    two_rows, one_row, three_rows = packed([[0, 1], [2]]), packed([[3, 4, 5]]), packed([[6], [7], [0, 1]])
    stream = [two_rows, one_row, three_rows] if first_rows == 2 else [one_row, two_rows, three_rows]
    model = add_lora_adapter(load_model(tiny_model(), torch.float32), 4, 8.0, 0.0, ["q_proj", "v_proj"])
    events = []
    batches, compiled = compile_decoder_layers(model, iter(stream), None, CACHE_DIR, lambda message, **_: events.append(message), 3)
    assert compiled is not None, events
    graphs_after_trial = counters["stats"]["unique_graphs"]
    assert graphs_after_trial >= 2, "the layers compiled in the trial"
    seen = []
    for batch in batches:
        seen.append(batch)
        summed_token_loss(model, batch).backward()
    assert seen == stream, "the stream is trained on as it was, the first micro-batch included"
    assert counters["stats"]["unique_graphs"] == graphs_after_trial, "a micro-batch of one row, or of several, compiled anew"
    assert compiled.failure is None


def write_failing_compiler(folder):
    """A ``g++`` that is found but cannot compile, as a broken toolchain would be."""
    folder.mkdir()
    compiler = folder / "g++"
    compiler.write_text("#!/bin/sh\necho 'g++: broken toolchain' >&2\nexit 1\n")
    compiler.chmod(compiler.stat().st_mode | stat.S_IXUSR)
    return folder


@pytest.mark.parametrize("toolchain", [pytest.param("failing", marks=pytest.mark.slow), "none"])
def test_without_a_working_compiler_the_job_trains_eager_to_the_same_model(toolchain, tmp_path, settings, engine, tiny_model, monkeypatch):
    dataset = write_jsonl(tmp_path / "text.jsonl", text_records(12))
    eager = create_job(engine, tiny_model(), dataset, **PACKED_LORA)
    assert run_worker(eager, settings, StopSignal()) == EXIT_SUCCEEDED
    bin_dir = write_failing_compiler(tmp_path / "bin") if toolchain == "failing" else tmp_path
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.delenv("CXX", raising=False)
    compiled = create_job(engine, tiny_model(), dataset, **PACKED_LORA, compile=True)
    assert run_worker(compiled, settings, StopSignal()) == EXIT_SUCCEEDED

    [event] = compile_events(engine, compiled)
    assert event.level == "warning"
    if toolchain == "failing":
        assert event.message.startswith("compile failed, training goes on eager: ")
        assert "Traceback" in json.loads(event.data_json)["traceback"]
    else:
        assert event.message.startswith("compile: no C++ compiler found")
    # The trial left nothing behind: the same steps of the same model as the eager job, bit for bit.
    assert losses(engine, compiled) == losses(engine, eager)
    assert_same_tensors(final_weights(settings, eager), final_weights(settings, compiled))


def test_the_cache_folder_is_the_environments_else_the_default(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "mine"))
    assert use_inductor_cache_dir(tmp_path / "default") == tmp_path / "mine"
    monkeypatch.delenv(CACHE_DIR_ENV)
    assert use_inductor_cache_dir(tmp_path / "default") == tmp_path / "default"
    assert os.environ[CACHE_DIR_ENV] == str(tmp_path / "default")
