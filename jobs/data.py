"""Training data: read a JSONL dataset, tokenize each example, and mark which tokens carry loss.

Three formats, detected from the keys of each line (or forced by ``JobConfig.dataset_format``):

- ``{"text": ...}``: loss on every token.
- ``{"prompt": ..., "completion": ...}``: loss on the completion (and the end-of-sequence token) only.
- ``{"messages": [{"role": ..., "content": ...}, ...]}``: rendered with the tokenizer's chat template;
  loss on assistant turns only, and not on an assistant turn that carries ``"weight": 0``.

A label of ``IGNORE_INDEX`` means "no loss on predicting this token". Examples longer than
``max_seq_len`` are cut at the end and counted; an example left with nothing to learn is dropped and
counted.

Lines are validated first by ``mftd.datasets.validate_jsonl``, the same check the daemon runs at
registration, so that a file changed since then is reported the same way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from jobs.errors import DatasetNotUsableError
from mftd.datasets import validate_jsonl
from mftd.errors import DatasetValidationError

IGNORE_INDEX = -100
MAX_PROBLEMS_IN_MESSAGE = 10

# Used when the tokenizer has no chat template. Each turn is "<role>:" on a line, then its content, and
# an assistant turn ends with the end-of-sequence token so that the model learns to stop. The worker
# saves this template with the trained artifacts, so inference formats prompts the same way.
# (Newlines are written as expressions: chat templates render with trim_blocks, which eats a newline after a tag.)
FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ message['role'] + ':\\n' + message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}"
    "{{ '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'assistant:\\n' }}{% endif %}"
)


@dataclass(frozen=True)
class TokenizedExample:
    """One training example: token ids and, per token, the label (the id itself, or ``IGNORE_INDEX``)."""

    input_ids: list[int]
    labels: list[int]

    @property
    def num_loss_tokens(self) -> int:
        """How many tokens are predicted with loss (the first token is never predicted)."""
        return sum(1 for label in self.labels[1:] if label != IGNORE_INDEX)


@dataclass(frozen=True)
class TokenizedDataset:
    """A tokenized dataset and what happened on the way."""

    examples: list[TokenizedExample]
    dataset_format: str
    num_truncated: int
    num_dropped: int
    used_fallback_chat_template: bool

    @property
    def num_tokens(self) -> int:
        return sum(len(example.input_ids) for example in self.examples)


def read_records(path: Path) -> Iterator[tuple[int, Any]]:
    """The parsed lines of a JSONL file that ``validate_jsonl`` accepted, with 1-based line numbers."""
    with Path(path).open(encoding="utf-8-sig") as lines:  # -sig: validation accepts a byte-order mark
        for line_number, line in enumerate(lines, start=1):
            if line.strip():
                yield line_number, json.loads(line)


def tokenize_dataset(path: Path, tokenizer: Any, dataset_format: str, max_seq_len: int) -> TokenizedDataset:
    """Read and tokenize a JSONL dataset.

    Args:
        path: the JSONL file.
        tokenizer: a Hugging Face fast tokenizer (offsets are needed for chat data).
        dataset_format: ``auto`` (detect from the keys) or ``text``, ``prompt_completion``, ``messages``.
        max_seq_len: longer examples are cut to this many tokens.

    Returns:
        The examples that have at least one token to learn, with counts of truncated and dropped ones.

    Raises:
        DatasetNotUsableError: a missing file, bad lines (all listed with line numbers), lines the
            chat template cannot render, or nothing left to train on.
    """
    try:
        dataset_format = validate_jsonl(path, dataset_format).format
    except DatasetValidationError as error:
        raise DatasetNotUsableError(f"{error}; fix the file and start the job again", error.problems) from error
    chat_template = getattr(tokenizer, "chat_template", None) or FALLBACK_CHAT_TEMPLATE
    examples: list[TokenizedExample] = []
    problems: list[tuple[int, str]] = []
    num_records = num_truncated = 0
    for line_number, record in read_records(path):
        num_records += 1
        try:
            example = _tokenize_record(record, dataset_format, tokenizer, chat_template)
        except ValueError as error:
            problems.append((line_number, str(error)))
            continue
        if len(example.input_ids) > max_seq_len:
            num_truncated += 1
            example = TokenizedExample(example.input_ids[:max_seq_len], example.labels[:max_seq_len])
        if example.num_loss_tokens > 0:
            examples.append(example)
    _raise_if_problems(path, problems)
    if not examples:
        raise DatasetNotUsableError(
            f"dataset {path} has {num_records} examples but none has a token to learn after cutting to "
            f"max_seq_len={max_seq_len}; raise max_seq_len or shorten the prompts"
        )
    return TokenizedDataset(
        examples=examples,
        dataset_format=dataset_format,
        num_truncated=num_truncated,
        num_dropped=num_records - len(examples),
        used_fallback_chat_template=dataset_format == "messages" and not getattr(tokenizer, "chat_template", None),
    )


def _raise_if_problems(path: Path, problems: list[tuple[int, str]]) -> None:
    if not problems:
        return
    listed = "; ".join(f"line {line}: {what}" for line, what in problems[:MAX_PROBLEMS_IN_MESSAGE])
    more = f" (and {len(problems) - MAX_PROBLEMS_IN_MESSAGE} more)" if len(problems) > MAX_PROBLEMS_IN_MESSAGE else ""
    raise DatasetNotUsableError(f"dataset {path} has {len(problems)} lines that cannot be tokenized: {listed}{more}; fix them and register it again", problems)


def _tokenize_record(record: dict[str, Any], dataset_format: str, tokenizer: Any, chat_template: str) -> TokenizedExample:
    if dataset_format == "text":
        return _tokenize_text(record["text"], tokenizer)
    if dataset_format == "prompt_completion":
        return _tokenize_prompt_completion(record["prompt"], record["completion"], tokenizer)
    return _tokenize_messages(record["messages"], tokenizer, chat_template)


def _with_eos(token_ids: list[int], tokenizer: Any) -> list[int]:
    eos = tokenizer.eos_token_id
    if eos is None or (token_ids and token_ids[-1] == eos):
        return token_ids
    return token_ids + [eos]


def _tokenize_text(text: str, tokenizer: Any) -> TokenizedExample:
    token_ids = _with_eos(tokenizer(text)["input_ids"], tokenizer)
    return TokenizedExample(token_ids, list(token_ids))


def _tokenize_prompt_completion(prompt: str, completion: str, tokenizer: Any) -> TokenizedExample:
    # Tokenized apart so that the boundary is exact; the prompt gets the tokenizer's usual prefix (BOS).
    prompt_ids = tokenizer(prompt)["input_ids"]
    completion_ids = _with_eos(tokenizer(completion, add_special_tokens=False)["input_ids"], tokenizer)
    return TokenizedExample(prompt_ids + completion_ids, [IGNORE_INDEX] * len(prompt_ids) + completion_ids)


def _render(tokenizer: Any, messages: list[dict[str, str]], chat_template: str, add_generation_prompt: bool = False) -> str:
    turns = [{"role": message["role"], "content": message["content"]} for message in messages]
    try:
        return tokenizer.apply_chat_template(
            turns, chat_template=chat_template, tokenize=False, add_generation_prompt=add_generation_prompt
        )
    except Exception as error:  # a template's own checks raise anything (jinja, ValueError)
        raise ValueError(f"the chat template refused this conversation: {error}") from error


def _tokenize_messages(messages: list[dict[str, Any]], tokenizer: Any, chat_template: str) -> TokenizedExample:
    if messages[0]["role"] == "assistant":
        # Nothing renders "the prompt before it", so its tokens could not be told apart.
        raise ValueError("the first message is from the assistant; start with a system or user message")
    full_text = _render(tokenizer, messages, chat_template)
    # An assistant turn is the text that rendering it adds after the generation prompt. Templates
    # that render earlier turns differently once later ones follow cannot be split this way.
    trained_spans: list[tuple[int, int]] = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant" or message.get("weight", 1) == 0:
            continue
        before = _render(tokenizer, messages[:index], chat_template, add_generation_prompt=True)
        through = _render(tokenizer, messages[: index + 1], chat_template)
        if not (through.startswith(before) and full_text.startswith(through)):
            raise ValueError(
                f"the chat template renders the turns before messages[{index}] differently once it is added, "
                "so its tokens cannot be found; use the prompt_completion format instead"
            )
        trained_spans.append((len(before), len(through)))
    encoding = tokenizer(full_text, add_special_tokens=False, return_offsets_mapping=True)
    token_ids = encoding["input_ids"]
    # A token that straddles the start of a turn (a space merged into the first word) is trained too.
    labels = [
        token_id if any(token_start < end and token_end > start for start, end in trained_spans) else IGNORE_INDEX
        for token_id, (token_start, token_end) in zip(token_ids, encoding["offset_mapping"])
    ]
    return TokenizedExample(token_ids, labels)
