"""The chat benchmark data: built offline from Python's own texts, the same every time, valid, and of varied length."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from benchmarks.chat_data import all_sources, answer_from, build_chat_examples, write_chat_dataset
from mftd.datasets import validate_jsonl


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_the_same_seed_writes_the_same_files(tmp_path: Path) -> None:
    first = write_chat_dataset(tmp_path / "a", 60, 10, seed=0)
    second = write_chat_dataset(tmp_path / "b", 60, 10, seed=0)
    other_seed = write_chat_dataset(tmp_path / "c", 60, 10, seed=1)

    assert [path.read_bytes() for path in first] == [path.read_bytes() for path in second]
    assert first[0].read_bytes() != other_seed[0].read_bytes()


def test_files_are_valid_messages_datasets_with_disjoint_sources(tmp_path: Path) -> None:
    train, validation = write_chat_dataset(tmp_path, 60, 10)

    assert (validate_jsonl(train).format, validate_jsonl(train).num_examples) == ("messages", 60)
    assert (validate_jsonl(validation).format, validate_jsonl(validation).num_examples) == ("messages", 10)
    for record in _records(train) + _records(validation):
        assert [message["role"] for message in record["messages"]] == ["user", "assistant"]
        assert not record["messages"][1]["content"][0].isspace()
    answers = {record["messages"][1]["content"] for record in _records(train)}
    assert not answers & {record["messages"][1]["content"] for record in _records(validation)}


def test_answer_lengths_spread_from_a_sentence_to_several_paragraphs() -> None:
    lengths = [len(record["messages"][1]["content"]) for record in build_chat_examples(200)]
    deciles = statistics.quantiles(lengths, n=10)

    # About four characters a token: from under 40 tokens at the 10th percentile to over 100 at the 90th.
    assert deciles[0] < 160 < 400 < deciles[8]
    assert max(lengths) <= 200 * 4 + 400  # the budget, give or take one sentence


def test_an_answer_is_cut_at_a_paragraph_boundary() -> None:
    text = "First paragraph.\n\nSecond paragraph, a little longer.\n\nThird."

    assert answer_from(text, 30) == "First paragraph."
    assert answer_from(text, 60) == "First paragraph.\n\nSecond paragraph, a little longer."


def test_asking_for_more_examples_than_python_ships_is_refused() -> None:
    with pytest.raises(ValueError, match="usable texts"):
        build_chat_examples(len(all_sources()) + 1)
