"""The chunked loss gives the plain loss and its gradients, for LoRA and full fine-tuning, tied or not, soft-capped or not."""

from __future__ import annotations

import pytest
import torch

from jobs.batches import MicroBatch, pad_examples
from jobs.chunked_loss import chunked_summed_token_loss, is_chunkable
from jobs.data import IGNORE_INDEX, TokenizedExample
from jobs.model_setup import add_lora_adapter, load_model
from jobs.training import plain_summed_token_loss, summed_token_loss
from jobs.training_state import seed_everything


def a_batch() -> MicroBatch:
    generator = torch.Generator().manual_seed(0)
    examples = []
    for length, prompt in ((23, 5), (17, 0), (9, 8)):
        ids = torch.randint(10, 200, (length,), generator=generator).tolist()
        examples.append(TokenizedExample(ids, [IGNORE_INDEX] * prompt + ids[prompt:]))
    return MicroBatch(*pad_examples(examples, 0), next_epoch=0, next_batch_in_epoch=0)


def loss_and_gradients(model, loss_function, batch):
    model.zero_grad(set_to_none=True)
    loss = loss_function(model, batch)
    (loss / batch.num_loss_tokens).backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}


def prepared(model_path, method, dtype=torch.float32, lm_head_lora=False):
    model = load_model(model_path, dtype)
    seed_everything(0)
    if method == "full":
        return model.requires_grad_(True)
    targets = ["c_attn"] if model.config.model_type == "gpt2" else ["q_proj", "v_proj"]
    model = add_lora_adapter(model, 4, 8.0, 0.0, targets + (["lm_head"] if lm_head_lora else []))
    # Non-zero B so that the adapter's A gets a gradient too.
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.1)
    return model


def assert_same(model, batch, tolerance=1e-5):
    assert is_chunkable(model)
    plain_loss, plain_grads = loss_and_gradients(model, plain_summed_token_loss, batch)
    for chunk_elements in (1, 3 * 512, 10**9):  # one position per chunk, a few, all at once
        chunked = lambda m, b: chunked_summed_token_loss(m, b.input_ids, b.attention_mask, b.labels, chunk_elements)  # noqa: E731
        loss, grads = loss_and_gradients(model, chunked, batch)
        torch.testing.assert_close(loss, plain_loss, rtol=tolerance, atol=tolerance)
        assert grads.keys() == plain_grads.keys()
        for name in grads:
            torch.testing.assert_close(grads[name], plain_grads[name], rtol=tolerance * 10, atol=tolerance, msg=name)


@pytest.mark.parametrize("architecture", ["Qwen2ForCausalLM", "GPT2LMHeadModel", "Gemma3ForCausalLM", "LlamaForCausalLM"])
@pytest.mark.parametrize("method", ["lora", "full"])
def test_chunked_loss_matches_the_plain_loss_and_gradients(tiny_model, architecture, method):
    model = prepared(tiny_model(architecture), method)
    if architecture == "GPT2LMHeadModel":
        model.eval()  # GPT-2's dropout would make two forward passes differ
    assert_same(model, a_batch())


def test_soft_capped_logits(tiny_model):
    model = prepared(tiny_model("Gemma3ForCausalLM"), "full")
    model.config.final_logit_softcapping = 3.0
    assert_same(model, a_batch())


def test_lora_on_the_output_layer_goes_through_checkpointed_chunks(tiny_model):
    model = prepared(tiny_model("LlamaForCausalLM"), "lora", lm_head_lora=True)
    assert any("lm_head.lora_A" in name for name, _ in model.named_parameters())
    assert_same(model, a_batch())


def test_bfloat16_base_stays_close(tiny_model):
    model = prepared(tiny_model("Qwen2ForCausalLM"), "lora", dtype=torch.bfloat16)
    batch = a_batch()
    plain, chunked = plain_summed_token_loss(model, batch), summed_token_loss(model, batch)
    assert abs(plain.item() - chunked.item()) / plain.item() < 1e-2


def test_no_gradient_pass_needs_no_graph(tiny_model):
    model = prepared(tiny_model("Qwen2ForCausalLM"), "lora")
    batch = a_batch()
    with torch.no_grad():
        loss = summed_token_loss(model, batch)
    assert not loss.requires_grad
    torch.testing.assert_close(loss, plain_summed_token_loss(model, batch).detach())


def test_positions_without_loss_never_reach_the_output_layer(tiny_model):
    """Prompt tokens teach nothing: the vocabulary projection runs only where a label is, forward and backward."""
    from torch.utils.flop_counter import FlopCounterMode

    model = prepared(tiny_model("Qwen2ForCausalLM"), "full")
    vocab_size, hidden_size = model.config.vocab_size, model.config.hidden_size
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(10, 200, (64,), generator=generator).tolist()

    def flops(prompt_length: int) -> int:
        batch = MicroBatch(*pad_examples([TokenizedExample(ids, [IGNORE_INDEX] * prompt_length + ids[prompt_length:])], 0), 0, 0)
        with FlopCounterMode(display=False) as counter:
            summed_token_loss(model, batch).backward()
        model.zero_grad(set_to_none=True)
        return counter.get_total_flops()

    # 63, 48 and 32 positions carry loss; the decoder's work is the same for all three.
    all_positions, fewer, fewest = flops(0), flops(16), flops(32)
    per_position = (all_positions - fewer) / 15
    assert per_position == (fewer - fewest) / 16, "the output layer's work follows the positions with loss, and nothing else does"
    assert per_position == 8 * vocab_size * hidden_size  # logits, their gradient's product, and both again for the weight's gradient
