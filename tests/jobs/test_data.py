"""Dataset formats, loss masks, truncation and bad lines, with the tiny model's real tokenizer."""

from __future__ import annotations

import json

import pytest

from jobs.data import IGNORE_INDEX, TokenizedExample, tokenize_dataset
from jobs.errors import DatasetNotUsableError
from jobs.model_setup import load_tokenizer
from tests.jobs.helpers import write_jsonl


@pytest.fixture
def tokenizer(tiny_model):
    return load_tokenizer(tiny_model())


def trained_text(tokenizer, example: TokenizedExample) -> str:
    """The text of the tokens that carry loss."""
    return tokenizer.decode([token for token, label in zip(example.input_ids, example.labels) if label != IGNORE_INDEX])


def untrained_text(tokenizer, example: TokenizedExample) -> str:
    return tokenizer.decode([token for token, label in zip(example.input_ids, example.labels) if label == IGNORE_INDEX])


def test_text_format_trains_every_token_and_ends_with_eos(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "the cat is red"}])
    dataset = tokenize_dataset(path, tokenizer, "auto", 64)
    [example] = dataset.examples
    assert dataset.dataset_format == "text"
    assert example.labels == example.input_ids
    assert example.input_ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(example.input_ids) == "the cat is red<eos>"


def test_prompt_tokens_get_no_loss(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "what is the sky ?", "completion": " blue ."}])
    [example] = tokenize_dataset(path, tokenizer, "auto", 64).examples
    prompt_length = len(tokenizer("what is the sky ?")["input_ids"])
    assert example.labels[:prompt_length] == [IGNORE_INDEX] * prompt_length
    assert example.labels[prompt_length:] == example.input_ids[prompt_length:]
    assert trained_text(tokenizer, example) == " blue .<eos>"
    assert untrained_text(tokenizer, example) == "what is the sky ?"


def test_chat_loss_is_on_assistant_turns_only(tmp_path, tokenizer):
    messages = [
        {"role": "system", "content": "say yes"},
        {"role": "user", "content": "is the sky blue ?"},
        {"role": "assistant", "content": "yes"},
        {"role": "user", "content": "is fire cold ?"},
        {"role": "assistant", "content": "no"},
    ]
    path = write_jsonl(tmp_path / "d.jsonl", [{"messages": messages}])
    dataset = tokenize_dataset(path, tokenizer, "auto", 256)
    [example] = dataset.examples
    assert dataset.dataset_format == "messages"
    assert not dataset.used_fallback_chat_template
    assert trained_text(tokenizer, example) == "yes<|im_end|>\nno<|im_end|>\n"
    assert "is the sky blue" in untrained_text(tokenizer, example)
    assert "<|im_start|>assistant\n" in untrained_text(tokenizer, example)


def test_assistant_turn_with_weight_zero_gets_no_loss(tmp_path, tokenizer):
    messages = [
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "bad answer", "weight": 0},
        {"role": "user", "content": "again"},
        {"role": "assistant", "content": "good answer", "weight": 1},
    ]
    path = write_jsonl(tmp_path / "d.jsonl", [{"messages": messages}])
    [example] = tokenize_dataset(path, tokenizer, "messages", 256).examples
    assert trained_text(tokenizer, example) == "good answer<|im_end|>\n"
    assert "bad answer" in untrained_text(tokenizer, example)


def test_tokenizer_without_chat_template_uses_the_fallback(tmp_path, tiny_model):
    tokenizer = load_tokenizer(tiny_model(with_chat_template=False))
    assert not tokenizer.chat_template
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello you"}]
    path = write_jsonl(tmp_path / "d.jsonl", [{"messages": messages}])
    dataset = tokenize_dataset(path, tokenizer, "auto", 256)
    [example] = dataset.examples
    assert dataset.used_fallback_chat_template
    assert tokenizer.decode(example.input_ids) == "user:\nhi\nassistant:\nhello you<eos>\n"
    assert trained_text(tokenizer, example) == "hello you<eos>\n"


def test_long_examples_are_truncated_and_counted(tmp_path, tokenizer):
    records = [{"text": "one two three four five six seven eight nine ten"}, {"text": "hi"}]
    path = write_jsonl(tmp_path / "d.jsonl", records)
    dataset = tokenize_dataset(path, tokenizer, "auto", 8)
    assert dataset.num_truncated == 1
    assert dataset.num_dropped == 0
    short_length = len(tokenizer("hi")["input_ids"]) + 1  # with the end-of-sequence token
    assert [len(example.input_ids) for example in dataset.examples] == [8, short_length]
    assert dataset.num_tokens == 8 + short_length


def test_examples_with_nothing_to_learn_after_truncation_are_dropped(tmp_path, tokenizer):
    records = [
        {"prompt": "one two three four five six seven eight nine ten", "completion": " yes"},
        {"prompt": "hi", "completion": " yes"},
    ]
    path = write_jsonl(tmp_path / "d.jsonl", records)
    dataset = tokenize_dataset(path, tokenizer, "auto", 8)
    assert (dataset.num_truncated, dataset.num_dropped, len(dataset.examples)) == (1, 1, 1)
    with pytest.raises(DatasetNotUsableError, match="none has a token to learn"):
        tokenize_dataset(write_jsonl(tmp_path / "e.jsonl", records[:1]), tokenizer, "auto", 8)


def test_bad_lines_are_all_reported_with_line_numbers(tmp_path, tokenizer):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "ok"}\n{not json\n\n{"prompt": "no completion"}\n{"text": 5}\n')
    with pytest.raises(DatasetNotUsableError) as caught:
        tokenize_dataset(path, tokenizer, "auto", 64)
    assert [line for line, _ in caught.value.problems] == [2, 4, 5]
    assert "line 2" in str(caught.value)


def test_bad_messages_are_explained(tmp_path, tokenizer):
    records = [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo", "weight": 2}]},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo", "weight": 0}]},
        {"messages": []},
    ]
    with pytest.raises(DatasetNotUsableError) as caught:
        tokenize_dataset(write_jsonl(tmp_path / "d.jsonl", records), tokenizer, "auto", 64)
    problems = dict(caught.value.problems)
    assert "weight is 2" in problems[1]
    assert "nothing to learn" in problems[2]
    assert "empty" in problems[3]


def test_conversation_starting_with_the_assistant_cannot_be_split(tmp_path, tokenizer):
    records = [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
        {"messages": [{"role": "assistant", "content": "first"}, {"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
    ]
    with pytest.raises(DatasetNotUsableError) as caught:
        tokenize_dataset(write_jsonl(tmp_path / "d.jsonl", records), tokenizer, "auto", 64)
    [(line, message)] = caught.value.problems
    assert line == 2 and "first message is from the assistant" in message


def test_a_forced_format_must_match_the_lines(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "the cat"}])
    with pytest.raises(DatasetNotUsableError, match="in text format, but the file is prompt_completion"):
        tokenize_dataset(path, tokenizer, "prompt_completion", 64)


def test_missing_or_empty_file_is_not_usable(tmp_path, tokenizer):
    with pytest.raises(DatasetNotUsableError, match="does not exist"):
        tokenize_dataset(tmp_path / "missing.jsonl", tokenizer, "auto", 64)
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DatasetNotUsableError, match="no examples"):
        tokenize_dataset(tmp_path / "empty.jsonl", tokenizer, "auto", 64)


def test_a_byte_order_mark_is_accepted(tmp_path, tokenizer):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"text": "the cat"}).encode() + b"\n")
    [example] = tokenize_dataset(path, tokenizer, "auto", 64).examples
    assert tokenizer.decode(example.input_ids) == "the cat<eos>"
