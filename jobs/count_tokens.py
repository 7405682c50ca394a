"""Count a dataset's tokens with one model's tokenizer: ``python -m jobs.count_tokens --model DIR --dataset FILE``.

Prints one JSON line: examples, tokens, loss tokens, the longest example in tokens, how many are
longer than ``--max-seq-len`` (the model's context by default), and whether chat data needed the
fallback template; or ``{"error": message}`` with exit code 78.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional

from jobs.errors import JobSetupError
from mftd.protocol import EXIT_BAD_CONFIG, EXIT_SUCCEEDED

UNLIMITED = 1 << 30


def count_tokens(model_path: Path, dataset_path: Path, max_seq_len: Optional[int]) -> dict:
    """The token counts of ``dataset_path`` under the tokenizer (and chat template) of ``model_path``."""
    from jobs.data import tokenize_dataset
    from jobs.model_setup import load_tokenizer

    tokenizer = load_tokenizer(model_path)
    dataset = tokenize_dataset(dataset_path, tokenizer, "auto", UNLIMITED)
    lengths = [len(example.input_ids) for example in dataset.examples]
    return {
        "examples": len(lengths),
        "tokens": sum(lengths),
        "loss_tokens": sum(example.num_loss_tokens for example in dataset.examples),
        "longest_example_tokens": max(lengths),
        "longer_than_max_seq_len": sum(length > max_seq_len for length in lengths) if max_seq_len else 0,
        "max_seq_len": max_seq_len,
        "used_fallback_chat_template": dataset.used_fallback_chat_template,
    }


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.count_tokens", description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="A Hugging Face model folder (its tokenizer is used).")
    parser.add_argument("--dataset", type=Path, required=True, help="A JSONL dataset.")
    parser.add_argument("--max-seq-len", type=int, help="Count the examples longer than this.")
    args = parser.parse_args(argv)
    try:
        result = count_tokens(args.model, args.dataset, args.max_seq_len)
    except JobSetupError as error:
        print(json.dumps({"error": str(error)}), flush=True)
        return EXIT_BAD_CONFIG
    print(json.dumps(result), flush=True)
    return EXIT_SUCCEEDED


if __name__ == "__main__":
    sys.exit(main())
