"""Packing changes nothing: each example's loss in a packed row equals its loss alone, and every micro-batch holds the examples it holds unpacked."""

from __future__ import annotations

from itertools import islice

import pytest
import torch
import torch.nn.functional as F

from jobs.attention import IMPLEMENTATION
from jobs.batches import MicroBatch, epoch_layout_fill, micro_batches, pack_micro_batch, packed_rows, pad_examples
from jobs.chunked_loss import chunked_summed_token_loss
from jobs.data import IGNORE_INDEX, TokenizedExample
from jobs.model_setup import add_lora_adapter, load_model
from jobs.training import plain_summed_token_loss, summed_token_loss
from jobs.training_state import seed_everything

CAPACITY = 100


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


@pytest.mark.parametrize("attention", ["sdpa", "eager", IMPLEMENTATION])
@pytest.mark.parametrize("architecture", ["Qwen2ForCausalLM", "GPT2LMHeadModel", "Gemma3ForCausalLM", "LlamaForCausalLM"])
def test_each_example_in_a_packed_row_has_its_loss_alone(tiny_model, architecture, attention):
    model = prepared(tiny_model(architecture), "full")
    model.config._attn_implementation = attention
    examples = some_examples()
    rows = pack_micro_batch([len(example.input_ids) for example in examples], CAPACITY)
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
    rows = pack_micro_batch([len(example.input_ids) for example in examples], CAPACITY)
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
    rows = pack_micro_batch([len(example.input_ids) for example in examples], CAPACITY)
    batch = packed_batch(examples, rows)
    with torch.no_grad():
        confined = chunked_summed_token_loss(model, batch.input_ids, batch.attention_mask, batch.labels, position_ids=batch.position_ids)
        leaking = chunked_summed_token_loss(model, batch.input_ids, batch.attention_mask, batch.labels)
    assert abs(confined.item() - leaking.item()) > 1e-3


def test_a_micro_batch_packs_into_the_fewest_balanced_rows():
    lengths = [60, 50, 40, 30, 20, 14, 10, 10, 4, 64, 70]  # 372 tokens: 4 rows of 100 hold them
    rows = pack_micro_batch(lengths, CAPACITY)
    assert sorted(index for row in rows for index in row) == list(range(len(lengths))), "every example once, none split"
    loads = sorted(sum(lengths[i] for i in row) for row in rows)
    assert len(rows) == 4 and loads[-1] <= CAPACITY
    assert loads[-1] - loads[0] <= 10, f"rows of about equal length, so that little of the longest row's width is padding: {loads}"
    assert rows == pack_micro_batch(lengths, CAPACITY), "deterministic"
    assert pack_micro_batch([200, 100, 80, 30], 256) == [[0], [1, 2, 3]]


@pytest.mark.parametrize("lengths", [[100, 100, 100], [256, 256, 256, 256], [246, 128, 224, 137], [7]])
def test_a_micro_batch_keeps_a_row_per_example_when_rows_would_not_be_smaller(lengths):
    """Equal lengths have no padding to save; 3 x 100 in rows of 256 would be 2 rows of 200, more than padded;
    246, 224, 137 and 128 fit no 3 rows of 256. The stream still lays them out as packed rows, one example each."""
    assert pack_micro_batch(lengths, 256) is None
    examples = [TokenizedExample(list(range(1, length + 1)), list(range(1, length + 1))) for length in lengths]
    [batch] = islice(micro_batches(examples, len(lengths), seed=0, pad_token_id=0, pack_capacity=256), 1)
    padded_ids, _mask, _labels = pad_examples(examples, pad_token_id=0)
    assert batch.input_ids.shape == padded_ids.shape
    assert sorted(batch.input_ids.tolist()) == sorted(padded_ids.tolist())
    assert batch.position_ids is not None, "packed form: positions given, no padding mask"
    for row, mask in zip(batch.position_ids.tolist(), batch.attention_mask.tolist()):
        real = sum(mask)
        assert row == list(range(real)) + list(range(len(row) - real)), "the padding tail is a segment of its own"


def test_a_packed_row_restarts_positions_and_masks_each_first_token():
    examples = [TokenizedExample([5, 6, 7], [5, 6, 7]), TokenizedExample([8, 9], [IGNORE_INDEX, 9])]
    input_ids, attention_mask, labels, position_ids = packed_rows(examples, [[0, 1], [1]], pad_token_id=0)
    assert input_ids.tolist() == [[5, 6, 7, 8, 9], [8, 9, 0, 0, 0]]
    assert position_ids.tolist() == [[0, 1, 2, 0, 1], [0, 1, 0, 1, 2]]
    assert attention_mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]
    assert labels.tolist() == [[IGNORE_INDEX, 6, 7, IGNORE_INDEX, 9], [IGNORE_INDEX, 9, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX]]


def test_packing_keeps_every_micro_batch_s_examples_and_resumes_at_any_position():
    examples = some_examples(count=30)
    packed = list(islice(micro_batches(examples, 4, seed=3, pad_token_id=0, pack_capacity=CAPACITY), 20))
    padded = list(islice(micro_batches(examples, 4, seed=3, pad_token_id=0), 20))
    assert all(batch.position_ids is not None for batch in packed), "a packed stream lays out every micro-batch as packed rows"
    assert sum(batch.input_ids.shape[0] < 4 for batch in packed) >= 10, "most micro-batches of these lengths pack into fewer rows"
    for a, b in zip(packed, padded):
        assert sorted(a.input_ids[a.attention_mask.bool()].tolist()) == sorted(b.input_ids[b.attention_mask.bool()].tolist())
        assert (a.num_loss_tokens, a.next_epoch, a.next_batch_in_epoch) == (b.num_loss_tokens, b.next_epoch, b.next_batch_in_epoch)
    assert sum(a.input_ids.numel() for a in packed) < 0.85 * sum(b.input_ids.numel() for b in padded)
    for cut in (1, 8, 9):  # 8 micro-batches per epoch: inside the first, at its end, inside the second
        position = packed[cut - 1]
        resumed = micro_batches(examples, 4, 3, 0, position.next_epoch, position.next_batch_in_epoch, pack_capacity=CAPACITY)
        for expected, batch in zip(packed[cut:], islice(resumed, 4)):
            assert torch.equal(expected.input_ids, batch.input_ids)
            assert (expected.position_ids is None) == (batch.position_ids is None)
            assert expected.position_ids is None or torch.equal(expected.position_ids, batch.position_ids)


def test_the_epoch_fill_counts_what_the_stream_lays_out():
    examples = some_examples(count=30)
    lengths = [len(example.input_ids) for example in examples]
    for capacity in (CAPACITY, None):
        batches = list(islice(micro_batches(examples, 4, seed=3, pad_token_id=0, pack_capacity=capacity), 8))
        laid_out = sum(batch.input_ids.numel() for batch in batches)
        assert epoch_layout_fill(lengths, 4, 3, 0, capacity) == pytest.approx(sum(lengths) / laid_out)
