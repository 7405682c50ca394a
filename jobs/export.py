"""Merge a job's LoRA/DoRA adapter into its base model: ``python -m jobs.export --model BASE --adapter ADAPTER --out OUT``.

The result is a plain Hugging Face folder (float32 safetensors, config, tokenizer) that
``AutoModelForCausalLM.from_pretrained`` loads without peft. It is written into a temporary folder
next to ``OUT`` and renamed into place, so ``OUT`` is complete or absent. The last stdout line is
JSON: ``{"path": OUT, "num_parameters": N}`` or ``{"error": message}``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Optional

from mftd.protocol import EXIT_BAD_CONFIG, EXIT_FAILED, EXIT_SUCCEEDED


def export_merged(model_path: Path, adapter_path: Path, out_dir: Path) -> dict:
    """Load the base model in float32, apply the adapter, merge it into the weights and save the folder.

    Args:
        model_path: the base model's Hugging Face folder.
        adapter_path: the adapter folder (its tokenizer, if saved there, wins over the base's).
        out_dir: the folder to create; an existing one is replaced.

    Returns:
        The folder's path and parameter count.
    """
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    merged = PeftModel.from_pretrained(base, adapter_path).merge_and_unload()
    tokenizer_source = adapter_path if (adapter_path / "tokenizer_config.json").is_file() else model_path
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
    temporary = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(temporary, ignore_errors=True)
    try:
        merged.save_pretrained(temporary, safe_serialization=True)
        tokenizer.save_pretrained(temporary)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        temporary.rename(out_dir)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return {"path": str(out_dir), "num_parameters": sum(p.numel() for p in merged.parameters())}


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.export", description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="The base model's Hugging Face folder.")
    parser.add_argument("--adapter", type=Path, required=True, help="The adapter folder a LoRA or DoRA job saved.")
    parser.add_argument("--out", type=Path, required=True, help="The folder to write the merged model into.")
    args = parser.parse_args(argv)
    for label, path in (("--model", args.model), ("--adapter", args.adapter)):
        if not path.is_dir():
            print(json.dumps({"error": f"{label} {path} is not a folder"}), flush=True)
            return EXIT_BAD_CONFIG
    try:
        result = export_merged(args.model, args.adapter, args.out)
    except Exception as error:
        print(json.dumps({"error": f"the export failed: {type(error).__name__}: {error}"}), flush=True)
        return EXIT_FAILED
    print(json.dumps(result), flush=True)
    return EXIT_SUCCEEDED


if __name__ == "__main__":
    sys.exit(main())
