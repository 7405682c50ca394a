"""The Hugging Face side of the throughput benchmark: Trainer + PEFT LoRA as a user would set it up, run in a child process.

Float32, ``per_device_train_batch_size=4``, no gradient accumulation or checkpointing, AdamW
(adamw_torch) with a cosine schedule and clipping at 1.0, dynamic padding to each batch's longest
example (``DataCollatorForSeq2Seq``, labels -100 on padding). Each example is tokenized on its own:
a text record has loss on every token; a chat record is rendered with the tokenizer's chat template
and has loss on the assistant reply only (the tokens that end after the rendered prompt with its
generation prompt). Examples are cut at the sequence length.

Per optimizer step it records the real (attention-mask) and padded token counts of the batch and the
time since the previous step ended (so data loading and logging count, as they do for the user).
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

IGNORE_INDEX = -100


def tokenize_record(record: dict[str, Any], tokenizer: Any, max_length: int) -> dict[str, list[int]]:
    """Token ids, attention mask and labels of one ``{"text"}`` or ``{"messages"}`` record, cut at ``max_length``.

    Raises:
        ValueError: the record has neither key, or the rendered prompt is not a prefix of the rendered conversation.
    """
    if "text" in record:
        input_ids = tokenizer(record["text"], truncation=True, max_length=max_length)["input_ids"]
        labels = list(input_ids)
    elif "messages" in record:
        messages = record["messages"]
        prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(messages, tokenize=False)
        if not full.startswith(prompt):
            raise ValueError("the chat template renders the prompt differently once the reply follows; cannot mask the prompt")
        encoding = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
        input_ids = encoding["input_ids"][:max_length]
        # Loss on every token that ends inside the reply (a token straddling the boundary counts as the reply's).
        labels = [token if end > len(prompt) else IGNORE_INDEX for token, (_, end) in zip(input_ids, encoding["offset_mapping"])]
    else:
        raise ValueError(f"expected a 'text' or 'messages' record, found keys {sorted(record)}")
    return {"input_ids": input_ids, "attention_mask": [1] * len(input_ids), "labels": labels}


def read_examples(path: Path, tokenizer: Any, max_length: int) -> list[dict[str, list[int]]]:
    """Every record of a JSONL file, tokenized one by one."""
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [tokenize_record(record, tokenizer, max_length) for record in records]


def validation_loss(model: Any, examples: list[dict], collator: Any, batch_size: int) -> tuple[float, int]:
    """Mean next-token loss over every loss-carrying token of ``examples`` (not a mean of batch means), and that token count."""
    import torch
    import torch.nn.functional as F

    was_training = model.training
    model.eval()
    summed, counted = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            batch = collator(examples[start : start + batch_size])
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            labels = batch["labels"][:, 1:]
            summed += F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)).float(), labels.reshape(-1),
                                      ignore_index=IGNORE_INDEX, reduction="sum").item()
            counted += int((labels != IGNORE_INDEX).sum())
    model.train(was_training)
    return (summed / counted if counted else math.nan), counted


def run_trainer(
    model_dir: Path, data: Path, validation: Optional[Path], steps: Optional[int], epochs: float, settings: dict[str, Any],
) -> dict[str, Any]:
    """Train a LoRA adapter with Trainer + PEFT; per-step token counts and times, and validation losses before and after.

    Args:
        model_dir: the Hugging Face model folder.
        data: the training JSONL file.
        validation: a JSONL file to measure the loss on, or None.
        steps: optimizer steps; None trains ``epochs`` passes over ``data``.
        epochs: passes over the data when ``steps`` is None.
        settings: rank, alpha, targets, learning_rate, batch_size, max_length, seed.

    Returns:
        ``steps`` (a list of useful, padded and seconds per optimizer step) and, with ``validation``,
        ``validation_loss_before``, ``validation_loss`` and ``validation_tokens``.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, Trainer, TrainerCallback, TrainingArguments

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    train_examples = read_examples(data, tokenizer, settings["max_length"])
    validation_examples = read_examples(validation, tokenizer, settings["max_length"]) if validation else []
    collator = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE_INDEX, return_tensors="pt")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    torch.manual_seed(settings["seed"])
    model = get_peft_model(model, LoraConfig(r=settings["rank"], lora_alpha=settings["alpha"], lora_dropout=0.0,
                                             target_modules=settings["targets"], task_type="CAUSAL_LM"))
    result: dict[str, Any] = {}
    if validation_examples:
        result["validation_loss_before"], _ = validation_loss(model, validation_examples, collator, settings["batch_size"])
    batches: list[tuple[int, int]] = []
    step_seconds: list[float] = []

    class CountingTrainer(Trainer):
        """Trainer that notes the real and padded tokens of every batch it trains on."""

        def training_step(self, model, inputs, *args, **kwargs):
            batches.append((int(inputs["attention_mask"].sum()), inputs["attention_mask"].numel()))
            return super().training_step(model, inputs, *args, **kwargs)

    class StepTimer(TrainerCallback):
        """Seconds from the end of one optimizer step to the end of the next (the first from the start of training)."""

        def on_train_begin(self, args, state, control, **kwargs):
            self.last = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            now = time.perf_counter()
            step_seconds.append(now - self.last)
            self.last = now

    with tempfile.TemporaryDirectory() as output_dir:
        arguments = TrainingArguments(
            output_dir=output_dir, per_device_train_batch_size=settings["batch_size"], gradient_accumulation_steps=1,
            learning_rate=settings["learning_rate"], lr_scheduler_type="cosine", weight_decay=0.0, max_grad_norm=1.0, optim="adamw_torch",
            max_steps=steps if steps else -1, num_train_epochs=epochs, logging_steps=1, save_strategy="no", report_to=[],
            seed=settings["seed"], use_cpu=True, dataloader_num_workers=0, disable_tqdm=True, gradient_checkpointing=False,
        )
        trainer = CountingTrainer(model=model, args=arguments, train_dataset=train_examples, data_collator=collator, callbacks=[StepTimer()])
        trainer.train()
    result["steps"] = [{"useful": useful, "padded": padded, "seconds": seconds} for (useful, padded), seconds in zip(batches, step_seconds)]
    if validation_examples:
        result["validation_loss"], result["validation_tokens"] = validation_loss(model, validation_examples, collator, settings["batch_size"])
    return result
