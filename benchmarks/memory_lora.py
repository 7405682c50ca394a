"""Peak memory and speed: LoRA with mftd's training loop and with Hugging Face Trainer + PEFT, on real models.

For SmolLM2-135M-Instruct and Gemma 3 270M (imported once from their packages' GGUF files), both
trainers fine-tune a LoRA adapter (rank 8, alpha 16, the attention projections) on the same text
examples, each cut at 256 tokens, effective batch 4, the same AdamW settings. Each run is its own
child process, so its peak RSS (``ru_maxrss`` from ``wait4``) is its alone: that counts the Python
runtime, torch, the weights, everything the allocator holds. Tokens per second leave out the first
optimizer step (warm-up).

mftd runs the way a job with ``base_dtype`` and ``gradient_checkpointing`` set would (chunked
cross-entropy is always on, the frozen base memory-mapped from its safetensors files); ``--mftd-variant``
picks which, and ``--base-loader copied`` loads the base the ordinary way for comparison. The
planner's estimate for the mftd run's settings is printed against its measured peak. Trainer runs
with its defaults (float32, full logits, no gradient checkpointing), tokenized once with truncation
and no padding beyond the batch.

    python benchmarks/memory_lora.py [--models smollm2,gemma3] [--steps 5] [--mftd-variant bf16-checkpointed] [--base-loader mapped]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mftd.protocol import WORKER_MALLOC_ENV  # noqa: E402
from benchmarks.common import (  # noqa: E402
    EFFECTIVE_BATCH,
    MODEL_BUILDERS,
    MODEL_NAMES,
    ROOT,
    SEED,
    SEQUENCE,
    planner_estimate,
    quiet_transformers,
    relative_error,
    run_trainer,
    write_text_examples,
)

RANK, ALPHA, LEARNING_RATE = 8, 16.0, 1e-4
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
# name -> (base dtype, gradient checkpointing, micro-batch)
MFTD_VARIANTS = {
    "fp32": ("float32", False, 4),
    "fp32-checkpointed": ("float32", True, 4),
    "bf16": ("bfloat16", False, 4),
    "bf16-checkpointed": ("bfloat16", True, 4),
    "bf16-micro1": ("bfloat16", False, 1),
    "bf16-micro2": ("bfloat16", False, 2),
}
# How mftd loads the frozen base: mapped from its safetensors files (what adapter jobs do), or copied into memory (the
# ordinary from_pretrained, for comparison).
BASE_LOADERS = ("mapped", "copied")
PLANNER_TARGET = 0.15  # issue 6: the planner's estimate within 15% of the measured peak on every benchmark run


def run_mftd(model_dir: Path, data: Path, steps: int, variant: str, base_loader: str) -> dict:
    import torch

    from jobs.batches import micro_batches
    from jobs.data import tokenize_dataset
    from jobs.mapped_weights import load_mapped_model
    from jobs.model_setup import add_lora_adapter, enable_gradient_checkpointing, load_model, load_tokenizer, release_freed_memory
    from jobs.optimization import build_lr_scheduler, build_optimizer
    from jobs.stop import StopSignal
    from jobs.training import train
    from jobs.training_state import TrainingProgress, seed_everything

    base_dtype, checkpointed, micro_batch = MFTD_VARIANTS[variant]
    tokenizer = load_tokenizer(model_dir)
    examples = tokenize_dataset(data, tokenizer, "text", SEQUENCE).examples
    model = (load_mapped_model if base_loader == "mapped" else load_model)(model_dir, getattr(torch, base_dtype))
    if checkpointed:
        enable_gradient_checkpointing(model)
    seed_everything(SEED)
    model = add_lora_adapter(model, RANK, ALPHA, 0.0, TARGETS)
    release_freed_memory()
    optimizer = build_optimizer(model.named_parameters(), LEARNING_RATE, 0.0, (0.9, 0.999), 1e-8)
    scheduler = build_lr_scheduler(optimizer, "cosine", 0, steps)
    reports = []
    train(model, optimizer, scheduler, micro_batches(examples, micro_batch, SEED, tokenizer.pad_token_id), TrainingProgress(), steps,
          EFFECTIVE_BATCH // micro_batch, 1.0, StopSignal().is_requested, lambda report, *_: reports.append(report),
          autocast_dtype=torch.bfloat16 if base_dtype == "bfloat16" else None)  # as the worker trains adapters on a bfloat16 base
    timed = reports[1:] or reports
    return {"tokens_per_second": sum(r.tokens for r in timed) / sum(r.seconds for r in timed), "losses": [r.loss for r in reports]}


def measure(runner: str, model_dir: Path, data: Path, steps: int, threads: int, variant: str, base_loader: str) -> dict:
    """Run one trainer in a child process; its result plus its peak RSS in MB."""
    command = [sys.executable, str(Path(__file__).resolve()), "--child", runner, "--model-dir", str(model_dir), "--data", str(data),
               "--steps", str(steps), "--threads", str(threads), "--mftd-variant", variant, "--base-loader", base_loader]
    environment = dict(os.environ)
    if runner == "mftd":
        environment.update(WORKER_MALLOC_ENV)  # as the daemon starts its workers
    child = subprocess.Popen(command, stdout=subprocess.PIPE, cwd=ROOT, env=environment, text=True)
    output = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = status
    if status != 0:
        sys.exit(f"{runner} on {model_dir.name} failed (status {status}); output:\n{output}")
    result = json.loads(output.strip().splitlines()[-1])
    result["peak_rss_mb"] = usage.ru_maxrss / 1024
    return result


def run_child(args: argparse.Namespace) -> int:
    import torch

    quiet_transformers()
    torch.set_num_threads(args.threads)
    if args.child == "mftd":
        result = run_mftd(args.model_dir, args.data, args.steps, args.mftd_variant, args.base_loader)
    else:
        result = run_trainer(args.model_dir, args.data, args.steps, EFFECTIVE_BATCH, LEARNING_RATE, TARGETS, RANK, ALPHA)
    print(json.dumps(result), flush=True)
    return 0


def print_tables(rows: list[tuple[str, dict, dict, float]], args: argparse.Namespace) -> None:
    base_dtype, checkpointed, micro_batch = MFTD_VARIANTS[args.mftd_variant]
    print()
    print(f"LoRA r={RANK} on q,k,v,o; sequence {SEQUENCE}, effective batch {EFFECTIVE_BATCH}; {args.steps} steps, {args.threads} threads; "
          f"mftd: {base_dtype} base ({args.base_loader}), gradient checkpointing {'on' if checkpointed else 'off'}, micro-batch {micro_batch}, "
          "chunked cross-entropy")
    print("| model | HF Trainer + PEFT peak RSS | mftd peak RSS | RSS ratio | HF tokens/s | mftd tokens/s | speed ratio |")
    print("|---|---|---|---|---|---|---|")
    for model_name, ours, theirs, _ in rows:
        print(f"| {model_name} | {theirs['peak_rss_mb']:,.0f} MB | {ours['peak_rss_mb']:,.0f} MB | {ours['peak_rss_mb'] / theirs['peak_rss_mb']:.0%} "
              f"| {theirs['tokens_per_second']:,.0f} | {ours['tokens_per_second']:,.0f} | {ours['tokens_per_second'] / theirs['tokens_per_second']:.2f}x |")
    print()
    print(f"Planner (mftd.memory_plan.estimate_peak with the mftd run's settings) against the mftd run's peak RSS; target within {PLANNER_TARGET:.0%}")
    print("| model | planner estimate | mftd peak RSS | error | within target |")
    print("|---|---|---|---|---|")
    for model_name, ours, _, estimate_mb in rows:
        error = relative_error(estimate_mb, ours["peak_rss_mb"])
        print(f"| {model_name} | {estimate_mb:,.0f} MB | {ours['peak_rss_mb']:,.0f} MB | {error:+.0%} | {'yes' if abs(error) <= PLANNER_TARGET else 'no'} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="smollm2,gemma3", help="Comma-separated: smollm2, gemma3.")
    parser.add_argument("--steps", type=int, default=5, help="Optimizer steps per run (the first is not timed).")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--mftd-variant", default="bf16-checkpointed", choices=sorted(MFTD_VARIANTS))
    parser.add_argument("--base-loader", default="mapped", choices=BASE_LOADERS, help="How mftd loads the frozen base (adapter jobs map it).")
    parser.add_argument("--child", choices=["mftd", "trainer"], help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return run_child(args)

    base_dtype, checkpointed, micro_batch = MFTD_VARIANTS[args.mftd_variant]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = write_text_examples(Path(tmp) / "text.jsonl", args.steps * EFFECTIVE_BATCH)
        for name in args.models.split(","):
            model_dir = MODEL_BUILDERS[name]()
            ours = measure("mftd", model_dir, data, args.steps, args.threads, args.mftd_variant, args.base_loader)
            theirs = measure("trainer", model_dir, data, args.steps, args.threads, args.mftd_variant, args.base_loader)
            estimate = planner_estimate(model_dir, "lora", base_dtype, RANK, micro_batch, checkpointed)
            rows.append((MODEL_NAMES[name], ours, theirs, estimate.total))
            print(f"{MODEL_NAMES[name]}: mftd {ours}, Trainer {theirs}, planner {estimate.describe()}", flush=True)
    print_tables(rows, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
