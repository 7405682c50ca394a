"""Parameter sharding trains bit for bit like the ordinary AdamW path, and its checkpoints resume exactly."""

from __future__ import annotations

import pytest
import torch

from jobs.batches import micro_batches
from jobs.checkpoint import checkpoint_folders, verify_checkpoint
from jobs.data import tokenize_dataset
from jobs.model_setup import enable_gradient_checkpointing, load_model, load_tokenizer
from jobs.optimization import build_lr_scheduler, build_optimizer
from jobs.shard_files import MappedFile, plan_slots
from jobs.job_run import SHARDS_DIRNAME
from jobs.sharding import WEIGHTS_FILENAME, ShardedAdamW
from jobs.stop import StopSignal
from jobs.training import train
from jobs.training_state import TrainingProgress, seed_everything
from jobs.worker import run_worker
from mftd.protocol import CHECKPOINTS_DIRNAME, EXIT_FAILED, EXIT_STOPPED, EXIT_SUCCEEDED
from tests.jobs.helpers import (
    StopAtMicroBatch,
    assert_same_tensors,
    chat_records,
    create_job,
    final_weights,
    job_events,
    train_metrics,
    write_jsonl,
)

STEPS = 5
GRAD_ACCUM_STEPS = 3


def run_training(model_path, dataset_path, shard_dir, max_grad_norm):
    """Full fine-tuning for ``STEPS`` steps; returns the final weights by name and the step losses and norms."""
    tokenizer = load_tokenizer(model_path)
    examples = tokenize_dataset(dataset_path, tokenizer, "auto", 64).examples
    model = load_model(model_path)
    enable_gradient_checkpointing(model)
    seed_everything(0)
    model.requires_grad_(True)
    optimizer = build_optimizer(model.named_parameters(), 1e-2, 0.1, (0.9, 0.999), 1e-8)
    scheduler = build_lr_scheduler(optimizer, "cosine", 2, STEPS)
    stepper = None if shard_dir is None else ShardedAdamW(model, optimizer, shard_dir, max_grad_norm)
    reports = []
    batches = micro_batches(examples, 2, 0, tokenizer.pad_token_id)
    train(
        model, optimizer, scheduler, batches, TrainingProgress(), STEPS, GRAD_ACCUM_STEPS, max_grad_norm,
        StopSignal().is_requested, lambda report, *_: reports.append((report.loss, report.grad_norm, report.learning_rate)), stepper,
    )
    weights = {name: parameter.detach().clone() for name, parameter in model.named_parameters()}
    return weights, reports


@pytest.mark.parametrize("architecture", ["GPT2LMHeadModel", "Qwen2ForCausalLM", "Gemma3ForCausalLM"])
@pytest.mark.parametrize("max_grad_norm", [0.5, None], ids=["clipped", "fused"])
def test_sharded_training_is_bitwise_the_ordinary_training(tmp_path, tiny_model, architecture, max_grad_norm):
    dataset = write_jsonl(tmp_path / "chat.jsonl", chat_records(24))
    ordinary_weights, ordinary_reports = run_training(tiny_model(architecture), dataset, None, max_grad_norm)
    sharded_weights, sharded_reports = run_training(tiny_model(architecture), dataset, tmp_path / "shards", max_grad_norm)

    assert sharded_reports == ordinary_reports
    assert ordinary_weights.keys() == sharded_weights.keys()
    different = [name for name in ordinary_weights if not torch.equal(ordinary_weights[name], sharded_weights[name])]
    assert not different, f"{len(different)} of {len(ordinary_weights)} tensors differ, e.g. {different[:3]}"
    if max_grad_norm is not None:
        assert any(norm > max_grad_norm for _loss, norm, _lr in ordinary_reports)  # clipping did happen


@pytest.mark.parametrize("threads", [1, 2])
def test_adamw_step_in_pieces_of_rows_is_bitwise_the_whole_step(tmp_path, threads, monkeypatch):
    torch.set_num_threads(threads)
    monkeypatch.setattr("jobs.sharding.STEP_CHUNK_ELEMENTS", 7 * 896)  # pieces that do not divide the rows evenly
    generator = torch.Generator().manual_seed(0)
    initial = torch.randn(200, 896, generator=generator)
    gradients = [torch.randn(200, 896, generator=generator) for _ in range(3)]

    ordinary = torch.nn.Linear(896, 200, bias=False)
    with torch.no_grad():
        ordinary.weight.copy_(initial)
    optimizer = torch.optim.AdamW(ordinary.parameters(), lr=1e-3, weight_decay=0.1)
    for gradient in gradients:
        ordinary.weight.grad = gradient.clone()
        optimizer.step()

    sharded = torch.nn.Linear(896, 200, bias=False)
    with torch.no_grad():
        sharded.weight.copy_(initial)
    optimizer = torch.optim.AdamW(sharded.parameters(), lr=1e-3, weight_decay=0.1)
    stepper = ShardedAdamW(sharded, optimizer, tmp_path / "shards", None)
    for gradient in gradients:
        stepper.backward((sharded.weight * gradient).sum(), is_last_micro_batch=True)
        stepper.finish_step()
    assert torch.equal(ordinary.weight, sharded.weight)


def test_mapped_file_keeps_released_pages_and_discards_on_request(tmp_path):
    slots, length = plan_slots([(3, 5), (100_000,)])
    mapped = MappedFile(tmp_path / "file.f32", length, create=True)
    mapped.view(slots[0]).fill_(2.0)
    mapped.view(slots[1]).fill_(3.0)
    mapped.release(slots[0])
    mapped.discard(slots[1])
    assert torch.equal(mapped.view(slots[0]), torch.full((3, 5), 2.0))
    assert torch.equal(mapped.view(slots[1]), torch.zeros(100_000))
    assert MappedFile(tmp_path / "file.f32", length, create=False).view(slots[0]).sum().item() == 30.0


def test_mapped_file_releases_rows_keeping_them_and_zeroes_a_slot(tmp_path):
    slots, length = plan_slots([(1000, 33), (7,)])  # rows that do not fill whole pages
    mapped = MappedFile(tmp_path / "file.f32", length, create=True)
    mapped.view(slots[0]).copy_(torch.arange(33_000, dtype=torch.float32).view(1000, 33))
    mapped.view(slots[1]).fill_(5.0)
    mapped.release(slots[0], slice(10, 517))
    mapped.drop(slots[0], slice(517, None))
    assert torch.equal(mapped.view(slots[0]), torch.arange(33_000, dtype=torch.float32).view(1000, 33))
    mapped.zero(slots[0])
    assert torch.equal(mapped.view(slots[0]), torch.zeros(1000, 33))
    assert torch.equal(mapped.view(slots[1]), torch.full((7,), 5.0))


# Through the worker: 20 examples in micro-batches of 2, 3 per step, 8 steps, a checkpoint every 3 steps.
JOB_CONFIG = dict(
    method="full", parameter_sharding=True, batch_size=2, grad_accum_steps=3, max_steps=8, checkpoint_every_steps=3,
    keep_checkpoints=2, learning_rate=1e-3, warmup_steps=2, lr_schedule="cosine", weight_decay=0.01, seed=7,
)


class KillAtMicroBatch(StopSignal):
    """Dies (an exception no part of the worker expects) before micro-batch ``count`` of this run, as a SIGKILL would."""

    def __init__(self, count: int):
        super().__init__()
        self._remaining = count

    def is_requested(self) -> bool:
        if self._remaining == 0:
            raise SystemError("killed")
        self._remaining -= 1
        return False


@pytest.mark.parametrize("max_grad_norm", [1.0, None], ids=["clipped", "fused"])
def test_sharded_run_stopped_and_resumed_equals_an_uninterrupted_sharded_run(tmp_path, settings, engine, tiny_model, max_grad_norm):
    dataset = write_jsonl(tmp_path / "chat.jsonl", chat_records(20))
    config = dict(JOB_CONFIG, max_grad_norm=max_grad_norm)
    straight = create_job(engine, tiny_model("GPT2LMHeadModel"), dataset, **config)
    interrupted = create_job(engine, tiny_model("GPT2LMHeadModel"), dataset, **config)

    assert run_worker(straight, settings, StopSignal()) == EXIT_SUCCEEDED
    # 11 micro-batches: steps 1-3 (checkpoint at 3), 2 of step 4 thrown away; then 4: step 4 (checkpointed on the stop).
    assert [run_worker(interrupted, settings, StopAtMicroBatch(count)) for count in (11, 4)] == [EXIT_STOPPED] * 2
    assert run_worker(interrupted, settings, StopSignal()) == EXIT_SUCCEEDED

    assert_same_tensors(final_weights(settings, straight, "full"), final_weights(settings, interrupted, "full"))
    assert train_metrics(engine, interrupted) == train_metrics(engine, straight)
    resumed = [event.message for event in job_events(engine, interrupted) if event.message.startswith("resumed")]
    assert resumed == ["resumed from step 3", "resumed from step 4"]
    assert not (settings.job_dir(straight) / SHARDS_DIRNAME).exists()  # the live shard files are gone at the end


def test_sharded_checkpoint_survives_a_kill_that_leaves_the_live_shards_half_updated(tmp_path, settings, engine, tiny_model):
    dataset = write_jsonl(tmp_path / "chat.jsonl", chat_records(20))
    straight = create_job(engine, tiny_model("Qwen2ForCausalLM"), dataset, **JOB_CONFIG)
    killed = create_job(engine, tiny_model("Qwen2ForCausalLM"), dataset, **JOB_CONFIG)
    assert run_worker(straight, settings, StopSignal()) == EXIT_SUCCEEDED

    # Steps 1-5 done (checkpoint at 3), killed inside step 6: the live files are two steps past the checkpoint.
    assert run_worker(killed, settings, KillAtMicroBatch(16)) == EXIT_FAILED
    live = settings.job_dir(killed) / SHARDS_DIRNAME / WEIGHTS_FILENAME
    with live.open("r+b") as file:  # and a write the kill cut short
        file.write(b"\xff" * 4096)
    checkpoints = checkpoint_folders(settings.job_dir(killed) / CHECKPOINTS_DIRNAME)
    assert [folder.name for folder in checkpoints] == ["step-00000003"]
    verify_checkpoint(checkpoints[0])

    assert run_worker(killed, settings, StopSignal()) == EXIT_SUCCEEDED
    assert any(event.message == "resumed from step 3" for event in job_events(engine, killed))
    assert_same_tensors(final_weights(settings, straight, "full"), final_weights(settings, killed, "full"))
    assert train_metrics(engine, killed) == train_metrics(engine, straight)
