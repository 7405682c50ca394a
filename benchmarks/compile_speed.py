"""Eager against ``compile: true``, side by side in one run: mftd LoRA jobs on SmolLM2-135M-Instruct, taken in turns.

Each round runs one eager and one compiled job (``python -m jobs.worker``, as the daemon does) on
the same data: rows of exactly 256 tokens (``--dataset fixed``), or packed chat conversations whose
rows vary in length (``--dataset chat``), 4 rows per step, bfloat16 base, ``--threads`` threads.
Tokens/s is the steady state: the steps after the first. The compiled job's compile time (its
trial step on the first micro-batch, before the first step's clock starts) is shown on its own. All
compiled jobs share one new inductor cache folder, so round 1 compiles cold and later rounds read
the cache, as a resumed job does. Taking the variants in turns, and the ratio within each round,
keeps a shared machine's load out of the comparison as far as it can be.

    python benchmarks/compile_speed.py [--rounds 2] [--steps 6] [--threads 2] [--dataset fixed|chat]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.chat_data import write_chat_dataset  # noqa: E402
from benchmarks.common import ensure_smollm2  # noqa: E402
from benchmarks.mftd_job import MftdRun, run_mftd_job  # noqa: E402
from benchmarks.throughput import mftd_job_config, write_fixed_length_examples  # noqa: E402


def steady_tokens_per_second(run: MftdRun) -> float:
    return sum(run.step_tokens[1:]) / sum(run.step_seconds[1:])


def load_average() -> str:
    return " ".join(f"{value:.1f}" for value in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="Eager-then-compiled pairs.")
    parser.add_argument("--steps", type=int, default=6, help="Optimizer steps per job (the first is not counted).")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dataset", choices=("fixed", "chat"), default="fixed")
    args = parser.parse_args()
    model_dir = ensure_smollm2()
    with tempfile.TemporaryDirectory() as folder:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(Path(folder) / "inductor")
        if args.dataset == "fixed":
            data = write_fixed_length_examples(Path(folder) / "fixed.jsonl", 4 * args.steps)
        else:
            data, _validation = write_chat_dataset(Path(folder), 20 * args.steps, 4)
        ratios = []
        for round_number in range(1, args.rounds + 1):
            results = {}
            for compiled in (False, True):
                load = load_average()
                config = mftd_job_config({}, args.threads, base_dtype="bfloat16", max_steps=args.steps, compile=compiled)
                run = run_mftd_job(model_dir, data, None, config)
                results[compiled] = run
                label = "compiled" if compiled else "eager"
                extra = f", compile {run.compile_seconds:.1f} s" if run.compile_seconds is not None else ""
                if run.compile_warnings:
                    extra += f", warnings: {' | '.join(run.compile_warnings)}"
                print(f"round {round_number} {label:8}: {steady_tokens_per_second(run):7.1f} tokens/s over steps 2-{len(run.step_tokens)} "
                      f"(step 1: {run.step_tokens[0] / run.step_seconds[0]:.1f}){extra}; load before {load}; {run.describe_settings()}", flush=True)
            ratios.append(steady_tokens_per_second(results[True]) / steady_tokens_per_second(results[False]))
            print(f"round {round_number} compiled/eager: {ratios[-1]:.3f}", flush=True)
        print(f"compiled/eager over {args.rounds} rounds: median {statistics.median(ratios):.3f}, range {min(ratios):.3f}-{max(ratios):.3f}")


if __name__ == "__main__":
    main()
