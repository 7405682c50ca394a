"""Generate text from a base model, optionally with a trained adapter: ``python -m jobs.generate``.

Runs in its own process (never in the daemon). ``--compare`` prints the base model's answer
next to the adapted one, which shows at a glance what fine-tuning changed; ``--json`` prints one
JSON object instead (what the daemon's generate route reads). The tokenizer comes from the adapter
folder when it has one (it carries the chat template the job trained with).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def generate(model, tokenizer, prompt: str, max_new_tokens: int) -> str:
    """Greedy completion of ``prompt`` (through the chat template when the tokenizer has one).

    Args:
        model: a causal LM (plain or PEFT-wrapped).
        tokenizer: its tokenizer.
        prompt: the user's message.
        max_new_tokens: the longest answer to produce.

    Returns:
        The generated text, without the prompt.
    """
    import torch

    if tokenizer.chat_template:
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
    else:
        text = prompt
    inputs = tokenizer(text, return_tensors="pt", add_special_tokens=not tokenizer.chat_template)
    with torch.no_grad():
        output = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        )
    return tokenizer.decode(output[0][inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def tokenizer_folder(model_path: Path, adapter_path: Path | None) -> Path:
    """The adapter folder if it holds a tokenizer, else the base model's."""
    if adapter_path is not None and (adapter_path / "tokenizer_config.json").is_file():
        return adapter_path
    return model_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.generate", description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="Base model: a Hugging Face folder.")
    parser.add_argument("--adapter", type=Path, help="A PEFT adapter folder trained by mftd.")
    parser.add_argument("--prompt", required=True, help="The user message to answer.")
    parser.add_argument("--max-new-tokens", type=int, default=48, help="Longest answer (default 48 tokens).")
    parser.add_argument("--compare", action="store_true", help="Also print the base model's answer.")
    parser.add_argument("--json", action="store_true", help='Print {"text": ..., "base_text": ...} as one JSON line.')
    args = parser.parse_args(argv)
    for label, path in (("--model", args.model), ("--adapter", args.adapter)):
        if path is not None and not path.is_dir():
            print(f"{label} {path} is not a folder; give the Hugging Face (or adapter) folder's path", file=sys.stderr)
            return 2

    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder(args.model, args.adapter))
    model = AutoModelForCausalLM.from_pretrained(args.model)
    model.eval()
    result: dict[str, str] = {}
    if args.compare or args.adapter is None:
        result["base_text"] = generate(model, tokenizer, args.prompt, args.max_new_tokens)
    if args.adapter is not None:
        from peft import PeftModel

        tuned = PeftModel.from_pretrained(model, args.adapter)
        tuned.eval()
        result["text"] = generate(tuned, tokenizer, args.prompt, args.max_new_tokens)
    else:
        result["text"] = result["base_text"]
    if args.json:
        print(json.dumps(result), flush=True)
        return 0
    print(f"prompt: {args.prompt}")
    if "base_text" in result:
        print(f"base model: {result['base_text']}")
    if args.adapter is not None:
        print(f"with adapter: {result['text']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
