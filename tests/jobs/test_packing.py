"""Packing changes nothing: each example's loss in a packed row equals its loss alone, and the stream stays deterministic and resumable."""

from __future__ import annotations

from itertools import islice

import pytest
import torch
import torch.nn.functional as F

from jobs.batches import MicroBatch, micro_batches, pack_examples, packed_rows, pad_examples
from jobs.chunked_loss import chunked_summed_token_loss
from jobs.data import IGNORE_INDEX, TokenizedExample
from jobs.model_setup import add_lora_adapter, load_model
from jobs.training import plain_summed_token_loss, summed_token_loss
from jobs.training_state import seed_everything

CAPACITY = 64


def some_examples(count: int = 9, seed: int = 0) -> list[TokenizedExample]:
    """Examples of 5 to 40 tokens; some with a prompt that carries no loss (as completion and chat data have)."""
    generator = torch.Generator().manual_seed(seed)
    examples = []
    for number in range(count):
        length = int(torch.randint(5, 41, (1,), generator=generator))
        prompt = int(torch.randint(0, length - 2, (1,), generator=generator)) if number % 2 else 0
        ids = torch.randint(10, 200, (length,), generator=generator).tolist()
        examples.append(TokenizedExample(ids, [IGNORE_INDEX] * prompt + ids[prompt:]))
    return examples


def packed_batch(examples: list[TokenizedExample], rows: list[list[int]]) -> MicroBatch:
    input_ids, attention_mask, labels, position_ids = packed_rows(examples, rows, pad_token_id=0)
    return MicroBatch(input_ids, attention_mask, labels, 0, 0, position_ids=position_ids)


def alone(example: TokenizedExample) -> MicroBatch:
    return MicroBatch(*pad_examples([example], pad_token_id=0), next_epoch=0, next_batch_in_epoch=0)


def per_example_losses(model, examples, rows) -> dict[int, torch.Tensor]:
    """Each example's summed loss, read off the token losses of the packed batch."""
    batch = packed_batch(examples, rows)
    logits = model(input_ids=batch.input_ids, **batch.model_inputs(), use_cache=False).logits.float()
    token_losses = F.cross_entropy(logits[:, :-1].transpose(1, 2), batch.labels[:, 1:], ignore_index=IGNORE_INDEX, reduction="none")
    losses = {}
    for row_number, row in enumerate(rows):
        start = 0
        for index in row:
            end = start + len(examples[index].input_ids)
            # Token t predicts token t + 1: the example's predictions sit at positions start .. end - 2.
            losses[index] = token_losses[row_number, start : end - 1].sum()
            start = end
    return losses


def prepared(model_path, method):
    model = load_model(model_path, torch.float32)
    seed_everything(0)
    if method == "full":
        return model.requires_grad_(True).eval()  # eval: GPT-2's dropout would make passes differ
    targets = ["c_attn"] if model.config.model_type == "gpt2" else ["q_proj", "v_proj"]
    model = add_lora_adapter(model, 4, 8.0, 0.0, targets)
    with torch.no_grad():  # non-zero B, so that the adapter changes the outputs
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.1)
    return model.eval()


def gradients(model, loss):
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {name: parameter.grad.clone() for name, parameter in model.named_parameters() if parameter.requires_grad}


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("architecture", ["Qwen2ForCausalLM", "GPT2LMHeadModel", "Gemma3ForCausalLM", "LlamaForCausalLM"])
def test_each_example_in_a_packed_row_has_its_loss_alone(tiny_model, architecture, attention):
    model = prepared(tiny_model(architecture), "full")
    model.config._attn_implementation = attention
    examples = some_examples()
    rows = pack_examples([len(example.input_ids) for example in examples], CAPACITY)
    assert any(len(row) >= 3 for row in rows), "the test needs rows holding several examples"
    with torch.no_grad():
        packed = per_example_losses(model, examples, rows)
        for index, example in enumerate(examples):
            torch.testing.assert_close(packed[index], plain_summed_token_loss(model, alone(example)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("architecture", ["Qwen2ForCausalLM", "GPT2LMHeadModel", "Gemma3ForCausalLM", "LlamaForCausalLM"])
@pytest.mark.parametrize("method", ["lora", "full"])
def test_the_training_loss_and_gradients_of_a_packed_batch_are_those_of_its_examples_alone(tiny_model, architecture, method):
    model = prepared(tiny_model(architecture), method)
    examples = some_examples(seed=1)
    rows = pack_examples([len(example.input_ids) for example in examples], CAPACITY)
    batch = packed_batch(examples, rows)
    assert batch.num_loss_tokens == sum(example.num_loss_tokens for example in examples)
    assert batch.num_tokens == sum(len(example.input_ids) for example in examples)

    packed_loss = summed_token_loss(model, batch)  # the chunked loss, as training runs it
    packed_gradients = gradients(model, packed_loss)
    alone_loss = torch.zeros(())
    alone_gradients: dict[str, torch.Tensor] = {}
    for example in examples:
        loss = summed_token_loss(model, alone(example))
        alone_loss += loss.detach()
        for name, gradient in gradients(model, loss).items():
            alone_gradients[name] = alone_gradients.get(name, 0) + gradient
    torch.testing.assert_close(packed_loss.detach(), alone_loss, rtol=1e-5, atol=1e-5)
    for name, gradient in packed_gradients.items():
        torch.testing.assert_close(gradient, alone_gradients[name], rtol=1e-4, atol=1e-5, msg=name)


def test_without_positions_the_examples_would_see_each_other(tiny_model):
    """The check above can fail: the same packed row with an ordinary causal mask gives other losses."""
    model = prepared(tiny_model("Qwen2ForCausalLM"), "full")
    examples = some_examples()
    rows = pack_examples([len(example.input_ids) for example in examples], CAPACITY)
    batch = packed_batch(examples, rows)
    with torch.no_grad():
        confined = chunked_summed_token_loss(model, batch.input_ids, batch.attention_mask, batch.labels, position_ids=batch.position_ids)
        leaking = chunked_summed_token_loss(model, batch.input_ids, batch.attention_mask, batch.labels)
    assert abs(confined.item() - leaking.item()) > 1e-3


def test_best_fit_fills_rows_without_splitting_examples():
    lengths = [60, 50, 40, 30, 20, 14, 10, 10, 4, 64, 70]
    rows = pack_examples(lengths, CAPACITY)
    assert sorted(index for row in rows for index in row) == list(range(len(lengths)))
    for row in rows:
        assert sum(lengths[i] for i in row) <= CAPACITY or len(row) == 1
    # The 70- and 64-token examples take a row each; the other 238 tokens fit the fewest rows possible, 4.
    assert len(rows) == 6
    assert rows == pack_examples(lengths, CAPACITY), "packing is deterministic"


def test_a_packed_row_restarts_positions_and_masks_each_first_token():
    examples = [TokenizedExample([5, 6, 7], [5, 6, 7]), TokenizedExample([8, 9], [IGNORE_INDEX, 9])]
    input_ids, attention_mask, labels, position_ids = packed_rows(examples, [[0, 1], [1]], pad_token_id=0)
    assert input_ids.tolist() == [[5, 6, 7, 8, 9], [8, 9, 0, 0, 0]]
    assert position_ids.tolist() == [[0, 1, 2, 0, 1], [0, 1, 0, 1, 2]]
    assert attention_mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]
    assert labels.tolist() == [[IGNORE_INDEX, 6, 7, IGNORE_INDEX, 9], [IGNORE_INDEX, 9, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX]]


def test_the_packed_stream_is_deterministic_and_resumes_at_any_position():
    examples = some_examples(count=30)
    rows = pack_examples([len(example.input_ids) for example in examples], CAPACITY)
    whole = list(islice(micro_batches(examples, 2, seed=3, pad_token_id=0, rows=rows), 3 * len(rows)))
    again = list(islice(micro_batches(examples, 2, seed=3, pad_token_id=0, rows=rows), 3 * len(rows)))
    assert all(torch.equal(a.input_ids, b.input_ids) for a, b in zip(whole, again))
    per_epoch = (len(rows) + 1) // 2
    epoch_tokens = sum(batch.num_tokens for batch in whole[:per_epoch])
    assert epoch_tokens == sum(len(example.input_ids) for example in examples), "every example once per epoch"
    assert not torch.equal(whole[0].input_ids, whole[per_epoch].input_ids), "each epoch shuffles the rows"
    for cut in (1, per_epoch - 1, per_epoch + 2):
        position = whole[cut - 1]
        resumed = micro_batches(examples, 2, 3, 0, position.next_epoch, position.next_batch_in_epoch, rows=rows)
        for expected, batch in zip(whole[cut:], islice(resumed, 4)):
            assert torch.equal(expected.input_ids, batch.input_ids)
            assert torch.equal(expected.position_ids, batch.position_ids)
