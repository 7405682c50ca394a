"""Micro-batches in a deterministic order that a resumed run can pick up from any position.

Epoch ``e`` visits the examples in the permutation drawn from a generator seeded with ``seed + e``,
cut into micro-batches of ``batch_size`` examples (the last one may be smaller). The order depends
on nothing but the seed, the epoch and the number of examples, so a position (epoch, batch index)
is all a checkpoint needs to continue the same sequence. The stream runs on across epochs without
end; the training loop decides when to stop.

Packing changes the layout of a micro-batch, never its examples. Padding every example to the
longest of its micro-batch wastes a third of the compute on chat data; instead, the micro-batch's
examples are laid end to end in as few rows as hold them (``pack_micro_batch``), balanced so that
the rows are of about equal length. Position ids restart at every example, and the model builds a
block-diagonal causal mask from them (Hugging Face's ``find_packed_sequence_indices``, which the
eager and SDPA attention paths both honour), so each example sees only itself:
``tests/jobs/test_packing.py`` shows each example's loss and gradients in a packed row equal those
of the example alone. Every optimizer step therefore sees the same examples, in the same
accumulation groups, whether packing is on or off; only the arithmetic spent on padding goes. A
micro-batch that packing would not make smaller keeps a row per example but is still laid out as
packed rows (positions given, the padding a segment of its own), so that every micro-batch of a
packed stream reaches the model in one form: compiled layers (``jobs/compile.py``) then need no
graph for a second one.

Why this and not the alternatives, as measured on SmolLM2-135M LoRA (bfloat16 base, 2 threads):

- Packing the whole dataset into rows of max_seq_len tokens fills rows best (97% on the chat
  benchmark), but a step then holds about 2.5 times as many examples: at the same batch_size and
  learning rate, one epoch took 25 steps instead of 60 and ended 5% above Trainer's validation loss.
  Packing each micro-batch keeps the job's hyperparameters meaning what they say.
- Grouping examples of similar length cuts padding too, but changes which examples share a step,
  and a micro-batch of short examples is a small matrix product: every micro-batch pays the same
  fixed cost of a few hundred kernel calls (4 examples of 32 tokens ran at 255 tokens/s, of 64 at
  288, of 128 at 328, of 256 at 356; 4 packed rows of 256 at 341: the block-diagonal mask costs
  about 4%).
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

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
    # Packed rows only: positions restart at 0 at every example (and at the padding of a row's tail).
    # The model is then called with these and no attention mask, so it confines attention to each example.
    position_ids: Optional[torch.Tensor] = None

    def model_inputs(self) -> dict[str, Optional[torch.Tensor]]:
        """What tells the model where it may attend (see ``attention_inputs``)."""
        return attention_inputs(self.attention_mask, self.position_ids)

    @property
    def num_loss_tokens(self) -> int:
        """Predicted positions that carry loss (labels shifted by one, as the loss sees them)."""
        return int((self.labels[:, 1:] != IGNORE_INDEX).sum())

    @property
    def num_tokens(self) -> int:
        """Real (not padding) tokens."""
        return int(self.attention_mask.sum())


def attention_inputs(attention_mask: torch.Tensor, position_ids: Optional[torch.Tensor]) -> dict[str, Optional[torch.Tensor]]:
    """The model's arguments for where it may attend: the padding mask, or for packed rows their positions and no mask."""
    if position_ids is not None:
        return {"attention_mask": None, "position_ids": position_ids}
    return {"attention_mask": attention_mask}


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


def pack_micro_batch(lengths: Sequence[int], capacity: int) -> Optional[list[list[int]]]:
    """Rows of a micro-batch's examples laid end to end, or None when padding each one costs no more.

    For each row count from the fewest that can hold the examples, the examples go longest first
    into the least filled row (ties by index), and the layout costs its row count times its longest
    row. The cheapest layout wins if it costs fewer tokens than padding every example to the longest.

    Args:
        lengths: tokens per example, in micro-batch order.
        capacity: the most tokens a row may hold. The worker passes the dataset's longest example, the
            length the memory plan was made for: a packed micro-batch then has fewer tokens, fewer
            rows and no longer ones than the plan's, so it never needs more memory.

    Returns:
        Rows of positions in ``lengths``, each in the order its examples were placed; None for padding.
    """
    count, longest, total = len(lengths), max(lengths), sum(lengths)
    capacity = max(capacity, longest)
    best, best_tokens = None, count * longest
    for num_rows in range(max(1, math.ceil(total / capacity)), count):
        if num_rows * longest >= best_tokens:
            break  # no layout with more rows can be cheaper: each row is at least the longest example
        rows = _balanced_rows(lengths, num_rows, capacity)
        if rows is None:
            continue
        width = max(sum(lengths[i] for i in row) for row in rows)
        if num_rows * width < best_tokens:
            best, best_tokens = rows, num_rows * width
    return best


def _balanced_rows(lengths: Sequence[int], num_rows: int, capacity: int) -> Optional[list[list[int]]]:
    """Longest first into the least filled of ``num_rows`` rows; None when an example fits in none."""
    rows: list[list[int]] = [[] for _ in range(num_rows)]
    loads = [(0, row) for row in range(num_rows)]  # a heap of (tokens so far, row)
    for index in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        load, row = heapq.heappop(loads)
        if load + lengths[index] > capacity:
            return None  # the least filled row has no room, so no row has
        rows[row].append(index)
        heapq.heappush(loads, (load + lengths[index], row))
    return rows


def packed_rows(
    examples: Sequence[TokenizedExample], rows: Sequence[Sequence[int]], pad_token_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Lay each row's examples end to end, right-padded to the longest row.

    Returns:
        ``(input_ids, attention_mask, labels, position_ids)``. Positions count from 0 in every example,
        and its first token carries no loss;
        a row's padding tail is a segment of its own (positions from 0 again, attention mask 0, no loss),
        so no example attends to it. The attention mask only marks real tokens for counting.
    """
    lengths = [sum(len(examples[i].input_ids) for i in row) for row in rows]
    longest = max(lengths)
    input_ids = torch.full((len(rows), longest), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), longest), dtype=torch.long)
    labels = torch.full((len(rows), longest), IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.zeros((len(rows), longest), dtype=torch.long)
    for row_number, row in enumerate(rows):
        start = 0
        for index in row:
            example = examples[index]
            end = start + len(example.input_ids)
            input_ids[row_number, start:end] = torch.tensor(example.input_ids, dtype=torch.long)
            labels[row_number, start:end] = torch.tensor(example.labels, dtype=torch.long)
            # An example's first token is never predicted: alone it has nothing before it, and here
            # what is before it is the previous example's end.
            labels[row_number, start] = IGNORE_INDEX
            position_ids[row_number, start:end] = torch.arange(end - start)
            start = end
        attention_mask[row_number, :start] = 1
        position_ids[row_number, start:] = torch.arange(longest - start)
    return input_ids, attention_mask, labels, position_ids


def micro_batches(
    examples: Sequence[TokenizedExample],
    batch_size: int,
    seed: int,
    pad_token_id: int,
    start_epoch: int = 0,
    start_batch_in_epoch: int = 0,
    pack_capacity: Optional[int] = None,
) -> Iterator[MicroBatch]:
    """An endless stream of micro-batches, starting at (start_epoch, start_batch_in_epoch).

    Args:
        examples: the tokenized dataset.
        batch_size: examples per micro-batch.
        seed: the job's seed; epoch ``e`` is shuffled with ``seed + e``.
        pad_token_id: the id padding positions get.
        start_epoch: the epoch to start in (from a checkpoint).
        start_batch_in_epoch: the batch of that epoch to start with.
        pack_capacity: pack each micro-batch into rows of at most this many tokens (``pack_micro_batch``);
            None pads every example to the longest of its micro-batch.

    Yields:
        MicroBatch, each knowing the position that follows it.
    """
    per_epoch = batches_per_epoch(len(examples), batch_size)
    epoch, batch_index = start_epoch, start_batch_in_epoch
    while True:
        order = epoch_order(len(examples), seed, epoch)
        while batch_index < per_epoch:
            chosen = [examples[i] for i in order[batch_index * batch_size : (batch_index + 1) * batch_size]]
            position_ids = None
            if pack_capacity is None:
                input_ids, attention_mask, labels = pad_examples(chosen, pad_token_id)
            else:
                # When packing saves nothing, each example gets a row of its own, still laid out as
                # packed rows (the padding a segment of its own): every micro-batch of a packed
                # stream reaches the layers in one form, so compiled layers need one graph for them.
                rows = pack_micro_batch([len(example.input_ids) for example in chosen], pack_capacity)
                rows = rows or [[index] for index in range(len(chosen))]
                input_ids, attention_mask, labels, position_ids = packed_rows(chosen, rows, pad_token_id)
            batch_index += 1
            at_epoch_end = batch_index == per_epoch
            yield MicroBatch(
                input_ids=input_ids,
                attention_mask=attention_mask,
                labels=labels,
                next_epoch=epoch + 1 if at_epoch_end else epoch,
                next_batch_in_epoch=0 if at_epoch_end else batch_index,
                position_ids=position_ids,
            )
        epoch, batch_index = epoch + 1, 0


def epoch_layout_fill(lengths: Sequence[int], batch_size: int, seed: int, epoch: int, pack_capacity: Optional[int]) -> float:
    """The share of an epoch's laid-out tokens that are real (not padding), as ``micro_batches`` lays them out."""
    order = epoch_order(len(lengths), seed, epoch)
    laid_out = 0
    for start in range(0, len(order), batch_size):
        chosen = [lengths[i] for i in order[start : start + batch_size]]
        rows = pack_micro_batch(chosen, pack_capacity) if pack_capacity else None
        if rows is None:
            laid_out += len(chosen) * max(chosen)
        else:
            laid_out += len(rows) * max(sum(chosen[i] for i in row) for row in rows)
    return sum(lengths) / laid_out
