import json

import pytest

from mftd.datasets import MAX_PROBLEMS, validate_jsonl
from mftd.errors import DatasetValidationError


def write_lines(path, lines):
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def problems_of(path, declared_format="auto"):
    with pytest.raises(DatasetValidationError) as caught:
        validate_jsonl(path, declared_format)
    return dict(caught.value.problems)


def test_text(tmp_path):
    path = write_lines(tmp_path / "d.jsonl", [{"text": "hello"}, "", {"text": "hi there", "id": 7}])
    info = validate_jsonl(path)
    assert (info.format, info.num_examples, info.longest_example_chars) == ("text", 2, 8)
    assert info.size_bytes == path.stat().st_size


def test_prompt_completion(tmp_path):
    info = validate_jsonl(write_lines(tmp_path / "d.jsonl", [{"prompt": "", "completion": "abc"}]))
    assert info.format == "prompt_completion"


def test_messages(tmp_path):
    line = {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello", "weight": 1}]}
    info = validate_jsonl(write_lines(tmp_path / "d.jsonl", [line]))
    assert (info.format, info.longest_example_chars) == ("messages", len("be brief") + 2 + 5)


def test_byte_order_mark_is_ignored(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"text": "x"}\n')
    assert validate_jsonl(path).num_examples == 1


def test_every_bad_line_is_reported(tmp_path):
    path = write_lines(
        tmp_path / "d.jsonl",
        [
            {"text": "ok"},
            "{broken",
            "3",
            {"question": "?", "answer": "!"},
            {"prompt": "p", "completion": "c"},
            {"text": ["list"]},
            {"prompt": "p"},
            {"text": "a", "messages": []},
            {"text": ""},
        ],
    )
    problems = problems_of(path)
    assert sorted(problems) == [2, 3, 4, 5, 6, 7, 8, 9]
    assert problems[2].startswith("not valid JSON")
    assert problems[3].startswith("a JSON number, not an object")
    assert '"question", "answer" match no format' in problems[4]
    assert "in prompt_completion format, but the file is text (line 1 set the file's format)" == problems[5]
    assert problems[6] == '"text" is a list; expected a string'
    assert problems[7] == 'has "prompt" but no "completion"'
    assert "more than one format" in problems[8]
    assert problems[9] == '"text" is empty'


def test_message_problems(tmp_path):
    lines = [
        {"messages": "hi"},
        {"messages": [{"role": "bot", "content": 1}]},
        {"messages": [{"role": "assistant", "content": "x", "weight": 2}]},
        {"messages": [{"role": "assistant", "content": "x", "weight": 0}]},
        {"messages": [{"role": "user", "content": "x"}]},
        {"messages": [{"role": "assistant", "content": "x", "weight": True}]},
    ]
    problems = problems_of(write_lines(tmp_path / "d.jsonl", lines))
    assert problems[1].startswith('"messages" is a string')
    assert "messages[0].role is \"bot\"" in problems[2] and "messages[0].content is a number" in problems[2]
    assert "messages[0].weight is 2; expected 0 or 1" == problems[3]
    assert "weight\": 0" in problems[4]
    assert "no assistant turn" in problems[5]
    assert "weight is true" in problems[6]


def test_declared_format(tmp_path):
    path = write_lines(tmp_path / "d.jsonl", [{"text": "a"}])
    assert problems_of(path, "messages") == {1: "in text format, but the file is messages (the declared format)"}
    assert validate_jsonl(path, "text").format == "text"
    with pytest.raises(DatasetValidationError, match="not known"):
        validate_jsonl(path, "csv")


def test_empty_file(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("\n  \n")
    assert list(problems_of(path)) == [0]


def test_missing_file(tmp_path):
    with pytest.raises(DatasetValidationError, match="does not exist"):
        validate_jsonl(tmp_path / "none.jsonl")


def test_problems_are_capped_but_counted(tmp_path):
    path = write_lines(tmp_path / "d.jsonl", ["nope"] * (MAX_PROBLEMS + 10))
    with pytest.raises(DatasetValidationError) as caught:
        validate_jsonl(path)
    assert len(caught.value.problems) == MAX_PROBLEMS
    assert f"{MAX_PROBLEMS + 10} problems" in str(caught.value)


def test_invalid_utf8(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"text": "ok"}\n{"text": "\xff"}\n')
    assert problems_of(path)[2].startswith("not UTF-8 text")
