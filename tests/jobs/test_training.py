"""The training loop on a tiny real model: it learns, accumulates like a big batch, and stops cleanly."""

from __future__ import annotations

from itertools import islice

import pytest
import torch

from jobs.batches import MicroBatch, micro_batches, pad_examples
from jobs.data import TokenizedExample, tokenize_dataset
from jobs.model_setup import add_lora_adapter, enable_gradient_checkpointing, load_model, load_tokenizer
from jobs.optimization import build_lr_scheduler, build_optimizer
from jobs.training import LoopEnd, train
from jobs.training_state import TrainingProgress, seed_everything
from tests.jobs.helpers import StopAtMicroBatch, chat_records, write_jsonl


def setup_run(model_path, method="lora", learning_rate=1e-2, total_steps=10, gradient_checkpointing=False):
    model = load_model(model_path)
    if gradient_checkpointing:
        enable_gradient_checkpointing(model)
    seed_everything(0)
    if method == "lora":
        model = add_lora_adapter(model, 8, 16.0, 0.0, ["q_proj", "k_proj", "v_proj", "o_proj"])
    optimizer = build_optimizer(model.named_parameters(), learning_rate, 0.0, (0.9, 0.999), 1e-8)
    scheduler = build_lr_scheduler(optimizer, "constant", 0, total_steps)
    return model, optimizer, scheduler


def run(model, optimizer, scheduler, batches, total_steps, grad_accum_steps, stop=None, max_grad_norm=1.0):
    reports = []
    outcome = train(
        model, optimizer, scheduler, batches, TrainingProgress(), total_steps, grad_accum_steps, max_grad_norm,
        (stop or StopAtMicroBatch(-1)).is_requested, lambda report, progress, rng: reports.append((report, progress, rng)),
    )
    return outcome, reports


@pytest.fixture
def chat_examples(tmp_path, tiny_model):
    tokenizer = load_tokenizer(tiny_model())
    path = write_jsonl(tmp_path / "chat.jsonl", chat_records(16))
    return tokenize_dataset(path, tokenizer, "auto", 64).examples, tokenizer.pad_token_id


def test_loss_goes_down(tiny_model, chat_examples):
    examples, pad_id = chat_examples
    model, optimizer, scheduler = setup_run(tiny_model(), total_steps=40)
    outcome, reports = run(model, optimizer, scheduler, micro_batches(examples, 4, 0, pad_id), 40, 1)
    losses = [report.loss for report, _, _ in reports]
    assert outcome.end == LoopEnd.COMPLETED and outcome.progress.step == 40 and len(losses) == 40
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5
    assert outcome.progress.tokens_seen == sum(report.tokens for report, _, _ in reports)


def test_accumulated_micro_batches_give_the_gradient_of_one_big_batch(tiny_model):
    # Two examples with very different numbers of loss tokens: normalising by grad_accum_steps
    # instead of by loss tokens would give another gradient.
    short = TokenizedExample([10, 11, 12], [10, 11, 12])
    long = TokenizedExample(list(range(20, 40)), list(range(20, 40)))

    def batch(examples):
        input_ids, attention_mask, labels = pad_examples(examples, 0)
        return MicroBatch(input_ids, attention_mask, labels, 0, 0)

    results = []
    for batches, grad_accum_steps in (([batch([short]), batch([long])], 2), ([batch([short, long])], 1)):
        model, optimizer, scheduler = setup_run(tiny_model(), method="full", total_steps=1)
        _, [(report, _, _)] = run(model, optimizer, scheduler, iter(batches), 1, grad_accum_steps, max_grad_norm=None)
        results.append(report)
    accumulated, big_batch = results
    assert accumulated.loss == pytest.approx(big_batch.loss, rel=1e-5)
    assert accumulated.grad_norm == pytest.approx(big_batch.grad_norm, rel=1e-4)
    assert accumulated.tokens == big_batch.tokens == 23


def test_stop_mid_accumulation_throws_the_partial_step_away(tiny_model, chat_examples):
    examples, pad_id = chat_examples
    model, optimizer, scheduler = setup_run(tiny_model(), total_steps=10)
    # 5 micro-batches with 2 per step: steps 1 and 2 complete, then half of step 3.
    outcome, reports = run(model, optimizer, scheduler, micro_batches(examples, 2, 0, pad_id), 10, 2, stop=StopAtMicroBatch(5))
    assert outcome.end == LoopEnd.STOPPED
    assert outcome.progress == reports[-1][1]
    assert outcome.progress.step == 2 and (outcome.progress.epoch, outcome.progress.batch_in_epoch) == (0, 4)
    assert torch.equal(outcome.rng_state["torch"], reports[-1][2]["torch"])
    assert all(parameter.grad is None for parameter in model.parameters())
    assert scheduler.last_epoch == 2


def test_gradient_checkpointing_gives_the_same_losses(tiny_model, chat_examples):
    examples, pad_id = chat_examples
    losses = []
    for checkpointing in (False, True):
        model, optimizer, scheduler = setup_run(tiny_model(), total_steps=3, gradient_checkpointing=checkpointing)
        _, reports = run(model, optimizer, scheduler, micro_batches(examples, 2, 0, pad_id), 3, 2)
        losses.append([report.loss for report, _, _ in reports])
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


def test_clipping_reports_the_norm_before_clipping_and_shrinks_the_update(tiny_model, chat_examples):
    examples, pad_id = chat_examples
    first_batch = list(islice(micro_batches(examples, 2, 0, pad_id), 1))
    results = []
    for max_grad_norm in (None, 1e-6):
        model, optimizer, scheduler = setup_run(tiny_model(), method="full", total_steps=1)
        before = torch.cat([parameter.detach().flatten().clone() for parameter in model.parameters()])
        _, [(report, _, _)] = run(model, optimizer, scheduler, iter(first_batch), 1, 1, max_grad_norm=max_grad_norm)
        after = torch.cat([parameter.detach().flatten() for parameter in model.parameters()])
        results.append((report.grad_norm, (after - before).abs().mean().item()))
    (norm_unclipped, change_unclipped), (norm_clipped, change_clipped) = results
    assert norm_clipped == pytest.approx(norm_unclipped, rel=1e-6) and norm_unclipped > 1e-3
    # AdamW's first step is lr * g / (|g| + eps): clipped gradients far below eps move the weights less.
    assert change_clipped < 0.9 * change_unclipped
