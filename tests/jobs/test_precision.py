"""Whether bfloat16 matmuls are fast: this machine's CPU and torch build, and a CPU without the instructions."""

from __future__ import annotations

import json

import pytest
import torch

from jobs.batches import micro_batches
from jobs.data import TokenizedExample
from jobs.model_setup import add_lora_adapter, load_model
from jobs.precision import bfloat16_matmul_problem, bfloat16_matmul_supported
from jobs.stop import StopSignal
from jobs.training import train
from jobs.training_state import TrainingProgress
from jobs.worker import run_worker
from mftd.cpu import has_fast_bfloat16
from mftd.protocol import EXIT_SUCCEEDED, RESOLVED_CONFIG_FILENAME
from tests.jobs.helpers import create_job, final_weights, text_records, write_jsonl

# Skylake-SP: AVX-512 without its BF16 extension.
CPUINFO_WITHOUT_BF16 = """\
processor	: 0
model name	: Intel(R) Xeon(R) Gold 6148 CPU @ 2.40GHz
flags		: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr sse sse2 ht syscall nx lm avx f16c avx2 fma avx512f avx512dq avx512cd avx512bw avx512vl
"""


def test_this_machine_agrees_with_its_cpu_flags():
    # torch's wheels for x86 and aarch64 Linux ship oneDNN, so the CPU's instructions decide.
    assert bfloat16_matmul_supported() == has_fast_bfloat16()


def test_a_cpu_without_bfloat16_instructions_falls_back_with_a_reason(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(CPUINFO_WITHOUT_BF16)
    assert not bfloat16_matmul_supported(cpuinfo)
    assert "no bfloat16 matrix instructions" in bfloat16_matmul_problem(cpuinfo)


def test_full_fine_tuning_runs_its_products_in_bfloat16_when_the_cpu_is_fast_and_keeps_float32_weights(tmp_path, settings, engine, tiny_model):
    dataset = write_jsonl(tmp_path / "text.jsonl", text_records(8))
    job_id = create_job(engine, tiny_model(), dataset, method="full", max_steps=2, batch_size=2, grad_accum_steps=1)
    assert run_worker(job_id, settings, StopSignal()) == EXIT_SUCCEEDED
    resolved = json.loads((settings.job_dir(job_id) / RESOLVED_CONFIG_FILENAME).read_text())
    assert resolved["compute_dtype"] == ("bfloat16" if bfloat16_matmul_supported() else "float32")
    assert {tensor.dtype for tensor in final_weights(settings, job_id, "full").values()} == {torch.float32}


def losses_of_three_steps(model, learning_rate: float, dtype) -> list[float]:
    """Train ``model``'s trainable weights 3 steps of 2 x 2 short examples with ``train(autocast_dtype=dtype)``; the step losses."""
    examples = [TokenizedExample(list(range(10 + i, 40 + i)), list(range(10 + i, 40 + i))) for i in range(4)]
    optimizer = torch.optim.AdamW([parameter for parameter in model.parameters() if parameter.requires_grad], lr=learning_rate)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    reports = []
    train(model, optimizer, scheduler, micro_batches(examples, 2, 0, 0), TrainingProgress(), 3, 2, 1.0, lambda: False,
          lambda report, progress, rng: reports.append(report.loss), autocast_dtype=dtype)
    return reports


def test_autocast_training_multiplies_in_bfloat16_and_stays_close_to_float32(tiny_model):
    losses, seen = {}, set()
    for dtype in (None, torch.bfloat16):
        model = load_model(tiny_model("LlamaForCausalLM"), torch.float32).requires_grad_(True)
        hook = model.model.layers[0].mlp.down_proj.register_forward_hook(lambda module, inputs, output: seen.add(output.dtype))
        losses[dtype] = losses_of_three_steps(model, 1e-3, dtype)
        hook.remove()
        assert all(parameter.dtype == torch.float32 for parameter in model.parameters())
    assert seen == {torch.float32, torch.bfloat16}
    assert losses[torch.bfloat16] == pytest.approx(losses[None], rel=2e-2)
    assert losses[torch.bfloat16] != losses[None]


def test_adapters_on_a_bfloat16_base_multiply_in_bfloat16_without_peft_s_float32_copies(tiny_model):
    """Under ``computing_in`` an adapter takes the base's bfloat16 activations as they are; its weights stay float32 and learn."""
    losses, inputs_seen = {}, {}
    for dtype in (None, torch.bfloat16):
        torch.manual_seed(0)
        model = add_lora_adapter(load_model(tiny_model("LlamaForCausalLM"), torch.bfloat16), 4, 8.0, 0.0, ["q_proj", "v_proj"])
        adapter = model.base_model.model.model.layers[0].self_attn.q_proj.lora_A["default"]
        seen = inputs_seen.setdefault(dtype, set())
        hook = adapter.register_forward_hook(lambda module, inputs, output: seen.add((inputs[0].dtype, output.dtype)))
        before = {name: parameter.detach().clone() for name, parameter in model.named_parameters() if parameter.requires_grad}
        losses[dtype] = losses_of_three_steps(model, 1e-2, dtype)
        hook.remove()
        trained = {name: parameter for name, parameter in model.named_parameters() if parameter.requires_grad}
        assert {parameter.dtype for parameter in trained.values()} == {torch.float32}
        assert all(not torch.equal(before[name], parameter) for name, parameter in trained.items() if "lora_B" in name), "B learns"
    assert inputs_seen[None] == {(torch.float32, torch.float32)}, "PEFT alone copies the input to float32"
    assert inputs_seen[torch.bfloat16] == {(torch.bfloat16, torch.bfloat16)}
    assert losses[torch.bfloat16] == pytest.approx(losses[None], rel=2e-2)
