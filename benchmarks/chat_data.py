"""Variable-length chat data made offline from real English text that ships with Python itself.

Sources, each giving at most one conversation (one user question, one assistant answer):

- the sections of ``pydoc_data.topics.topics``: the help texts of Python's statements, keywords
  and types (what ``help("if")`` prints), split at their section headings;
- the docstrings of the standard library's top-level modules, and of their public top-level
  functions and classes, read from the source files with ``ast`` (nothing is imported, so no
  module's import side effects run).

Questions come from a few natural templates per kind of source. Answers are the leading paragraphs
of the source, cut at a paragraph boundary (after a sentence when the first paragraph alone is too
long) to a length budget drawn per example, so that the rendered conversations spread from a few
dozen to about 256 tokens: the kind of data where padding every batch to its longest example
wastes about a third of the work. Tables are left out (they are mostly spaces and dashes).

Everything is sorted and then shuffled with a seeded generator, so the same Python version gives
the same files; another Python version ships other texts and gives other (equally valid) files.
Validation and training examples come from different sources.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import json
import random
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

# English prose with SmolLM2's tokenizer is about four characters a token; the budget is in characters.
CHARS_PER_TOKEN = 4
ANSWER_TOKENS_RANGE = (8, 200)  # the question, template and role markers add about 45 tokens
MIN_SOURCE_CHARS = 80
# Modules whose source is not documentation-like prose, or that exist for their import side effects.
SKIPPED_MODULES = frozenset({"antigravity", "this", "idlelib", "test", "lib2to3", "pydoc_data", "turtledemo", "ensurepip", "venv"})
HEADING_UNDERLINE = re.compile(r"^([=\-*~^\"'])\1{2,}$")

TOPIC_QUESTIONS = (
    "How does {title} work in Python?",
    "Can you explain {title} in Python?",
    "What should I know about {title}?",
    "Tell me about {title}.",
    "What does the Python language reference say about {title}?",
    "I'm a bit confused by {title}. Could you clarify?",
)
MODULE_QUESTIONS = (
    "What is the {name} module for?",
    "What does Python's {name} module do?",
    "Could you give me an overview of the {name} module?",
    "When would I use the {name} module from the standard library?",
    "Describe the standard library module {name}.",
)
FUNCTION_QUESTIONS = (
    "What does {name}() do?",
    "How do I use {name}?",
    "Explain {name} from the standard library.",
    "What is {name} for?",
)
CLASS_QUESTIONS = (
    "What is the {name} class?",
    "How does {name} work?",
    "What is {name} used for?",
    "Can you describe the class {name}?",
)
QUESTIONS = {"topic": TOPIC_QUESTIONS, "module": MODULE_QUESTIONS, "function": FUNCTION_QUESTIONS, "class": CLASS_QUESTIONS}


@dataclass(frozen=True)
class Source:
    """A piece of documentation one conversation is made from."""

    kind: str  # topic, module, function or class
    name: str  # what the question asks about
    text: str


def topic_sources() -> list[Source]:
    """One source per section of each help topic of ``pydoc_data``."""
    from pydoc_data.topics import topics

    sources = []
    for key in sorted(topics):
        for title, body in _sections(topics[key]):
            if len(body) >= MIN_SOURCE_CHARS:
                sources.append(Source("topic", _as_phrase(title), body))
    return sources


def _sections(text: str) -> Iterator[tuple[str, str]]:
    """(heading, body) pairs of a help text whose headings are underlined with ``***``, ``===`` or ``---``."""
    lines = text.strip("\n").splitlines()
    title, body = "", []
    index = 0
    while index < len(lines):
        is_heading = index + 1 < len(lines) and lines[index].strip() and HEADING_UNDERLINE.match(lines[index + 1].strip())
        if is_heading:
            if title:
                yield title, "\n".join(body).strip("\n")
            title, body = lines[index].strip(), []
            index += 2
            continue
        body.append(lines[index])
        index += 1
    if title:
        yield title, "\n".join(body).strip("\n")


def _as_phrase(title: str) -> str:
    """A heading as it reads inside a question: 'The "if" statement' becomes 'the "if" statement'."""
    return "t" + title[1:] if title.startswith("The ") else title


def module_sources() -> list[Source]:
    """Docstrings of the standard library's public top-level modules and of their public functions and classes."""
    sources = []
    for name in sorted(sys.stdlib_module_names):
        if name.startswith("_") or name in SKIPPED_MODULES:
            continue
        tree = _parse_module(name)
        if tree is None:
            continue
        sources.extend(_docstring_sources(name, tree))
    return sources


def _parse_module(name: str) -> Optional[ast.Module]:
    """The syntax tree of a top-level module's ``.py`` source; None for a built-in or compiled module."""
    try:
        spec = importlib.util.find_spec(name)  # a top-level name is located without being imported
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    try:
        return ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError):
        return None


def _docstring_sources(module_name: str, tree: ast.Module) -> list[Source]:
    sources = []
    module_doc = ast.get_docstring(tree)
    if module_doc and len(module_doc) >= MIN_SOURCE_CHARS:
        sources.append(Source("module", module_name, module_doc))
    for node in tree.body:
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) or node.name.startswith("_"):
            continue
        doc = ast.get_docstring(node)
        if doc and len(doc) >= MIN_SOURCE_CHARS:
            kind = "class" if isinstance(node, ast.ClassDef) else "function"
            sources.append(Source(kind, f"{module_name}.{node.name}", doc))
    return sources


@functools.lru_cache(maxsize=1)
def all_sources() -> tuple[Source, ...]:
    """Every usable source, in a fixed order (topics, then modules by name)."""
    return tuple(topic_sources() + module_sources())


def answer_from(text: str, max_chars: int) -> str:
    """The leading paragraphs of ``text`` that fit in ``max_chars`` (always something: the first paragraph cut after a sentence if need be)."""
    paragraphs = [paragraph.strip("\n") for paragraph in re.split(r"\n\s*\n", text) if paragraph.strip() and not _is_table(paragraph)]
    while len(paragraphs) > 1 and paragraphs[0][0].isspace():  # an answer opens with prose, not an indented code or grammar block
        paragraphs.pop(0)
    kept: list[str] = []
    used = 0
    for paragraph in paragraphs:
        if kept and used + len(paragraph) + 2 > max_chars:
            break
        kept.append(paragraph)
        used += len(paragraph) + 2
    if len(kept) == 1 and len(kept[0]) > max_chars:
        kept[0] = _first_sentences(kept[0], max_chars)
    return "\n\n".join(kept)


def _is_table(paragraph: str) -> bool:
    return paragraph.lstrip().startswith(("+-", "|", "===="))


def _first_sentences(paragraph: str, max_chars: int) -> str:
    sentences = re.split(r"(?<=[.!?])\s+", paragraph)
    kept = [sentences[0]]
    for sentence in sentences[1:]:
        if sum(len(k) + 1 for k in kept) + len(sentence) > max_chars:
            break
        kept.append(sentence)
    return " ".join(kept)


def conversation(source: Source, rng: random.Random) -> dict:
    """One ``{"messages": [...]}`` record from ``source``: a templated question and an answer cut to a drawn length."""
    question = rng.choice(QUESTIONS[source.kind]).format(title=source.name, name=source.name)
    answer_tokens = rng.randint(*ANSWER_TOKENS_RANGE)
    answer = answer_from(source.text, answer_tokens * CHARS_PER_TOKEN)
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def build_chat_examples(count: int, seed: int = 0, skip: int = 0) -> list[dict]:
    """``count`` conversations from different sources, after the first ``skip`` sources of the seeded order.

    Raises:
        ValueError: fewer than ``skip + count`` sources exist on this Python.
    """
    sources = list(all_sources())
    if skip + count > len(sources):
        raise ValueError(f"asked for {skip + count} chat examples, but this Python ships only {len(sources)} usable texts; ask for fewer")
    random.Random(seed).shuffle(sources)
    # A generator per position: an example does not change when more examples are asked for.
    return [conversation(sources[position], random.Random(f"{seed}/{position}")) for position in range(skip, skip + count)]


def write_chat_dataset(folder: Path, train_examples: int, validation_examples: int, seed: int = 0) -> tuple[Path, Path]:
    """Write ``chat-train.jsonl`` and ``chat-validation.jsonl`` into ``folder`` (their sources do not overlap).

    Returns:
        The training and validation file paths.
    """
    folder.mkdir(parents=True, exist_ok=True)
    validation = build_chat_examples(validation_examples, seed)
    train = build_chat_examples(train_examples, seed, skip=validation_examples)
    paths = (folder / "chat-train.jsonl", folder / "chat-validation.jsonl")
    for path, records in zip(paths, (train, validation)):
        path.write_text("".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records), encoding="utf-8")
    return paths
