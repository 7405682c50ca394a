"""Load a model whose weights stay in its safetensors files: tensors are views onto a memory map, not copies.

An adapter run never changes the base weights, so they need not live in the process's own memory:
mapped from the file, they are page cache the kernel can drop and read back at will, and the load
has no peak of its own (``from_pretrained`` copies every weight, and for a bfloat16 base from a
float32 folder it holds the float32 load first). The map is copy-on-write, so a write (merging an
adapter into the base, say) copies only the page it touches and never reaches the file.

When the wanted dtype is not the file's, a converted copy is written once next to the weights
(``model.bfloat16.safetensors``) and mapped instead; it remembers which files it was made from, so
replaced weights make it stale and it is written again.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, GenerationConfig, PreTrainedModel

from jobs.errors import ModelNotUsableError
from jobs.model_setup import load_model_config
from mftd.errors import ModelValidationError
from mftd.modelinfo import SAFETENSORS_DTYPE_NAMES, converted_weights_filename, read_safetensors_header, safetensors_files

METADATA_KEY = "__metadata__"
SOURCES_KEY = "mftd_converted_from"
TORCH_DTYPES = {name: getattr(torch, torch_name) for name, torch_name in SAFETENSORS_DTYPE_NAMES.items()}
SAFETENSORS_NAMES = {dtype: name for name, dtype in TORCH_DTYPES.items()}
HEADER_ALIGNMENT = 8


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor's bytes are: its file, dtype, shape and byte range within the file's data section."""

    name: str
    file: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int
    end: int
    data_offset: int  # where the data section starts: 8 + header length


def load_mapped_model(model_path: Path, dtype: torch.dtype) -> PreTrainedModel:
    """The causal LM in ``model_path`` in ``dtype``, with every weight a view onto a copy-on-write map of its safetensors file.

    Equal to ``AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)`` in every parameter
    and buffer; only where the bytes live differs. Meant for frozen weights (adapter runs).

    Raises:
        ModelNotUsableError: no safetensors weights, tensor names that do not fit the config, or a
            folder where the converted copy cannot be written.
    """
    config = load_model_config(model_path)
    entries = _weight_entries(Path(model_path), dtype)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    state = _map_tensors(entries)
    result = model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()
    _check_all_weights_loaded(model, result.unexpected_keys, model_path)
    _materialize_non_persistent_buffers(model)
    _load_generation_config(model, model_path)
    return model.eval()


def _weight_entries(folder: Path, dtype: torch.dtype) -> list[TensorEntry]:
    try:
        files = safetensors_files(folder)
        entries = [entry for file in files for entry in _file_entries(file)]
    except ModelValidationError as error:
        raise ModelNotUsableError(str(error)) from error
    if all(entry.dtype == dtype or not entry.dtype.is_floating_point for entry in entries):
        return entries
    converted = folder / converted_weights_filename(str(dtype).removeprefix("torch."))
    sources = _source_stamps(files)
    if not _is_current_conversion(converted, sources):
        write_converted_copy(entries, dtype, converted, sources)
    return _file_entries(converted)


def _file_entries(file: Path) -> list[TensorEntry]:
    header = read_safetensors_header(file)
    data_offset = 8 + _header_length(file)
    entries = []
    for name, entry in header.items():
        if name == METADATA_KEY:
            continue
        if entry.get("dtype") not in TORCH_DTYPES:
            raise ModelValidationError(f"{file}: tensor {name} has dtype {entry.get('dtype')!r}, which torch cannot map")
        start, end = entry["data_offsets"]
        entries.append(TensorEntry(name, file, TORCH_DTYPES[entry["dtype"]], tuple(entry["shape"]), start, end, data_offset))
    return sorted(entries, key=lambda entry: entry.start)


def _header_length(file: Path) -> int:
    with open(file, "rb") as handle:
        return struct.unpack("<Q", handle.read(8))[0]


def _source_stamps(files: list[Path]) -> list[list]:
    """Name, size and modification time of each source file: a converted copy made from other bytes is stale."""
    return [[file.name, file.stat().st_size, file.stat().st_mtime_ns] for file in files]


def _is_current_conversion(converted: Path, sources: list[list]) -> bool:
    if not converted.is_file():
        return False
    try:
        metadata = read_safetensors_header(converted).get(METADATA_KEY) or {}
        return json.loads(metadata.get(SOURCES_KEY, "null")) == sources
    except (ModelValidationError, ValueError, AttributeError):
        return False  # a damaged copy is written again


def write_converted_copy(entries: list[TensorEntry], dtype: torch.dtype, target: Path, sources: list[list]) -> None:
    """Write ``entries`` as one safetensors file with floating tensors in ``dtype``, one tensor in memory at a time.

    Written under a temporary name and renamed, so a crash leaves no half file that looks complete.

    Raises:
        ModelNotUsableError: the folder is not writable or the disk is full.
    """
    header, layout = _converted_header(entries, dtype, sources)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as out:
            out.write(struct.pack("<Q", len(header)) + header)
            for entry, wanted in layout:
                out.write(_read_tensor(entry).to(wanted).contiguous().view(torch.uint8).numpy().tobytes())
            out.flush()
            os.fsync(out.fileno())
        temporary.replace(target)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise ModelNotUsableError(
            f"cannot write the {dtype} copy of the weights to {target} ({error}); free some storage or make the model folder writable, "
            "or use base_dtype float32"
        ) from error


def _converted_header(entries: list[TensorEntry], dtype: torch.dtype, sources: list[list]) -> tuple[bytes, list[tuple[TensorEntry, torch.dtype]]]:
    header: dict = {METADATA_KEY: {"format": "pt", SOURCES_KEY: json.dumps(sources)}}
    layout = []
    offset = 0
    for entry in entries:
        wanted = dtype if entry.dtype.is_floating_point else entry.dtype
        size = _numel(entry.shape) * torch.empty(0, dtype=wanted).element_size()
        header[entry.name] = {"dtype": SAFETENSORS_NAMES[wanted], "shape": list(entry.shape), "data_offsets": [offset, offset + size]}
        layout.append((entry, wanted))
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    # Padded so that the data section, and with it every tensor of an aligned dtype, starts aligned.
    encoded += b" " * (-(8 + len(encoded)) % HEADER_ALIGNMENT)
    return encoded, layout


def _numel(shape: tuple[int, ...]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count


def _read_tensor(entry: TensorEntry) -> torch.Tensor:
    """One tensor read with ``pread`` (not mapped), so converting leaves none of the source resident in this process."""
    size = entry.end - entry.start
    with open(entry.file, "rb") as handle:
        data = bytearray(os.pread(handle.fileno(), size, entry.data_offset + entry.start))
    if len(data) != size:
        raise ModelNotUsableError(f"{entry.file} ends inside tensor {entry.name}; the file is truncated, download it again")
    if size == 0:
        return torch.empty(entry.shape, dtype=entry.dtype)
    return torch.frombuffer(data, dtype=entry.dtype).reshape(entry.shape)


def _map_tensors(entries: list[TensorEntry]) -> dict[str, torch.Tensor]:
    """A tensor per entry, each a view onto its file's copy-on-write map (one map per file)."""
    maps: dict[Path, mmap.mmap] = {}
    tensors = {}
    for entry in entries:
        if entry.file not in maps:
            with open(entry.file, "rb") as handle:
                maps[entry.file] = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_COPY)
        if entry.end == entry.start:
            tensors[entry.name] = torch.empty(entry.shape, dtype=entry.dtype)
            continue
        count = _numel(entry.shape)
        # The tensor keeps the map alive; the map keeps its own handle on the file.
        tensors[entry.name] = torch.frombuffer(
            maps[entry.file], dtype=entry.dtype, count=count, offset=entry.data_offset + entry.start
        ).view(entry.shape)
    return tensors


def _check_all_weights_loaded(model: PreTrainedModel, unexpected: list[str], model_path: Path) -> None:
    missing = [name for name, tensor in model.state_dict().items() if tensor.is_meta]
    if missing or unexpected:
        raise ModelNotUsableError(
            f"the weights in {model_path} do not fit its config.json: missing {missing[:5]}, unexpected {unexpected[:5]}; "
            "check that the weights are complete and were saved with save_pretrained"
        )


def _materialize_non_persistent_buffers(model: PreTrainedModel) -> None:
    """Compute the buffers no file holds (rotary inv_freq, embedding scales) the way ``from_pretrained`` does.

    transformers recomputes them in ``initialize_weights``; every loaded tensor is marked as
    initialized first, so that call leaves the mapped weights alone and touches only the buffers.
    """
    for tensor in model.state_dict(keep_vars=True).values():  # the parameters themselves, not detached aliases
        tensor._is_hf_initialized = True
    for name, buffer in list(model.named_non_persistent_buffers()):
        owner_name, _, buffer_name = name.rpartition(".")
        owner = model.get_submodule(owner_name)
        owner.register_buffer(buffer_name, torch.empty_like(buffer, device="cpu"), persistent=False)
    for module in model.modules():
        module._is_hf_initialized = False
    model.initialize_weights()
    still_meta = [name for name, buffer in model.named_buffers() if buffer.is_meta]
    if still_meta:
        raise ModelNotUsableError(f"buffers {still_meta[:5]} of this {model.config.model_type} model could not be computed; use method full")


def _load_generation_config(model: PreTrainedModel, model_path: Path) -> None:
    if (Path(model_path) / "generation_config.json").is_file():
        try:
            model.generation_config = GenerationConfig.from_pretrained(model_path)
        except (OSError, ValueError):
            pass  # from_pretrained also keeps the config's defaults when this file is unusable
