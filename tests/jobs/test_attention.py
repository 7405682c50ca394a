"""Attention as matrix products (jobs/attention.py) against transformers' SDPA, on tiny real models."""

from __future__ import annotations

import pytest
import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from jobs.attention import IMPLEMENTATION, matmul_attention, use_matmul_attention
from jobs.batches import MicroBatch, pack_micro_batch, packed_rows, pad_examples
from jobs.precision import computing_in
from jobs.training import summed_token_loss
from tests.jobs.test_packing import CAPACITY, prepared, some_examples

ARCHITECTURES = ["Qwen2ForCausalLM", "GPT2LMHeadModel", "Gemma3ForCausalLM", "LlamaForCausalLM"]


def micro_batches() -> dict[str, MicroBatch]:
    """A padded micro-batch (a padding mask), a packed one (block-diagonal) and one of equal lengths (plain causal, no mask)."""
    examples = some_examples(count=6, seed=3)  # 5 to 40 tokens: past Gemma's sliding window of 16
    rows = pack_micro_batch([len(example.input_ids) for example in examples], CAPACITY)
    input_ids, attention_mask, labels, position_ids = packed_rows(examples, rows, pad_token_id=0)
    equal = [type(example)(example.input_ids[:5], example.labels[:5]) for example in examples[:3]]
    return {
        "padded": MicroBatch(*pad_examples(examples, pad_token_id=0), 0, 0),
        "packed": MicroBatch(input_ids, attention_mask, labels, 0, 0, position_ids=position_ids),
        "causal": MicroBatch(*pad_examples(equal, pad_token_id=0), 0, 0),
    }


def loss_and_gradients(model, batch: MicroBatch, compute_dtype=None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    with computing_in(model, compute_dtype):
        loss = summed_token_loss(model, batch)
    loss.backward()
    return loss.detach(), {name: parameter.grad.clone() for name, parameter in model.named_parameters() if parameter.requires_grad}


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("method", ["lora", "full"])
def test_matmul_attention_trains_as_sdpa_does(tiny_model, architecture, method):
    model = prepared(tiny_model(architecture), method)
    base = model.get_base_model() if method == "lora" else model
    assert base.config._attn_implementation == "sdpa"
    for layout, batch in micro_batches().items():
        base.set_attn_implementation("sdpa")
        sdpa_loss, sdpa_gradients = loss_and_gradients(model, batch)
        assert use_matmul_attention(model) and base.config._attn_implementation == IMPLEMENTATION
        loss, gradients = loss_and_gradients(model, batch)
        torch.testing.assert_close(loss, sdpa_loss, rtol=1e-5, atol=1e-5, msg=layout)
        for name, gradient in gradients.items():
            torch.testing.assert_close(gradient, sdpa_gradients[name], rtol=1e-4, atol=1e-5, msg=f"{layout}: {name}")


def test_under_bfloat16_autocast_full_fine_tuning_stays_close_to_sdpa(tiny_model):
    model = prepared(tiny_model("LlamaForCausalLM"), "full")
    batch = micro_batches()["packed"]
    sdpa_loss, sdpa_gradients = loss_and_gradients(model, batch, torch.bfloat16)
    assert use_matmul_attention(model)
    loss, gradients = loss_and_gradients(model, batch, torch.bfloat16)
    torch.testing.assert_close(loss, sdpa_loss, rtol=2e-2, atol=0)
    for name, gradient in gradients.items():
        assert gradient.dtype == torch.float32 and torch.isfinite(gradient).all(), name
    total = torch.cat([gradient.flatten() for gradient in gradients.values()])
    sdpa_total = torch.cat([sdpa_gradients[name].flatten() for name in gradients])
    assert (total - sdpa_total).norm() / sdpa_total.norm() < 0.05


def test_calls_it_does_not_cover_go_to_sdpa_unchanged():
    class Module(torch.nn.Module):
        num_key_value_groups = 2
        is_causal = True

    generator = torch.Generator().manual_seed(0)
    query = torch.randn(1, 4, 6, 8, generator=generator)
    key, value = torch.randn(1, 2, 6, 8, generator=generator), torch.randn(1, 2, 6, 8, generator=generator)
    module = Module()
    cases = {
        "dropout": dict(query=query, key=key, value=value, dropout=0.5),
        "a query shorter than its keys (generation with a cache)": dict(query=query[:, :, -1:], key=key, value=value, dropout=0.0),
    }
    for case, arguments in cases.items():
        torch.manual_seed(1)
        expected, _ = sdpa_attention_forward(module, attention_mask=None, scaling=0.3, **arguments)
        torch.manual_seed(1)
        got, _ = matmul_attention(module, attention_mask=None, scaling=0.3, **arguments)
        assert torch.equal(got, expected), case
    # A call it covers, computed by its own products, agrees with SDPA's plain causal attention.
    covered, _ = matmul_attention(module, query, key, value, None, scaling=0.3)
    plain, _ = sdpa_attention_forward(module, query, key, value, None, scaling=0.3)
    torch.testing.assert_close(covered, plain, rtol=1e-5, atol=1e-6)


def test_a_model_that_does_not_run_sdpa_keeps_its_attention(tiny_model):
    model = prepared(tiny_model("Qwen2ForCausalLM"), "lora")
    model.get_base_model().set_attn_implementation("eager")
    assert not use_matmul_attention(model)
    assert model.get_base_model().config._attn_implementation == "eager"
