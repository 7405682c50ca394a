"""A memory-mapped base model equals ``from_pretrained``'s, lives in its files, and trains LoRA the same way."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from jobs.errors import ModelNotUsableError
from jobs.mapped_weights import load_mapped_model
from jobs.model_setup import add_lora_adapter, default_lora_targets
from jobs.optimization import build_optimizer
from tests.jobs.tiny_models import SUPPORTED_ARCHITECTURES

TOKENS = torch.tensor([[1, 5, 9, 20, 30, 7, 44, 3], [2, 8, 13, 21, 34, 55, 89, 6]])


def mapped_ranges(file: Path) -> list[tuple[int, int]]:
    """The address ranges of this process that map ``file`` (from /proc/self/maps)."""
    ranges = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5] == str(file.resolve()):
            start, end = (int(address, 16) for address in fields[0].split("-"))
            ranges.append((start, end))
    return ranges


def is_inside(tensor: torch.Tensor, ranges: list[tuple[int, int]]) -> bool:
    first = tensor.data_ptr()
    last = first + tensor.numel() * tensor.element_size()
    return any(start <= first and last <= end for start, end in ranges)


def assert_same_model(expected: torch.nn.Module, actual: torch.nn.Module) -> None:
    for kind in ("named_parameters", "named_buffers"):
        wanted, got = dict(getattr(expected, kind)()), dict(getattr(actual, kind)())
        assert set(wanted) == set(got), kind
        for name, tensor in wanted.items():
            assert got[name].dtype == tensor.dtype and torch.equal(got[name], tensor), name
    with torch.no_grad():
        assert torch.equal(expected(TOKENS).logits, actual(TOKENS).logits)


def copy_of(folder: Path, tmp_path: Path) -> Path:
    """A private copy of a shared tiny model, without a bfloat16 copy an earlier LoRA job may have written into it."""
    return Path(shutil.copytree(folder, tmp_path / folder.name, ignore=shutil.ignore_patterns("model.bfloat16.safetensors")))


@pytest.mark.parametrize("architecture", SUPPORTED_ARCHITECTURES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mapped_model_equals_from_pretrained(tmp_path, tiny_model, architecture, dtype):
    folder = copy_of(tiny_model(architecture), tmp_path)
    mapped = load_mapped_model(folder, dtype)
    assert_same_model(AutoModelForCausalLM.from_pretrained(folder, dtype=dtype), mapped)
    assert not mapped.training
    if mapped.config.tie_word_embeddings:
        assert mapped.get_output_embeddings().weight is mapped.get_input_embeddings().weight


@pytest.mark.parametrize("architecture", SUPPORTED_ARCHITECTURES)
def test_float32_weights_are_views_onto_the_file(tmp_path, tiny_model, architecture):
    folder = copy_of(tiny_model(architecture), tmp_path)
    model = load_mapped_model(folder, torch.float32)
    ranges = mapped_ranges(folder / "model.safetensors")
    assert ranges
    assert all(is_inside(parameter, ranges) for parameter in model.parameters())
    assert not (folder / "model.bfloat16.safetensors").exists()  # no copy when the file's dtype is the one wanted


def test_sharded_checkpoint_maps_every_shard(tmp_path, tiny_model):
    AutoModelForCausalLM.from_pretrained(tiny_model()).save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    shards = sorted((tmp_path / "sharded").glob("model-*.safetensors"))
    assert len(shards) > 1 and (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    shutil.copy(tiny_model() / "config.json", tmp_path / "sharded" / "config.json")
    mapped = load_mapped_model(tmp_path / "sharded", torch.float32)
    assert_same_model(AutoModelForCausalLM.from_pretrained(tmp_path / "sharded"), mapped)
    ranges = [address_range for shard in shards for address_range in mapped_ranges(shard)]
    assert all(is_inside(parameter, ranges) for parameter in mapped.parameters())
    mapped_bf16 = load_mapped_model(tmp_path / "sharded", torch.bfloat16)  # shards convert into one copy
    assert_same_model(AutoModelForCausalLM.from_pretrained(tmp_path / "sharded", dtype=torch.bfloat16), mapped_bf16)


def test_bfloat16_base_maps_a_converted_copy_written_once(tmp_path, tiny_model):
    folder = copy_of(tiny_model("Gemma3ForCausalLM"), tmp_path)
    model = load_mapped_model(folder, torch.bfloat16)
    converted = folder / "model.bfloat16.safetensors"
    assert converted.is_file()
    assert converted.stat().st_size < (folder / "model.safetensors").stat().st_size * 0.6
    assert sorted(path.name for path in folder.iterdir() if "safetensors" in path.name) == ["model.bfloat16.safetensors", "model.safetensors"]
    ranges = mapped_ranges(converted)
    assert all(parameter.dtype == torch.bfloat16 and is_inside(parameter, ranges) for parameter in model.parameters())
    written = converted.stat().st_mtime_ns
    load_mapped_model(folder, torch.bfloat16)
    assert converted.stat().st_mtime_ns == written  # reused, not written again


def test_converted_copy_is_rewritten_when_the_weights_change(tmp_path, tiny_model):
    folder = copy_of(tiny_model(), tmp_path)
    load_mapped_model(folder, torch.bfloat16)
    changed = AutoModelForCausalLM.from_pretrained(folder)
    with torch.no_grad():
        changed.model.norm.weight.fill_(3.0)
    changed.save_pretrained(folder)
    model = load_mapped_model(folder, torch.bfloat16)
    assert torch.all(model.model.norm.weight == 3.0)


def test_failed_conversion_leaves_no_file(tmp_path, tiny_model, monkeypatch):
    folder = copy_of(tiny_model(), tmp_path)

    def disk_full(descriptor):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(ModelNotUsableError, match="free some storage"):
        load_mapped_model(folder, torch.bfloat16)
    assert sorted(path.name for path in folder.iterdir() if "safetensors" in path.name) == ["model.safetensors"]
    assert not any(path.name.endswith(".tmp") for path in folder.iterdir())


def test_weights_that_do_not_fit_the_config_are_not_usable(tmp_path, tiny_model):
    folder = copy_of(tiny_model("LlamaForCausalLM"), tmp_path)
    model = AutoModelForCausalLM.from_pretrained(folder)
    state = {name: tensor for name, tensor in model.state_dict().items() if name != "lm_head.weight"}
    from safetensors.torch import save_file

    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ModelNotUsableError, match="missing .*lm_head.weight"):
        load_mapped_model(folder, torch.float32)


def lora_losses(model: torch.nn.Module, steps: int = 2) -> list[float]:
    """Losses of a few LoRA training steps on ``TOKENS`` (the adapter's init seeded, so both models start the same)."""
    torch.manual_seed(0)
    lora = add_lora_adapter(model, 4, 8.0, 0.0, default_lora_targets(model.config.model_type))
    lora.train()
    optimizer = build_optimizer(lora.named_parameters(), 1e-2, 0.0, (0.9, 0.999), 1e-8)
    losses = []
    for _ in range(steps + 1):
        loss = lora(input_ids=TOKENS, labels=TOKENS).loss
        losses.append(loss.item())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return losses


@pytest.mark.parametrize("architecture", ["Qwen2ForCausalLM", "GPT2LMHeadModel", "Gemma3ForCausalLM"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_lora_trains_the_same_on_the_mapped_model(tmp_path, tiny_model, architecture, dtype):
    folder = copy_of(tiny_model(architecture), tmp_path)
    mapped = load_mapped_model(folder, dtype)
    expected = lora_losses(AutoModelForCausalLM.from_pretrained(folder, dtype=dtype))
    assert lora_losses(mapped) == expected
    assert expected[-1] < expected[0]
    ranges = mapped_ranges(folder / ("model.safetensors" if dtype == torch.float32 else "model.bfloat16.safetensors"))
    base = [parameter for name, parameter in mapped.named_parameters() if "lora_" not in name]
    assert base and all(is_inside(parameter, ranges) for parameter in base)  # training did not copy the base
