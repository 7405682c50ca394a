"""Data order and padding: deterministic per epoch, and resumable from any position."""

from __future__ import annotations

from itertools import islice

import torch

from jobs.batches import batches_per_epoch, epoch_order, micro_batches, pad_examples
from jobs.data import IGNORE_INDEX, TokenizedExample

EXAMPLES = [TokenizedExample(list(range(1, 2 + index % 4)), [IGNORE_INDEX] + list(range(2, 2 + index % 4))) for index in range(7)]


def test_each_epoch_has_its_own_seeded_permutation():
    first, second = epoch_order(7, seed=3, epoch=0), epoch_order(7, seed=3, epoch=1)
    assert sorted(first) == list(range(7)) and sorted(second) == list(range(7))
    assert first != second
    assert first == epoch_order(7, seed=3, epoch=0)
    assert epoch_order(7, seed=4, epoch=0) == second  # seed + epoch is the generator's seed


def test_data_order_does_not_touch_the_global_generator():
    before = torch.get_rng_state()
    list(islice(micro_batches(EXAMPLES, 2, seed=0, pad_token_id=0), 10))
    assert torch.equal(before, torch.get_rng_state())


def test_padding_is_right_sided_with_no_attention_and_no_loss():
    input_ids, attention_mask, labels = pad_examples([EXAMPLES[3], EXAMPLES[0]], pad_token_id=99)
    assert input_ids.tolist() == [[1, 2, 3, 4], [1, 99, 99, 99]]
    assert attention_mask.tolist() == [[1, 1, 1, 1], [1, 0, 0, 0]]
    assert labels.tolist() == [[IGNORE_INDEX, 2, 3, 4], [IGNORE_INDEX] * 4]


def test_stream_runs_across_epochs_and_reports_the_next_position():
    stream = list(islice(micro_batches(EXAMPLES, 3, seed=0, pad_token_id=0), 7))
    assert batches_per_epoch(7, 3) == 3
    positions = [(batch.next_epoch, batch.next_batch_in_epoch) for batch in stream]
    assert positions == [(0, 1), (0, 2), (1, 0), (1, 1), (1, 2), (2, 0), (2, 1)]
    assert [batch.input_ids.shape[0] for batch in stream[:3]] == [3, 3, 1]  # the last batch of an epoch is smaller


def test_a_stream_started_at_a_position_continues_the_same_sequence():
    whole = list(islice(micro_batches(EXAMPLES, 2, seed=5, pad_token_id=0), 9))
    resumed = list(islice(micro_batches(EXAMPLES, 2, seed=5, pad_token_id=0, start_epoch=whole[4].next_epoch, start_batch_in_epoch=whole[4].next_batch_in_epoch), 4))
    for expected, actual in zip(whole[5:], resumed):
        assert torch.equal(expected.input_ids, actual.input_ids)
        assert torch.equal(expected.labels, actual.labels)


def test_token_counts_follow_the_shifted_labels():
    [batch] = list(islice(micro_batches(EXAMPLES[:2], 2, seed=0, pad_token_id=0), 1))
    assert batch.num_tokens == 1 + 2
    assert batch.num_loss_tokens == 0 + 1
