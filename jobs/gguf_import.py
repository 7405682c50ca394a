"""Convert a GGUF file into a Hugging Face model folder: ``python -m jobs.gguf_import FILE.gguf OUT_DIR``.

The weights are dequantized to float32 (training needs real numbers), saved as safetensors with the
tokenizer and its chat template, into a temporary folder next to ``OUT_DIR`` that is renamed into
place at the end: ``OUT_DIR`` is complete or absent.

Progress goes to stdout as JSON lines, ``{"stage": ..., "progress": 0..1, ...}``, ending with
``{"stage": "done", ...}`` (the folder's path and what it holds) or ``{"stage": "error", "message": ...}``.
Exit codes: 0 done; 78 (``protocol.EXIT_BAD_CONFIG``) for input that cannot be converted (missing
file, not GGUF, unsupported architecture, OUT_DIR taken); 1 for anything else.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any, Optional

from jobs.errors import JobSetupError, UnsupportedArchitectureError
from mftd.protocol import EXIT_BAD_CONFIG, EXIT_FAILED, EXIT_SUCCEEDED

# GGUF ``general.architecture`` -> the transformers class it becomes.
SUPPORTED_GGUF_ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "gpt2": "GPT2LMHeadModel",
    "gemma3": "Gemma3ForCausalLM",
}
STILL_WORKING_SECONDS = 10.0


def emit(stage: str, progress: float, **details: Any) -> None:
    """Print one progress line (flushed: the reader shows it as it comes)."""
    print(json.dumps({"stage": stage, "progress": round(progress, 3), **details}), flush=True)


def read_gguf_architecture(gguf_path: Path) -> str:
    """The ``general.architecture`` of a GGUF file.

    Raises:
        JobSetupError: the file is missing or is not GGUF.
    """
    if not gguf_path.is_file():
        raise JobSetupError(f"{gguf_path} does not exist; give the path of a .gguf file")
    with gguf_path.open("rb") as file:
        if file.read(4) != b"GGUF":
            raise JobSetupError(f"{gguf_path} is not a GGUF file (it does not start with 'GGUF')")
    from gguf import GGUFReader

    field = GGUFReader(gguf_path).fields.get("general.architecture")
    if field is None:
        raise JobSetupError(f"{gguf_path} has no general.architecture; it is not a model GGUF")
    return bytes(field.parts[field.data[0]]).decode("utf-8")


def check_architecture(architecture: str) -> str:
    """The transformers class a GGUF architecture converts to.

    Raises:
        UnsupportedArchitectureError: mftd does not train this architecture.
    """
    if architecture not in SUPPORTED_GGUF_ARCHITECTURES:
        supported = ", ".join(f"{name} ({cls})" for name, cls in SUPPORTED_GGUF_ARCHITECTURES.items())
        raise UnsupportedArchitectureError(
            f"GGUF architecture {architecture!r} is not supported; mftd converts {supported}. "
            "Use a GGUF of one of those, or a Hugging Face folder."
        )
    return SUPPORTED_GGUF_ARCHITECTURES[architecture]


def convert_gguf(gguf_path: Path, out_dir: Path) -> dict[str, Any]:
    """Convert ``gguf_path`` into a Hugging Face folder at ``out_dir``.

    Args:
        gguf_path: the GGUF file.
        out_dir: the folder to create; it must not exist yet.

    Returns:
        What the folder holds: path, architecture, model_type, num_parameters, dtype, context_length,
        has_chat_template.

    Raises:
        JobSetupError: missing or non-GGUF file, or ``out_dir`` already exists.
        UnsupportedArchitectureError: an architecture mftd does not convert.
    """
    if out_dir.exists():
        raise JobSetupError(f"{out_dir} already exists; choose another output folder")
    emit("reading", 0.0, message=f"reading {gguf_path.name}")
    architecture = check_architecture(read_gguf_architecture(gguf_path))
    emit("checked", 0.05, message=f"converting to {architecture}", architecture=architecture)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    temporary = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    try:
        emit("tokenizer", 0.1, message="reading the tokenizer")
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        emit("weights", 0.2, message="dequantizing the weights to float32")
        with _still_working("weights", 0.2):
            model = AutoModelForCausalLM.from_pretrained(
                gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32, **_dequantizing_load_options()
            )
        if type(model).__name__ != architecture:
            raise UnsupportedArchitectureError(f"{gguf_path.name} loaded as {type(model).__name__}, not {architecture}; it cannot be trained by mftd")
        _forget_quantization(model)
        emit("saving", 0.8, message=f"saving safetensors into {out_dir}")
        with _still_working("saving", 0.8):
            model.save_pretrained(temporary, safe_serialization=True)
            tokenizer.save_pretrained(temporary)
        temporary.rename(out_dir)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    config = model.config
    return {
        "path": str(out_dir),
        "architecture": architecture,
        "model_type": config.model_type,
        "num_parameters": sum(parameter.numel() for parameter in model.parameters()),
        "dtype": "float32",
        "context_length": int(getattr(config, "max_position_embeddings", 0) or getattr(config, "n_positions", 0) or 0),
        "has_chat_template": bool(getattr(tokenizer, "chat_template", None)),
    }


def _dequantizing_load_options() -> dict[str, Any]:
    # Newer transformers can keep GGUF weights packed (and then refuses to save them); ask for plain
    # float32 weights. Older versions always dequantize and have no GgufConfig.
    try:
        from transformers import GgufConfig
    except ImportError:
        return {}
    return {"quantization_config": GgufConfig(dequantize=True)}


def _forget_quantization(model: Any) -> None:
    """Drop what marks the model as loaded from GGUF: the weights are plain float32 now, and a leftover
    ``quantization_config`` would make every later loader look for the GGUF file."""
    packed = sorted({type(module).__name__ for module in model.modules() if type(module).__name__.lower().startswith("gguf")})
    if packed:
        raise RuntimeError(f"the weights stayed packed in GGUF modules ({', '.join(packed)}); this transformers version cannot dequantize them")
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    elif hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


class _still_working:
    """Print a progress line every ``STILL_WORKING_SECONDS`` during a long step, so a reader knows it is alive."""

    def __init__(self, stage: str, progress: float):
        self._stage, self._progress = stage, progress
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> None:
        self._started = time.monotonic()
        self._thread.start()

    def __exit__(self, *_exc_info) -> None:
        self._done.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._done.wait(STILL_WORKING_SECONDS):
            emit(self._stage, self._progress, elapsed_seconds=round(time.monotonic() - self._started))


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.gguf_import", description="Convert a GGUF file into a Hugging Face model folder.")
    parser.add_argument("gguf_file", type=Path, help="The .gguf file.")
    parser.add_argument("out_dir", type=Path, help="The folder to create (must not exist).")
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        result = convert_gguf(args.gguf_file.expanduser().resolve(), args.out_dir.expanduser().resolve())
    except JobSetupError as error:
        emit("error", 1.0, message=str(error))
        return EXIT_BAD_CONFIG
    except Exception as error:
        emit("error", 1.0, message=f"the conversion failed: {type(error).__name__}: {error}")
        return EXIT_FAILED
    emit("done", 1.0, seconds=round(time.monotonic() - started, 1), **result)
    return EXIT_SUCCEEDED


if __name__ == "__main__":
    sys.exit(main())
