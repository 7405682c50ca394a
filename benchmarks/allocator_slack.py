"""Peak RSS and speed of real worker runs under both allocator settings, against the planner's estimate.

Each run is an mftd job run by ``python -m jobs.worker`` (``benchmarks.mftd_job``) on text examples
cut at 256 tokens, in the configurations the planner's constants were fitted on. "lean" runs with
``MALLOC_MMAP_THRESHOLD_=1048576`` in the environment (the user's setting wins, so the worker keeps
the 1 MB threshold it starts with); "fast" runs with a budget large enough for the plan to pick the
fast setting, which the worker then sets with mallopt (16 MB). The worker's peak RSS and plan are
appended to a JSON-lines file, so that the table can be printed again with other constants
(``--table-only``).

    python benchmarks/allocator_slack.py [--configs smollm2-lora-bf16-mb4,...] [--settings lean,fast] [--steps 3] [--results FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import EFFECTIVE_BATCH, MODEL_BUILDERS, MODEL_NAMES, SEQUENCE, relative_error, write_text_examples  # noqa: E402
from mftd.protocol import MMAP_THRESHOLDS  # noqa: E402

# Unpacked: the plan is made for micro-batches of full rows, and packing would lay these text examples
# (of varied lengths) in fewer rows, below what the constants are fitted to.
LORA = {"method": "lora", "base_dtype": "bfloat16", "lora_rank": 8, "packing": False}
# name -> (model, job config fields)
CONFIGS = {
    "smollm2-lora-bf16-mb4": ("smollm2", {**LORA, "batch_size": 4, "grad_accum_steps": 1, "gradient_checkpointing": False}),
    "smollm2-lora-bf16-mb4-checkpointed": ("smollm2", {**LORA, "batch_size": 4, "grad_accum_steps": 1, "gradient_checkpointing": True}),
    "smollm2-lora-bf16-mb1": ("smollm2", {**LORA, "batch_size": 1, "grad_accum_steps": 4, "gradient_checkpointing": False}),
    "smollm2-full-mb1-checkpointed": ("smollm2", {"method": "full", "compute_dtype": "float32", "parameter_sharding": False, "packing": False,
                                                  "batch_size": 1, "grad_accum_steps": 4, "gradient_checkpointing": True}),
    "gemma3-lora-bf16-mb4": ("gemma3", {**LORA, "batch_size": 4, "grad_accum_steps": 1, "gradient_checkpointing": False}),
    "gemma3-lora-bf16-mb4-checkpointed": ("gemma3", {**LORA, "batch_size": 4, "grad_accum_steps": 1, "gradient_checkpointing": True}),
    "gemma3-lora-bf16-mb1": ("gemma3", {**LORA, "batch_size": 1, "grad_accum_steps": 4, "gradient_checkpointing": False}),
}
SETTINGS = ("lean", "fast")
LARGE_BUDGET_MB = 20_000
PLANNER_TARGET = 0.15


def measure(name: str, setting: str, steps: int, threads: int, data: Path) -> dict:
    """One worker run of configuration ``name`` under ``setting``; its peak, plan, speed and allocator event."""
    from benchmarks.mftd_job import run_mftd_job

    model, fields = CONFIGS[name]
    fields = {**fields, "max_seq_len": SEQUENCE, "packing": False, "max_steps": steps, "num_threads": threads,
              "memory_budget_mb": LARGE_BUDGET_MB, "checkpoint_every_steps": 1000}
    saved = os.environ.get("MALLOC_MMAP_THRESHOLD_")
    if setting == "lean":
        os.environ["MALLOC_MMAP_THRESHOLD_"] = str(MMAP_THRESHOLDS["lean"])
    else:
        os.environ.pop("MALLOC_MMAP_THRESHOLD_", None)
    try:
        run = run_mftd_job(MODEL_BUILDERS[model](), data, None, fields)
    finally:
        if saved is None:
            os.environ.pop("MALLOC_MMAP_THRESHOLD_", None)
        else:
            os.environ["MALLOC_MMAP_THRESHOLD_"] = saved
    timed_tokens, timed_seconds = sum(run.step_tokens[1:]), sum(run.step_seconds[1:])
    return {
        "config": name, "setting": setting, "model": model, "peak_rss_mb": run.peak_rss_mb, "plan": run.memory_plan,
        "tokens_per_second": timed_tokens / timed_seconds if timed_seconds else None,
        "allocator_events": [message for message in run.events if message.startswith("allocator:")],
    }


def current_estimate(result: dict) -> "MemoryEstimate":  # noqa: F821
    """The estimate of the current constants for the run's planned settings under the run's allocator setting."""
    from transformers import AutoConfig

    from mftd.memory_plan import ModelShape, estimate_peak
    from mftd.modelinfo import inspect_model_folder

    model_dir = MODEL_BUILDERS[result["model"]]()
    plan = result["plan"]
    shape = ModelShape.from_config(AutoConfig.from_pretrained(model_dir), inspect_model_folder(model_dir).num_parameters)
    method = CONFIGS[result["config"]][1]["method"]
    return estimate_peak(shape, method, plan["base_dtype"], 8, plan["micro_batch"], plan["sequence"], plan["gradient_checkpointing"],
                         plan["parameter_sharding"], plan["compute_dtype"], allocator=result["setting"])


def print_table(results: list[dict]) -> None:
    print(f"\nWorker runs, sequence {SEQUENCE}, effective batch {EFFECTIVE_BATCH}; estimate with the current constants; target within {PLANNER_TARGET:.0%}")
    print("| setting | model | config | peak RSS | estimate (slack) | error | tokens/s |")
    print("|---|---|---|---|---|---|---|")
    for result in results:
        estimate = current_estimate(result)
        error = relative_error(estimate.total, result["peak_rss_mb"])
        speed = f"{result['tokens_per_second']:,.0f}" if result["tokens_per_second"] else "-"
        print(f"| {result['setting']} | {MODEL_NAMES[result['model']]} | {result['config'].split('-', 1)[1]} | {result['peak_rss_mb']:,.0f} MB "
              f"| {estimate.total:,.0f} MB ({estimate.allocator_slack:,.0f}) | {error:+.0%} | {speed} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"Comma-separated: {', '.join(CONFIGS)}.")
    parser.add_argument("--settings", default=",".join(SETTINGS), help="Comma-separated: lean, fast.")
    parser.add_argument("--steps", type=int, default=3, help="Optimizer steps per run (the peak comes in the first two or three).")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--results", type=Path, default=Path("allocator-slack.jsonl"), help="JSON lines, appended to.")
    parser.add_argument("--table-only", action="store_true", help="Print the table of the results file; run nothing.")
    args = parser.parse_args()
    if not args.table_only:
        with tempfile.TemporaryDirectory() as tmp:
            data = write_text_examples(Path(tmp) / "text.jsonl", args.steps * EFFECTIVE_BATCH)
            for name in args.configs.split(","):
                for setting in args.settings.split(","):
                    result = measure(name, setting, args.steps, args.threads, data)
                    print(json.dumps(result), flush=True)
                    with args.results.open("a") as out:
                        out.write(json.dumps(result) + "\n")
    print_table([json.loads(line) for line in args.results.read_text().splitlines() if line.strip()])
    return 0


if __name__ == "__main__":
    sys.exit(main())
