"""What a Hugging Face model folder holds, read without torch: config.json, safetensors headers, tokenizer files.

A safetensors file starts with an 8-byte little-endian header length and a JSON header that maps
each tensor name to its dtype, shape and byte range, so parameter counts and dtypes come from a
few kilobytes of reading, never from loading weights.
"""

from __future__ import annotations

import json
import struct
from collections import Counter
from dataclasses import asdict, dataclass
from math import prod
from pathlib import Path
from typing import Any

from mftd.errors import ModelValidationError

SUPPORTED_ARCHITECTURES = ("GPT2LMHeadModel", "Gemma3ForCausalLM", "Qwen2ForCausalLM", "LlamaForCausalLM")

CONFIG_FILENAME = "config.json"
SAFETENSORS_FILENAME = "model.safetensors"
SAFETENSORS_INDEX_FILENAME = "model.safetensors.index.json"
TOKENIZER_CONFIG_FILENAME = "tokenizer_config.json"
CHAT_TEMPLATE_FILENAMES = ("chat_template.jinja", "chat_template.json")

# Any one of these is enough for transformers to build a tokenizer.
TOKENIZER_FILE_SETS = (("tokenizer.json",), ("tokenizer.model",), ("vocab.json", "merges.txt"))

CONTEXT_LENGTH_KEYS = ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length", "seq_length")

MAX_SAFETENSORS_HEADER_BYTES = 100 * 2**20

SAFETENSORS_DTYPE_NAMES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
}


@dataclass(frozen=True)
class ModelInfo:
    """What mftd needs to know about a model folder before training on it."""

    path: str
    architecture: str
    model_type: str
    num_parameters: int
    dtype: str
    context_length: int
    has_chat_template: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def inspect_model_folder(path: str | Path) -> ModelInfo:
    """Read a local Hugging Face model folder and check that mftd can fine-tune it.

    Args:
        path: the folder (``~`` is expanded; relative paths are taken from the current directory).

    Returns:
        The folder's absolute path, architecture, model type, parameter count, weight dtype,
        context length and whether it has a chat template.

    Raises:
        ModelValidationError: the folder is missing, or lacks config.json, safetensors weights or
            tokenizer files, or its architecture is not supported. The message says what was found
            and how to fix it.
    """
    try:
        folder = Path(path).expanduser().resolve()
    except (ValueError, RuntimeError, OSError) as error:  # a NUL byte, an unknown ~user, a symlink loop
        raise ModelValidationError(f"{str(path)!r} is not a usable path: {error}") from error
    try:
        return _inspect(folder)
    except (ValueError, OSError) as error:  # unreadable files or folders, odd file names
        raise ModelValidationError(f"{folder} cannot be read: {error}. Check that the daemon's user may read it.") from error


def _inspect(folder: Path) -> ModelInfo:
    _check_is_folder(folder)
    config = _read_config(folder)
    architecture = _architecture(folder, config)
    tensors = _safetensors_tensors(folder)
    _check_tokenizer(folder)
    return ModelInfo(
        path=str(folder),
        architecture=architecture,
        model_type=str(config.get("model_type", "")),
        num_parameters=sum(prod(shape) for _dtype, shape in tensors),
        dtype=_weights_dtype(tensors, config),
        context_length=_context_length(folder, config),
        has_chat_template=_has_chat_template(folder),
    )


def _check_is_folder(folder: Path) -> None:
    if folder.is_dir():
        return
    if folder.is_file():
        if folder.suffix.lower() == ".gguf":
            raise ModelValidationError(
                f"{folder} is a GGUF file; mftd does not import GGUF files yet. "
                "Register the Hugging Face folder the GGUF was made from instead."
            )
        raise ModelValidationError(
            f"{folder} is a file; expected a Hugging Face model folder (with config.json, *.safetensors and tokenizer files)."
        )
    raise ModelValidationError(
        f"model folder {folder} does not exist. Give the absolute path of a local Hugging Face model folder "
        "(for example one downloaded with `huggingface-cli download <repo> --local-dir <folder>`)."
    )


def _found_files(folder: Path) -> str:
    names = sorted(entry.name for entry in folder.iterdir())
    if not names:
        return "the folder is empty"
    shown = ", ".join(names[:20]) + (f" and {len(names) - 20} more" if len(names) > 20 else "")
    return f"found: {shown}"


def _read_json(file: Path) -> Any:
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelValidationError(f"{file} cannot be read as JSON: {error}") from error


def _read_config(folder: Path) -> dict[str, Any]:
    config_file = folder / CONFIG_FILENAME
    if not config_file.is_file():
        raise ModelValidationError(
            f"{folder} has no {CONFIG_FILENAME} ({_found_files(folder)}). "
            "Give the folder that holds the model's config.json, weights and tokenizer, as saved by save_pretrained."
        )
    config = _read_json(config_file)
    if not isinstance(config, dict):
        raise ModelValidationError(f"{config_file} holds a JSON {type(config).__name__}; expected an object.")
    return config


def _architecture(folder: Path, config: dict[str, Any]) -> str:
    architectures = config.get("architectures")
    supported = ", ".join(SUPPORTED_ARCHITECTURES)
    if not isinstance(architectures, list) or not architectures or not isinstance(architectures[0], str):
        raise ModelValidationError(
            f"{folder / CONFIG_FILENAME} has no 'architectures' list, so mftd cannot tell what model this is. "
            f"Supported architectures: {supported}."
        )
    architecture = architectures[0]
    if architecture not in SUPPORTED_ARCHITECTURES:
        raise ModelValidationError(
            f"architecture {architecture} (model_type {config.get('model_type', '?')}) is not supported. "
            f"Supported architectures: {supported}."
        )
    return architecture


def converted_weights_filename(dtype_name: str) -> str:
    """The name of the copy of a folder's weights converted to ``dtype_name`` (written by the worker; never a source)."""
    return f"model.{dtype_name}.safetensors"


def safetensors_files(folder: Path) -> list[Path]:
    """The weight files of a model folder: the shards its index names, ``model.safetensors``, or any ``*.safetensors``.

    Raises:
        ModelValidationError: no weights, or an index naming shards that are missing.
    """
    index_file = folder / SAFETENSORS_INDEX_FILENAME
    if index_file.is_file():
        index = _read_json(index_file)
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise ModelValidationError(f"{index_file} has no 'weight_map'; the sharded checkpoint index is damaged.")
        shards = [folder / name for name in sorted(set(map(str, weight_map.values())))]
        missing = [shard.name for shard in shards if not shard.is_file()]
        if missing:
            raise ModelValidationError(
                f"{index_file} names shard files that are missing: {', '.join(missing)}. Download the missing shards."
            )
        return shards
    single = folder / SAFETENSORS_FILENAME
    if single.is_file():
        return [single]
    converted = {converted_weights_filename(name) for name in SAFETENSORS_DTYPE_NAMES.values()}
    others = sorted(file for file in folder.glob("*.safetensors") if file.name not in converted)
    if others:
        return others
    hint = ""
    if any(folder.glob("pytorch_model*.bin")) or any(folder.glob("*.pt")):
        hint = " The folder has PyTorch .bin weights; re-save them as safetensors (save_pretrained(..., safe_serialization=True))."
    raise ModelValidationError(
        f"{folder} has no safetensors weights ({_found_files(folder)}). "
        f"Expected {SAFETENSORS_FILENAME}, or shards listed in {SAFETENSORS_INDEX_FILENAME}.{hint}"
    )


def read_safetensors_header(file: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file (tensor name -> dtype, shape, data_offsets; plus ``__metadata__``).

    Raises:
        ModelValidationError: the file is too short or its header is not valid.
    """
    try:
        with open(file, "rb") as handle:
            size_bytes = handle.read(8)
            if len(size_bytes) != 8:
                raise ModelValidationError(f"{file} is too short to be a safetensors file ({len(size_bytes)} bytes).")
            (header_size,) = struct.unpack("<Q", size_bytes)
            file_size = file.stat().st_size
            if header_size > MAX_SAFETENSORS_HEADER_BYTES or header_size > file_size - 8:
                raise ModelValidationError(
                    f"{file} is not a valid safetensors file: its header claims {header_size} bytes in a {file_size}-byte file."
                )
            header = json.loads(handle.read(header_size).decode("utf-8"))
    except OSError as error:
        raise ModelValidationError(f"{file} cannot be read: {error}") from error
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelValidationError(f"{file} is not a valid safetensors file: its header is not JSON ({error}).") from error
    if not isinstance(header, dict):
        raise ModelValidationError(f"{file} is not a valid safetensors file: its header is not a JSON object.")
    return header


def _safetensors_tensors(folder: Path) -> list[tuple[str, tuple[int, ...]]]:
    tensors: list[tuple[str, tuple[int, ...]]] = []
    for file in safetensors_files(folder):
        for name, entry in read_safetensors_header(file).items():
            if name == "__metadata__":
                continue
            shape = entry.get("shape") if isinstance(entry, dict) else None
            if not isinstance(shape, list) or not all(isinstance(dim, int) and dim >= 0 for dim in shape):
                raise ModelValidationError(f"{file}: tensor {name} has no valid shape in the safetensors header.")
            tensors.append((str(entry.get("dtype", "")), tuple(shape)))
    if not tensors:
        raise ModelValidationError(f"the safetensors files in {folder} hold no tensors.")
    return tensors


def _weights_dtype(tensors: list[tuple[str, tuple[int, ...]]], config: dict[str, Any]) -> str:
    """The dtype holding most of the parameters; config's torch_dtype only if the headers name none."""
    counts: Counter[str] = Counter()
    for dtype, shape in tensors:
        counts[dtype] += prod(shape)
    if counts:
        dominant = counts.most_common(1)[0][0]
        if dominant in SAFETENSORS_DTYPE_NAMES:
            return SAFETENSORS_DTYPE_NAMES[dominant]
    declared = config.get("torch_dtype") or config.get("dtype")
    return str(declared) if declared else "unknown"


def _context_length(folder: Path, config: dict[str, Any]) -> int:
    for section in (config, config.get("text_config")):
        if not isinstance(section, dict):
            continue
        for key in CONTEXT_LENGTH_KEYS:
            value = section.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    raise ModelValidationError(
        f"{folder / CONFIG_FILENAME} names no context length (looked for {', '.join(CONTEXT_LENGTH_KEYS)}, "
        "also under text_config). Add max_position_embeddings to config.json."
    )


def _check_tokenizer(folder: Path) -> None:
    for file_set in TOKENIZER_FILE_SETS:
        if all((folder / name).is_file() for name in file_set):
            return
    wanted = " or ".join("+".join(file_set) for file_set in TOKENIZER_FILE_SETS)
    raise ModelValidationError(
        f"{folder} has no tokenizer ({_found_files(folder)}). Expected {wanted}. "
        "Save the tokenizer into the model folder too (tokenizer.save_pretrained(folder))."
    )


def _has_chat_template(folder: Path) -> bool:
    if any((folder / name).is_file() for name in CHAT_TEMPLATE_FILENAMES):
        return True
    tokenizer_config_file = folder / TOKENIZER_CONFIG_FILENAME
    if not tokenizer_config_file.is_file():
        return False
    try:
        tokenizer_config = json.loads(tokenizer_config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(tokenizer_config, dict) and bool(tokenizer_config.get("chat_template"))
