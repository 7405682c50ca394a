"""Final artifacts load with the standard libraries and hold exactly the trained weights."""

from __future__ import annotations

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from jobs.artifacts import save_artifacts
from jobs.batches import micro_batches
from jobs.data import FALLBACK_CHAT_TEMPLATE, tokenize_dataset
from jobs.model_setup import add_lora_adapter, enable_gradient_checkpointing, load_model, load_tokenizer
from jobs.optimization import build_lr_scheduler, build_optimizer
from jobs.stop import StopSignal
from jobs.training import train
from jobs.training_state import TrainingProgress, seed_everything
from jobs.worker import run_worker
from mftd.protocol import ADAPTER_DIRNAME, EXIT_SUCCEEDED, FULL_MODEL_DIRNAME
from tests.jobs.helpers import chat_records, create_job, job_events, write_jsonl

PROMPT = torch.tensor([[4, 30, 31, 32, 33, 5]])


def trained_model(model_path, tmp_path, method):
    tokenizer = load_tokenizer(model_path)
    examples = tokenize_dataset(write_jsonl(tmp_path / "chat.jsonl", chat_records(8)), tokenizer, "auto", 64).examples
    model = load_model(model_path)
    enable_gradient_checkpointing(model)  # switches the cache off; the saved config must have it back on
    seed_everything(0)
    if method == "lora":
        model = add_lora_adapter(model, 4, 8.0, 0.0, ["q_proj", "v_proj"])
    optimizer = build_optimizer(model.named_parameters(), 1e-2, 0.0, (0.9, 0.999), 1e-8)
    scheduler = build_lr_scheduler(optimizer, "constant", 0, 5)
    batches = micro_batches(examples, 2, 0, tokenizer.pad_token_id)
    train(model, optimizer, scheduler, batches, TrainingProgress(), 5, 1, 1.0, StopSignal().is_requested, lambda *_: None)
    model.eval()
    return model, tokenizer


def test_adapter_loads_with_peft_and_equals_the_trained_weights(tmp_path, tiny_model):
    model, tokenizer = trained_model(tiny_model(), tmp_path, "lora")
    folder = save_artifacts(model, tokenizer, tmp_path / "job", "lora")
    assert folder == tmp_path / "job" / ADAPTER_DIRNAME
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= {path.name for path in folder.iterdir()}

    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model()), folder)
    loaded.eval()
    trained = {name: tensor for name, tensor in model.named_parameters() if "lora_" in name}
    reloaded = dict(loaded.named_parameters())
    assert len(trained) == 8 and all(torch.equal(tensor, reloaded[name]) for name, tensor in trained.items())
    assert any(not torch.all(tensor == 0) for name, tensor in trained.items() if "lora_B" in name)  # it did train
    with torch.no_grad():
        assert torch.equal(model(input_ids=PROMPT).logits, loaded(input_ids=PROMPT).logits)
    assert loaded.get_base_model().config.use_cache is True
    assert AutoTokenizer.from_pretrained(folder).chat_template == tokenizer.chat_template


def test_full_model_folder_loads_with_transformers_and_equals_the_trained_model(tmp_path, tiny_model):
    model, tokenizer = trained_model(tiny_model("LlamaForCausalLM"), tmp_path, "full")
    folder = save_artifacts(model, tokenizer, tmp_path / "job", "full")
    assert folder == tmp_path / "job" / FULL_MODEL_DIRNAME
    loaded = AutoModelForCausalLM.from_pretrained(folder)
    trained = dict(model.named_parameters())
    assert all(torch.equal(tensor, trained[name]) for name, tensor in loaded.named_parameters())
    assert loaded.config.use_cache is True
    assert not [path for path in folder.parent.iterdir() if path.name.startswith(".tmp")]


def test_worker_saves_the_fallback_chat_template_it_trained_with(tmp_path, settings, engine, tiny_model):
    job_id = create_job(
        engine, tiny_model(with_chat_template=False), write_jsonl(tmp_path / "chat.jsonl", chat_records(6)), max_steps=2, batch_size=2, grad_accum_steps=1
    )
    assert run_worker(job_id, settings, StopSignal()) == EXIT_SUCCEEDED
    assert AutoTokenizer.from_pretrained(settings.job_dir(job_id) / ADAPTER_DIRNAME).chat_template == FALLBACK_CHAT_TEMPLATE
    warnings = [event.message for event in job_events(engine, job_id) if event.level == "warning"]
    assert len(warnings) == 1 and "no chat template" in warnings[0]
