"""Loading model folders (single and sharded), tokenizer fallbacks, and which weights each method trains."""

from __future__ import annotations

import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM

from jobs.errors import JobConfigError, ModelNotUsableError
from jobs.model_setup import (
    add_lora_adapter,
    count_parameters,
    default_lora_targets,
    load_model,
    load_model_config,
    load_tokenizer,
    load_trainable_state,
    trainable_state,
)
from tests.jobs.tiny_models import SUPPORTED_ARCHITECTURES, build_tiny_tokenizer


@pytest.mark.parametrize("architecture", SUPPORTED_ARCHITECTURES)
def test_default_lora_targets_exist_in_every_supported_architecture(tiny_model, architecture):
    model = load_model(tiny_model(architecture))
    assert model.dtype == torch.float32
    lora = add_lora_adapter(model, 4, 8.0, 0.0, default_lora_targets(model.config.model_type))
    total, trainable = count_parameters(lora)
    trained_names = [name for name, parameter in lora.named_parameters() if parameter.requires_grad]
    assert trained_names and all("lora_" in name for name in trained_names)
    assert 0 < trainable < total
    if architecture == "GPT2LMHeadModel":
        assert not any(".mlp." in name for name in trained_names)  # attention only


def test_unknown_family_falls_back_to_all_linear(tiny_model):
    assert default_lora_targets("some_new_model") == "all-linear"
    assert default_lora_targets("qwen2") == ["q_proj", "k_proj", "v_proj", "o_proj"]
    lora = add_lora_adapter(load_model(tiny_model("GPT2LMHeadModel")), 4, 8.0, 0.0, "all-linear")
    assert any(".mlp.c_fc." in name for name, parameter in lora.named_parameters() if parameter.requires_grad)


def test_targets_the_model_lacks_are_a_config_error(tiny_model):
    with pytest.raises(JobConfigError, match="lora_target_modules"):
        add_lora_adapter(load_model(tiny_model()), 4, 8.0, 0.0, ["c_attn"])


def test_lora_init_depends_on_the_seed_alone(tiny_model):
    states = []
    for _ in range(2):
        torch.manual_seed(3)
        states.append(trainable_state(add_lora_adapter(load_model(tiny_model()), 4, 8.0, 0.0, ["q_proj"])))
    assert all(torch.equal(states[0][name], states[1][name]) for name in states[0])


def test_sharded_safetensors_load_like_a_single_file(tmp_path, tiny_model):
    single = load_model(tiny_model())
    single.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert len(list((tmp_path / "sharded").glob("model-*.safetensors"))) > 1
    sharded = load_model(tmp_path / "sharded")
    assert all(torch.equal(parameter, dict(sharded.named_parameters())[name]) for name, parameter in single.named_parameters())


def test_full_trainable_state_counts_tied_weights_once(tiny_model):
    model = load_model(tiny_model())  # Qwen2 tiny ties the embeddings to the output layer
    model.requires_grad_(True)
    state = trainable_state(model)
    assert "lm_head.weight" not in state and "model.embed_tokens.weight" in state
    changed = {name: tensor + 1 for name, tensor in state.items()}
    load_trainable_state(model, changed)
    assert torch.equal(model.lm_head.weight, changed["model.embed_tokens.weight"])
    with pytest.raises(ValueError, match="missing"):
        load_trainable_state(model, {})


def test_missing_or_broken_folders_are_not_usable(tmp_path, tiny_model):
    with pytest.raises(ModelNotUsableError, match="does not exist"):
        load_model_config(tmp_path / "nowhere")
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model(), broken)
    (broken / "model.safetensors").unlink()
    assert load_model_config(broken).model_type == "qwen2"
    with pytest.raises(ModelNotUsableError, match="weights"):
        load_model(broken)
    (broken / "tokenizer.json").unlink()
    with pytest.raises(ModelNotUsableError, match="no tokenizer files"):
        load_tokenizer(broken)


def test_tokenizer_without_pad_token_pads_with_eos(tmp_path, tiny_model):
    folder = tmp_path / "no-pad"
    shutil.copytree(tiny_model("LlamaForCausalLM"), folder)
    tokenizer = build_tiny_tokenizer()
    tokenizer.pad_token = None
    tokenizer.save_pretrained(folder)
    assert load_tokenizer(folder).pad_token_id == load_tokenizer(folder).eos_token_id
    assert AutoModelForCausalLM.from_pretrained(folder) is not None
