"""Tiny fake-but-valid Hugging Face model folders, written by hand (no torch): config.json, safetensors, tokenizer files."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

GPT2_CONFIG = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_positions": 128, "n_embd": 8, "vocab_size": 16, "torch_dtype": "float32"}

NUMPY_TO_SAFETENSORS = {"float32": "F32", "float16": "F16", "int64": "I64"}


def write_safetensors(path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> Path:
    """A real safetensors file: 8-byte little-endian header length, JSON header, raw little-endian data."""
    header: dict = {"__metadata__": metadata or {"format": "pt"}}
    offset = 0
    blobs = []
    for name, array in tensors.items():
        data = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
        header[name] = {"dtype": NUMPY_TO_SAFETENSORS[array.dtype.name], "shape": list(array.shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    header_bytes = json.dumps(header).encode()
    header_bytes += b" " * (-len(header_bytes) % 8)
    path.write_bytes(struct.pack("<Q", len(header_bytes)) + header_bytes + b"".join(blobs))
    return path


def gpt2_tensors(dtype: str = "float32") -> dict[str, np.ndarray]:
    """Shapes of a 1-layer GPT-2 with n_embd 8 and vocab 16 (values do not matter here): 16*8 + 128*8 + 8*24 + 24 = 1368 parameters."""
    return {
        "transformer.wte.weight": np.zeros((16, 8), dtype=dtype),
        "transformer.wpe.weight": np.zeros((128, 8), dtype=dtype),
        "transformer.h.0.attn.c_attn.weight": np.zeros((8, 24), dtype=dtype),
        "transformer.h.0.attn.c_attn.bias": np.zeros((24,), dtype=dtype),
    }


GPT2_NUM_PARAMETERS = 16 * 8 + 128 * 8 + 8 * 24 + 24


def write_model_folder(
    folder: Path,
    config: dict | None = None,
    *,
    chat_template: str | None = None,
    sharded: bool = False,
    tokenizer: bool = True,
    weights: bool = True,
) -> Path:
    """A Hugging Face folder that ``mftd.modelinfo.inspect_model_folder`` accepts (unless told to leave parts out)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config if config is not None else GPT2_CONFIG))
    if weights:
        tensors = gpt2_tensors()
        if sharded:
            names = list(tensors)
            half = len(names) // 2
            shards = {"model-00001-of-00002.safetensors": names[:half], "model-00002-of-00002.safetensors": names[half:]}
            weight_map = {}
            for shard, shard_names in shards.items():
                write_safetensors(folder / shard, {name: tensors[name] for name in shard_names})
                weight_map.update({name: shard for name in shard_names})
            (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
        else:
            write_safetensors(folder / "model.safetensors", tensors)
    if tokenizer:
        (folder / "tokenizer.json").write_text(json.dumps({"version": "1.0", "model": {"type": "BPE", "vocab": {}, "merges": []}}))
        tokenizer_config = {"eos_token": "<eos>"}
        if chat_template is not None:
            tokenizer_config["chat_template"] = chat_template
        (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    return folder
