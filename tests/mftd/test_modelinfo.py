import json
import struct

import pytest

from mftd.errors import ModelValidationError
from mftd.modelinfo import inspect_model_folder, read_safetensors_header
from tests.api.hf_folders import GPT2_NUM_PARAMETERS, write_model_folder


def test_single_file_gpt2(tmp_path):
    info = inspect_model_folder(write_model_folder(tmp_path / "m"))
    assert info.architecture == "GPT2LMHeadModel"
    assert info.model_type == "gpt2"
    assert info.num_parameters == GPT2_NUM_PARAMETERS
    assert info.dtype == "float32"
    assert info.context_length == 128
    assert info.has_chat_template is False
    assert info.path == str((tmp_path / "m").resolve())


def test_sharded_weights_are_summed(tmp_path):
    info = inspect_model_folder(write_model_folder(tmp_path / "m", sharded=True))
    assert info.num_parameters == GPT2_NUM_PARAMETERS


def test_missing_shard(tmp_path):
    folder = write_model_folder(tmp_path / "m", sharded=True)
    (folder / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(ModelValidationError, match="model-00002-of-00002.safetensors"):
        inspect_model_folder(folder)


@pytest.mark.parametrize("architecture", ["Qwen2ForCausalLM", "LlamaForCausalLM", "Gemma3ForCausalLM"])
def test_other_supported_architectures(tmp_path, architecture):
    config = {"architectures": [architecture], "model_type": "x", "max_position_embeddings": 32768}
    info = inspect_model_folder(write_model_folder(tmp_path / "m", config))
    assert info.architecture == architecture and info.context_length == 32768


def test_context_length_under_text_config(tmp_path):
    config = {"architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text", "text_config": {"max_position_embeddings": 4096}}
    assert inspect_model_folder(write_model_folder(tmp_path / "m", config)).context_length == 4096


def test_no_context_length(tmp_path):
    folder = write_model_folder(tmp_path / "m", {"architectures": ["LlamaForCausalLM"]})
    with pytest.raises(ModelValidationError, match="max_position_embeddings"):
        inspect_model_folder(folder)


def test_chat_template_in_tokenizer_config_or_jinja_file(tmp_path):
    assert inspect_model_folder(write_model_folder(tmp_path / "a", chat_template="{{ messages }}")).has_chat_template
    folder = write_model_folder(tmp_path / "b")
    (folder / "chat_template.jinja").write_text("{{ messages }}")
    assert inspect_model_folder(folder).has_chat_template


def test_unsupported_architecture_lists_the_supported(tmp_path):
    folder = write_model_folder(tmp_path / "m", {"architectures": ["MistralForCausalLM"], "max_position_embeddings": 8})
    with pytest.raises(ModelValidationError) as caught:
        inspect_model_folder(folder)
    message = str(caught.value)
    assert "MistralForCausalLM" in message and "GPT2LMHeadModel, Gemma3ForCausalLM, Qwen2ForCausalLM, LlamaForCausalLM" in message


def test_missing_folder(tmp_path):
    with pytest.raises(ModelValidationError, match="does not exist"):
        inspect_model_folder(tmp_path / "none")


def test_gguf_file_is_explained(tmp_path):
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    with pytest.raises(ModelValidationError, match="GGUF"):
        inspect_model_folder(tmp_path / "model.gguf")


def test_missing_config_lists_what_was_found(tmp_path):
    folder = write_model_folder(tmp_path / "m")
    (folder / "config.json").unlink()
    with pytest.raises(ModelValidationError, match="no config.json.*model.safetensors"):
        inspect_model_folder(folder)


def test_bin_weights_only(tmp_path):
    folder = write_model_folder(tmp_path / "m", weights=False)
    (folder / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(ModelValidationError, match="safe_serialization=True"):
        inspect_model_folder(folder)


def test_missing_tokenizer(tmp_path):
    folder = write_model_folder(tmp_path / "m", tokenizer=False)
    with pytest.raises(ModelValidationError, match="no tokenizer.*tokenizer.json"):
        inspect_model_folder(folder)


def test_corrupt_safetensors_header(tmp_path):
    folder = write_model_folder(tmp_path / "m")
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", 10**12) + b"{}")
    with pytest.raises(ModelValidationError, match="not a valid safetensors file"):
        inspect_model_folder(folder)
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", 4) + b"{oops")
    with pytest.raises(ModelValidationError, match="not JSON"):
        read_safetensors_header(folder / "model.safetensors")


def test_safetensors_package_agrees(tmp_path):
    numpy = pytest.importorskip("numpy")
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    folder = write_model_folder(tmp_path / "m")
    tensors = {"a": numpy.zeros((3, 5), dtype=numpy.float16), "b": numpy.zeros((7,), dtype=numpy.float16)}
    safetensors_numpy.save_file(tensors, str(folder / "model.safetensors"))
    info = inspect_model_folder(folder)
    assert info.num_parameters == 22 and info.dtype == "float16"
    assert json.loads(json.dumps(read_safetensors_header(folder / "model.safetensors")))["a"]["shape"] == [3, 5]
