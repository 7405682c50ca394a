"""Micro-batches in a deterministic order that a resumed run can pick up from any position.

Epoch ``e`` visits the examples in the permutation drawn from a generator seeded with ``seed + e``,
cut into batches of ``batch_size`` (the last one may be smaller). The order depends on nothing but
the seed, the epoch and the number of examples, so a position (epoch, batch index) is all a checkpoint
needs to continue the same sequence. The stream runs on across epochs without end; the training loop
decides when to stop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch

from jobs.data import IGNORE_INDEX, TokenizedExample


@dataclass(frozen=True)
class MicroBatch:
    """Padded tensors for one forward/backward pass, and where the stream stands after it."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    next_epoch: int
    next_batch_in_epoch: int

    @property
    def num_loss_tokens(self) -> int:
        """Predicted positions that carry loss (labels shifted by one, as the loss sees them)."""
        return int((self.labels[:, 1:] != IGNORE_INDEX).sum())

    @property
    def num_tokens(self) -> int:
        """Real (not padding) tokens."""
        return int(self.attention_mask.sum())


def batches_per_epoch(num_examples: int, batch_size: int) -> int:
    return math.ceil(num_examples / batch_size)


def epoch_order(num_examples: int, seed: int, epoch: int) -> list[int]:
    """The example indices of ``epoch``, shuffled by a generator of its own (the global RNG is untouched)."""
    generator = torch.Generator().manual_seed(seed + epoch)
    return torch.randperm(num_examples, generator=generator).tolist()


def pad_examples(examples: Sequence[TokenizedExample], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-pad examples to the longest one.

    Returns:
        ``(input_ids, attention_mask, labels)``, each of shape (len(examples), longest); padding has
        ``pad_token_id``, attention 0 and label ``IGNORE_INDEX``.
    """
    longest = max(len(example.input_ids) for example in examples)
    input_ids = torch.full((len(examples), longest), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), longest), dtype=torch.long)
    labels = torch.full((len(examples), longest), IGNORE_INDEX, dtype=torch.long)
    for row, example in enumerate(examples):
        length = len(example.input_ids)
        input_ids[row, :length] = torch.tensor(example.input_ids, dtype=torch.long)
        attention_mask[row, :length] = 1
        labels[row, :length] = torch.tensor(example.labels, dtype=torch.long)
    return input_ids, attention_mask, labels


def micro_batches(
    examples: Sequence[TokenizedExample],
    batch_size: int,
    seed: int,
    pad_token_id: int,
    start_epoch: int = 0,
    start_batch_in_epoch: int = 0,
) -> Iterator[MicroBatch]:
    """An endless stream of micro-batches, starting at (start_epoch, start_batch_in_epoch).

    Args:
        examples: the tokenized dataset.
        batch_size: examples per micro-batch.
        seed: the job's seed; epoch ``e`` is shuffled with ``seed + e``.
        pad_token_id: the id padding positions get.
        start_epoch: the epoch to start in (from a checkpoint).
        start_batch_in_epoch: the batch of that epoch to start with.

    Yields:
        MicroBatch, each knowing the position that follows it.
    """
    per_epoch = batches_per_epoch(len(examples), batch_size)
    epoch, batch_index = start_epoch, start_batch_in_epoch
    while True:
        order = epoch_order(len(examples), seed, epoch)
        while batch_index < per_epoch:
            chosen = [examples[i] for i in order[batch_index * batch_size : (batch_index + 1) * batch_size]]
            input_ids, attention_mask, labels = pad_examples(chosen, pad_token_id)
            batch_index += 1
            at_epoch_end = batch_index == per_epoch
            yield MicroBatch(
                input_ids=input_ids,
                attention_mask=attention_mask,
                labels=labels,
                next_epoch=epoch + 1 if at_epoch_end else epoch,
                next_batch_in_epoch=0 if at_epoch_end else batch_index,
            )
        epoch, batch_index = epoch + 1, 0
