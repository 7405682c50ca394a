"""JSONL dataset validation: detect the format from the keys, and report every bad line at once.

Formats (one JSON object per line; other keys are ignored):

- ``text``: ``{"text": str}``
- ``prompt_completion``: ``{"prompt": str, "completion": str}``
- ``messages``: ``{"messages": [{"role": "system|user|assistant", "content": str, "weight": 0|1}, ...]}``
  with at least one assistant turn that is not ``"weight": 0``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

from mftd.errors import DatasetValidationError

FORMATS = ("text", "prompt_completion", "messages")
ROLES = ("system", "user", "assistant")
MAX_PROBLEMS = 50
WHOLE_FILE_LINE = 0  # the line number of a problem with the file as a whole

FORMAT_HELP = (
    'expected {"text": ...}, {"prompt": ..., "completion": ...} '
    'or {"messages": [{"role": ..., "content": ...}, ...]}'
)


@dataclass(frozen=True)
class DatasetInfo:
    """What validation learned about a dataset file."""

    path: str
    format: str
    num_examples: int
    size_bytes: int
    longest_example_chars: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _LineProblem(Exception):
    """One line's problem; caught per line so that the whole file is checked."""


def detect_format(record: dict[str, Any]) -> str:
    """The format an example's keys point to.

    Raises:
        _LineProblem: the keys match no format, or more than one.
    """
    matches = []
    if "messages" in record:
        matches.append("messages")
    if "prompt" in record or "completion" in record:
        if not ("prompt" in record and "completion" in record):
            present, missing = ("prompt", "completion") if "prompt" in record else ("completion", "prompt")
            raise _LineProblem(f'has "{present}" but no "{missing}"')
        matches.append("prompt_completion")
    if "text" in record:
        matches.append("text")
    if not matches:
        keys = ", ".join(f'"{key}"' for key in list(record)[:10]) or "no keys"
        raise _LineProblem(f"keys {keys} match no format; {FORMAT_HELP}")
    if len(matches) > 1:
        raise _LineProblem(f"keys match more than one format ({', '.join(matches)}); keep the keys of one format only")
    return matches[0]


def _check_text(record: dict[str, Any]) -> int:
    text = record["text"]
    if not isinstance(text, str):
        raise _LineProblem(f'"text" is a {_json_type(text)}; expected a string')
    if not text:
        raise _LineProblem('"text" is empty')
    return len(text)


def _check_prompt_completion(record: dict[str, Any]) -> int:
    for key in ("prompt", "completion"):
        if not isinstance(record[key], str):
            raise _LineProblem(f'"{key}" is a {_json_type(record[key])}; expected a string')
    if not record["completion"]:
        raise _LineProblem('"completion" is empty, so there is nothing to learn from this example')
    return len(record["prompt"]) + len(record["completion"])


def _check_messages(record: dict[str, Any]) -> int:
    messages = record["messages"]
    if not isinstance(messages, list):
        raise _LineProblem(f'"messages" is a {_json_type(messages)}; expected a list of {{"role", "content"}} objects')
    if not messages:
        raise _LineProblem('"messages" is empty')
    problems = []
    has_assistant_turn = has_trained_turn = False
    chars = 0
    for position, message in enumerate(messages):
        where = f"messages[{position}]"
        if not isinstance(message, dict):
            problems.append(f"{where} is a {_json_type(message)}; expected an object")
            continue
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            problems.append(f"{where}.role is {json.dumps(role)}; expected one of {', '.join(ROLES)}")
        if not isinstance(content, str):
            problems.append(f"{where}.content is {'missing' if 'content' not in message else 'a ' + _json_type(content)}; expected a string")
        else:
            chars += len(content)
        weight = message.get("weight", 1)
        if isinstance(weight, bool) or weight not in (0, 1):
            problems.append(f"{where}.weight is {json.dumps(weight)}; expected 0 or 1")
        if role == "assistant":
            has_assistant_turn = True
            has_trained_turn = has_trained_turn or weight != 0
    if problems:
        raise _LineProblem("; ".join(problems))
    if not has_assistant_turn:
        raise _LineProblem('"messages" has no assistant turn, so there is nothing to learn from this example')
    if not has_trained_turn:
        raise _LineProblem('every assistant turn has "weight": 0, so there is nothing to learn from this example')
    return chars


_CHECKS = {"text": _check_text, "prompt_completion": _check_prompt_completion, "messages": _check_messages}


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def validate_jsonl(path: str | Path, declared_format: str = "auto", display_name: Optional[str] = None) -> DatasetInfo:
    """Check every line of a JSONL dataset and tell its format and size.

    Blank lines are skipped. With ``declared_format="auto"`` the file's format is that of its
    first valid line, and every other line must match it.

    Args:
        path: the JSONL file.
        declared_format: ``auto``, ``text``, ``prompt_completion`` or ``messages``.
        display_name: what to call the file in messages (an upload's own name rather than its temp file).

    Returns:
        The format, number of examples, file size and the longest example in characters.

    Raises:
        DatasetValidationError: the file is missing or empty, or lines are bad. ``problems``
            lists up to 50 of them as (line number, what is wrong); line 0 means the whole file.
    """
    if declared_format != "auto" and declared_format not in FORMATS:
        raise DatasetValidationError(f"format {declared_format!r} is not known; use auto, {', '.join(FORMATS)}.")
    try:
        file = Path(path).expanduser().resolve()
        if not file.is_file():
            what = "is a folder" if file.is_dir() else ("is not a regular file" if file.exists() else "does not exist")
            raise DatasetValidationError(f"dataset file {file} {what}; give the path of a JSONL file.")
        return _validate_lines(file, declared_format, display_name or file.name)
    except (ValueError, RuntimeError, OSError) as error:  # a NUL byte, an unknown ~user, an unreadable file
        raise DatasetValidationError(f"dataset file {str(path)!r} cannot be read: {error}") from error


def _validate_lines(file: Path, declared_format: str, display_name: str) -> DatasetInfo:
    file_format: Optional[str] = None if declared_format == "auto" else declared_format
    format_line = 0
    problems: list[tuple[int, str]] = []
    num_problems = num_examples = longest = 0

    def report(line_number: int, message: str) -> None:
        nonlocal num_problems
        num_problems += 1
        if len(problems) < MAX_PROBLEMS:
            problems.append((line_number, message))

    with open(file, "rb") as handle:
        for line_number, raw_line in enumerate(handle, start=1):
            if line_number == 1 and raw_line.startswith(b"\xef\xbb\xbf"):
                raw_line = raw_line[3:]  # a UTF-8 byte-order mark, as some editors write
            if not raw_line.strip():
                continue
            try:
                record = json.loads(raw_line.decode("utf-8"))
            except UnicodeDecodeError as error:
                report(line_number, f"not UTF-8 text ({error.reason} at byte {error.start})")
                continue
            except json.JSONDecodeError as error:
                report(line_number, f"not valid JSON: {error.msg} at column {error.colno}")
                continue
            if not isinstance(record, dict):
                report(line_number, f"a JSON {_json_type(record)}, not an object; {FORMAT_HELP}")
                continue
            try:
                line_format = detect_format(record)
                if file_format is None:
                    file_format, format_line = line_format, line_number
                elif line_format != file_format:
                    origin = f"line {format_line} set the file's format" if format_line else "the declared format"
                    raise _LineProblem(f"in {line_format} format, but the file is {file_format} ({origin})")
                longest = max(longest, _CHECKS[line_format](record))
            except _LineProblem as problem:
                report(line_number, str(problem))
                continue
            num_examples += 1
    if num_problems == 0 and num_examples == 0:
        report(WHOLE_FILE_LINE, "no examples (only blank lines or nothing at all); expected one JSON object per line")
    if num_problems:
        shown = f" (the first {MAX_PROBLEMS} are listed)" if num_problems > MAX_PROBLEMS else ""
        first_line, first_message = problems[0]
        where = f"line {first_line}" if first_line else "the file"
        raise DatasetValidationError(
            f"dataset {display_name}: {num_problems} problem{'s' if num_problems != 1 else ''}{shown}; "
            f"first: {where}: {first_message}",
            problems,
        )
    return DatasetInfo(
        path=str(file),
        format=file_format or "text",
        num_examples=num_examples,
        size_bytes=file.stat().st_size,
        longest_example_chars=longest,
    )
