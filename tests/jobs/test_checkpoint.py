"""Checkpoint folders: complete or absent, verified by checksum, pruned to the newest few."""

from __future__ import annotations

import json
import random

import numpy
import pytest
import torch

from jobs.checkpoint import (
    MANIFEST_FILENAME,
    TRAINABLE_WEIGHTS_FILENAME,
    TRAINING_STATE_FILENAME,
    CheckpointContents,
    checkpoint_folders,
    prune_checkpoints,
    read_checkpoint,
    verify_checkpoint,
    write_checkpoint,
)
from jobs.errors import CorruptCheckpointError
from jobs.training_state import TrainingProgress, capture_rng_state, restore_rng_state


def contents(step: int) -> CheckpointContents:
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (step + 1))
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    scheduler.step()
    return CheckpointContents(
        trainable_weights={name: parameter.detach() for name, parameter in model.named_parameters()},
        optimizer_state=optimizer.state_dict(),
        lr_scheduler_state=scheduler.state_dict(),
        progress=TrainingProgress(step=step, epoch=1, batch_in_epoch=2, tokens_seen=99),
        rng_state=capture_rng_state(),
        config={"seed": 3, "method": "lora"},
    )


def test_a_written_checkpoint_verifies_and_reads_back_equal(tmp_path):
    saved = contents(7)
    folder = write_checkpoint(tmp_path, saved)
    assert folder.name == "step-00000007"
    verify_checkpoint(folder)
    loaded = read_checkpoint(folder)
    assert loaded.progress == saved.progress
    assert loaded.config == saved.config
    assert all(torch.equal(loaded.trainable_weights[name], tensor) for name, tensor in saved.trainable_weights.items())
    assert loaded.lr_scheduler_state["last_epoch"] == 1
    saved_moments = saved.optimizer_state["state"][0]["exp_avg"]
    assert torch.equal(loaded.optimizer_state["state"][0]["exp_avg"], saved_moments)
    assert not [path for path in tmp_path.iterdir() if path.name.startswith(".tmp")]


def test_restored_rng_states_replay_the_same_numbers(tmp_path):
    random.seed(1), numpy.random.seed(1), torch.manual_seed(1)
    folder = write_checkpoint(tmp_path, contents(1))
    expected = (random.random(), numpy.random.rand(), torch.rand(3))
    random.seed(2), numpy.random.seed(2), torch.manual_seed(2)
    restore_rng_state(read_checkpoint(folder).rng_state)
    replayed = (random.random(), numpy.random.rand(), torch.rand(3))
    assert replayed[:2] == expected[:2] and torch.equal(replayed[2], expected[2])


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda folder: (folder / MANIFEST_FILENAME).unlink(), "no readable manifest"),
        (lambda folder: (folder / TRAINING_STATE_FILENAME).unlink(), "missing"),
        (lambda folder: (folder / MANIFEST_FILENAME).write_text("{"), "no readable manifest"),
        (lambda folder: flip_a_byte(folder / TRAINABLE_WEIGHTS_FILENAME), "checksum"),
    ],
    ids=["no manifest", "missing file", "truncated manifest", "flipped byte"],
)
def test_a_damaged_checkpoint_does_not_verify(tmp_path, damage, message):
    folder = write_checkpoint(tmp_path, contents(3))
    damage(folder)
    with pytest.raises(CorruptCheckpointError, match=message):
        verify_checkpoint(folder)


def flip_a_byte(path):
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def test_manifest_lists_size_and_sha256_of_every_file(tmp_path):
    folder = write_checkpoint(tmp_path, contents(2))
    manifest = json.loads((folder / MANIFEST_FILENAME).read_text())
    assert manifest["step"] == 2
    assert sorted(manifest["files"]) == ["config.json", TRAINABLE_WEIGHTS_FILENAME, TRAINING_STATE_FILENAME]
    assert all(len(entry["sha256"]) == 64 and entry["size"] > 0 for entry in manifest["files"].values())


def test_rewriting_a_step_replaces_the_folder(tmp_path):
    first = write_checkpoint(tmp_path, contents(4))
    flip_a_byte(first / TRAINABLE_WEIGHTS_FILENAME)
    second = write_checkpoint(tmp_path, contents(4))
    assert first == second
    verify_checkpoint(second)


def test_pruning_keeps_the_newest_and_removes_crash_leftovers(tmp_path):
    for step in (5, 10, 15, 20):
        write_checkpoint(tmp_path, contents(step))
    (tmp_path / ".tmp-step-00000025-123").mkdir()
    removed = prune_checkpoints(tmp_path, keep=2)
    assert [folder.name for folder in removed] == ["step-00000010", "step-00000005"]
    assert [folder.name for folder in checkpoint_folders(tmp_path)] == ["step-00000020", "step-00000015"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["step-00000015", "step-00000020"]
