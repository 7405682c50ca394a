"""Eager against ``compile: true``, side by side in one run: mftd LoRA jobs on SmolLM2-135M-Instruct, taken in turns.

Each round runs one eager and one compiled job (``python -m jobs.worker``, as the daemon does) on
the same data: rows of exactly 256 tokens (``--dataset fixed``), or packed chat conversations whose
rows vary in length (``--dataset chat``), 4 rows per step, bfloat16 base, ``--threads`` threads.
Tokens/s is the steady state: the steps after the first. The compiled job's compile time (its
trial step on the first micro-batch, before the first step's clock starts) is shown on its own. All
compiled jobs share one new inductor cache folder, so round 1 compiles cold and later rounds read
the cache, as a resumed job does. Taking the variants in turns, and the ratio within each round,
keeps a shared machine's load out of the comparison as far as it can be.

``--interleaved`` compares at a finer grain, for a busy machine: one process, one model, the layers
compiled once (the time is shown), then ``--rounds`` pairs of one eager and one compiled step
(the worker's step: chunked loss, backward, AdamW) on the same 4 rows of 256 tokens.

    python benchmarks/compile_speed.py [--rounds 2] [--steps 6] [--threads 2] [--dataset fixed|chat] [--interleaved]
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


def interleaved(model_dir: Path, pairs: int, threads: int) -> None:
    """One process, one model: a step with the eager layers, then one with the compiled layers, ``pairs`` times.

    A step is the worker's: the chunked loss of 4 packed rows of 256 tokens, its backward pass and an
    AdamW step of the adapter. Switching costs nothing (the compiled code stays cached), so each pair
    sees nearly the same machine load: the ratio of a pair's times is the least noisy comparison.
    """
    import time

    import torch

    from jobs.batches import MicroBatch, packed_rows
    from jobs.compile import compile_decoder_layers
    from jobs.data import tokenize_dataset
    from jobs.mapped_weights import load_mapped_model
    from jobs.model_setup import add_lora_adapter, load_tokenizer
    from jobs.training import summed_token_loss

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as folder:
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path(folder) / "inductor"))  # a set one: a warm cache
        data = write_fixed_length_examples(Path(folder) / "fixed.jsonl", 4)
        examples = tokenize_dataset(data, load_tokenizer(model_dir), "auto", 256).examples
        input_ids, attention_mask, labels, position_ids = packed_rows(examples, [[0], [1], [2], [3]], 0)
        batch = MicroBatch(input_ids, attention_mask, labels, 0, 0, position_ids)
        model = load_mapped_model(model_dir, torch.bfloat16)
        torch.manual_seed(0)
        model = add_lora_adapter(model, 8, 16.0, 0.0, ["q_proj", "k_proj", "v_proj", "o_proj"])
        model.train()
        optimizer = torch.optim.AdamW([parameter for parameter in model.parameters() if parameter.requires_grad], lr=1e-4)

        def step() -> float:
            started = time.perf_counter()
            loss = summed_token_loss(model, batch)
            (loss / batch.num_loss_tokens).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return time.perf_counter() - started

        print(f"load before: {load_average()}; 4 packed rows x 256 tokens, bfloat16 base, LoRA r8 on q,k,v,o, {threads} threads", flush=True)
        step()  # warm-up of the eager path
        started = time.perf_counter()
        _stream, compiled = compile_decoder_layers(model, iter([batch]), None, Path(folder) / "unused", lambda message, **_: print(message, flush=True), 1)
        print(f"compile (trial step included): {time.perf_counter() - started:.1f} s", flush=True)
        if compiled is None:
            return
        compiled_forwards = [layer.forward for layer in compiled.layers]
        step()  # warm-up of the compiled path
        ratios = []
        for pair in range(1, pairs + 1):
            for layer in compiled.layers:
                del layer.forward
            eager_seconds = step()
            for layer, forward in zip(compiled.layers, compiled_forwards):
                layer.forward = forward
            compiled_seconds = step()
            ratios.append(eager_seconds / compiled_seconds)
            print(f"pair {pair}: eager {1024 / eager_seconds:6.1f} tokens/s, compiled {1024 / compiled_seconds:6.1f} tokens/s, "
                  f"compiled/eager {ratios[-1]:.3f}; load {load_average()}", flush=True)
        print(f"compiled/eager over {pairs} pairs: median {statistics.median(ratios):.3f}, range {min(ratios):.3f}-{max(ratios):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="Eager-then-compiled pairs.")
    parser.add_argument("--steps", type=int, default=6, help="Optimizer steps per job (the first is not counted).")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dataset", choices=("fixed", "chat"), default="fixed")
    parser.add_argument("--interleaved", action="store_true", help="Alternate eager and compiled steps on one model in this process (--rounds pairs).")
    args = parser.parse_args()
    model_dir = ensure_smollm2()
    if args.interleaved:
        interleaved(model_dir, args.rounds, args.threads)
        return
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
