"""Training throughput and quality side by side: mftd's worker and Hugging Face Trainer + PEFT, LoRA on SmolLM2-135M-Instruct.

Both runners train a LoRA adapter (rank 8, alpha 16, dropout 0, on q_proj, k_proj, v_proj and
o_proj) of the real SmolLM2-135M-Instruct with AdamW (lr 1e-4, cosine, clip 1.0, no weight decay),
an effective batch of 4, sequences cut at 256 tokens and seed 0, each in its own child process, on
two datasets:

- chat: variable-length conversations of real text shipped with Python (``benchmarks/chat_data.py``),
  loss on the assistant reply only; rendered lengths spread from about 50 to 256 tokens;
- fixed: text records (pairs of ``benchmarks.common.write_text_examples`` records) that are all cut to exactly 256 tokens.

Speed phase: ``--steps`` optimizer steps on each dataset. **Useful tokens/s** counts the real
(non-padding) tokens that go through the model, prompt included, over the steps after the first
(warm-up). mftd runs a real job through its worker (``python -m jobs.worker``), with memory and
precision left to its defaults (``--mftd-option key=value`` sets any ``JobConfig`` field, to compare
variants); its steps and tokens come from the job's metrics. mftd runs twice: as the job's defaults
have it (eager), and with ``compile: true`` (``jobs/compile.py``: its compile time, before the first
step, is printed and not counted; the cache is ``~/.cache/mftd-benchmarks/inductor``, so a second run
of the benchmark compiles from it; ``--no-compile`` leaves these runs out). Trainer runs as
``benchmarks/throughput_trainer.py`` describes (float32, dynamic padding). A step's time is, for
mftd, what its training loop reports (building the batch included, writing the metric not); for
Trainer, the time from the end of the previous step (data loading and logging included).

**Achieved GFLOP/s** = useful tokens/s x 4 x N, where N = non-embedding parameters + the lm_head
matrix (vocabulary x hidden size; for SmolLM2's tied embeddings N equals its parameter count, 134.5M):
2N for the forward pass and 2N for the gradient with respect to the activations in the backward pass;
the frozen weights get no weight gradient. Left out: the attention score and value products (about
6% more at 256 tokens, less for shorter examples) and the LoRA matrices themselves (under 1%). It
counts the work a plain implementation does per useful token, so a runner that skips work (padding,
logits of positions without loss) is credited with it, as model FLOPs utilisation is. It is shown as
a share of the float32 and bfloat16 matmul peaks measured at the start of the same run: best of
several 2048 x 2048 ``torch.mm`` with as many threads as the trainers use.

Quality phase: ``--epochs`` passes over the chat training set (``--chat-train-examples``) at the same
batch size, so both runners take the same number of steps over the same examples (mftd's packing
changes how a micro-batch is laid out, not which examples it holds); then the mean token loss on the held-out chat examples (``--chat-validation-examples``), which
mftd computes as the job's ``validation_dataset`` and Trainer's side the same way after training.

    python benchmarks/throughput.py [--steps 30] [--epochs 1] [--chat-train-examples 240] [--phases speed,quality] [--no-compile] [--mftd-option packing=false]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.chat_data import write_chat_dataset  # noqa: E402
from benchmarks.common import CACHE, EFFECTIVE_BATCH, ROOT, SEED, SEQUENCE, ensure_smollm2, quiet_transformers, write_text_examples  # noqa: E402
from benchmarks.mftd_job import run_mftd_job  # noqa: E402

RANK, ALPHA, LEARNING_RATE = 8, 16.0, 1e-4
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
MATMUL_SIZE = 2048
MATMUL_REPEATS = 5
QUALITY_TARGET = 0.01  # mftd's validation loss within 1% of Trainer's
RESULT_PREFIX = "RESULT "
TRAINER, MFTD, MFTD_COMPILED = "HF Trainer + PEFT", "mftd", "mftd, compile: true"
# The compiled runs' inductor cache: a second run of the benchmark compiles from it, as a resumed job does.
INDUCTOR_CACHE = CACHE / "inductor"
TRAINER_SETTINGS = dict(rank=RANK, alpha=ALPHA, targets=TARGETS, learning_rate=LEARNING_RATE, batch_size=EFFECTIVE_BATCH,
                        max_length=SEQUENCE, seed=SEED)


@dataclass(frozen=True)
class SpeedRow:
    """One runner on one dataset."""

    dataset: str
    runner: str
    useful_tokens_per_second: float
    padding_share: Optional[float]


def mftd_job_config(options: dict[str, Any], threads: int, **fields: Any) -> dict[str, Any]:
    """The JobConfig fields of a LoRA job with the benchmark's hyperparameters, ``fields`` and the ``--mftd-option`` overrides."""
    return {
        "method": "lora", "lora_rank": RANK, "lora_alpha": ALPHA, "lora_dropout": 0.0, "lora_target_modules": TARGETS,
        "learning_rate": LEARNING_RATE, "lr_schedule": "cosine", "warmup_steps": 0, "weight_decay": 0.0, "max_grad_norm": 1.0,
        "batch_size": EFFECTIVE_BATCH, "grad_accum_steps": 1, "max_seq_len": SEQUENCE, "seed": SEED, "num_threads": threads,
        "log_every_steps": 1, "keep_checkpoints": 1, "checkpoint_every_steps": 1_000_000, **fields, **options,
    }


def parse_mftd_options(pairs: list[str]) -> dict[str, Any]:
    """``key=value`` pairs as JobConfig fields; a value is read as JSON (true, 0.5, "x") when it parses, else as a string.

    Raises:
        SystemExit: a pair has no '=', or JobConfig has no such field (the message lists its fields).
    """
    from pydantic import ValidationError

    from mftd.jobconfig import JobConfig

    options: dict[str, Any] = {}
    for pair in pairs:
        key, separator, value = pair.partition("=")
        if not separator or not key:
            sys.exit(f"--mftd-option {pair!r}: expected key=value, e.g. --mftd-option base_dtype=bfloat16")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    try:
        JobConfig(**options)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(str(part) for part in item['loc'])}: {item['msg']}" for item in error.errors())
        sys.exit(f"--mftd-option: {problems}. JobConfig fields on this code: {', '.join(JobConfig.model_fields)}")
    return options


def write_fixed_length_examples(path: Path, count: int) -> Path:
    """``count`` text records, each two consecutive ``write_text_examples`` records: far longer than SEQUENCE tokens, so all are cut to exactly SEQUENCE."""
    source = write_text_examples(path.with_name(path.stem + "-source.jsonl"), count + 1)
    texts = [json.loads(line)["text"] for line in source.read_text().splitlines()]
    path.write_text("".join(json.dumps({"text": first + " " + second}) + "\n" for first, second in zip(texts, texts[1:])))
    return path


def matmul_peaks(threads: int) -> dict[str, float]:
    """Best-of GFLOP/s of a square ``torch.mm`` in float32 and bfloat16 with ``threads`` threads."""
    import torch

    torch.set_num_threads(threads)
    peaks = {}
    for dtype in (torch.float32, torch.bfloat16):
        left, right = torch.randn(MATMUL_SIZE, MATMUL_SIZE, dtype=dtype), torch.randn(MATMUL_SIZE, MATMUL_SIZE, dtype=dtype)
        torch.mm(left, right)  # warm-up: threads start, kernels are picked
        best = float("inf")
        for _ in range(MATMUL_REPEATS):
            started = time.perf_counter()
            torch.mm(left, right)
            best = min(best, time.perf_counter() - started)
        peaks[str(dtype).removeprefix("torch.")] = 2 * MATMUL_SIZE**3 / best / 1e9
    return peaks


def flops_per_token(model_dir: Path) -> float:
    """4 x (non-embedding parameters + lm_head matrix): the forward pass and the activation gradients of a LoRA step (see the module docstring)."""
    from transformers import AutoConfig

    from mftd.modelinfo import inspect_model_folder

    config = AutoConfig.from_pretrained(model_dir)
    embedding = config.vocab_size * config.hidden_size
    parameters = inspect_model_folder(model_dir).num_parameters
    # Tied: the one stored matrix is both the embedding (a lookup, no FLOPs) and the lm_head (a matmul).
    # Untied: the stored lm_head is already among the parameters.
    return 4.0 * (parameters - embedding + (embedding if config.tie_word_embeddings else 0))


def token_lengths(model_dir: Path, path: Path) -> list[int]:
    """Tokens per example as mftd tokenizes ``path`` (cut at SEQUENCE)."""
    from jobs.data import tokenize_dataset
    from jobs.model_setup import load_tokenizer

    return [len(example.input_ids) for example in tokenize_dataset(path, load_tokenizer(model_dir), "auto", SEQUENCE).examples]


def same_tokens_and_labels(model_dir: Path, path: Path) -> tuple[int, int]:
    """How many examples of ``path`` Trainer's side tokenizes and labels exactly as mftd does, and how many there are."""
    from benchmarks.throughput_trainer import read_examples
    from jobs.data import tokenize_dataset
    from jobs.model_setup import load_tokenizer

    tokenizer = load_tokenizer(model_dir)
    ours = tokenize_dataset(path, tokenizer, "auto", SEQUENCE).examples
    theirs = read_examples(path, tokenizer, SEQUENCE)
    same = sum(1 for mine, other in zip(ours, theirs) if mine.input_ids == other["input_ids"] and mine.labels == other["labels"])
    return same, len(theirs)


def random_batch_padding_share(lengths: list[int], batch_size: int) -> float:
    """Padding share of one epoch of seeded random batches, each padded to its longest example (as dynamic padding does)."""
    from jobs.batches import epoch_order

    order = epoch_order(len(lengths), SEED, 0)
    useful = padded = 0
    for start in range(0, len(order), batch_size):
        batch = [lengths[index] for index in order[start : start + batch_size]]
        useful += sum(batch)
        padded += max(batch) * len(batch)
    return 1 - useful / padded


def describe_lengths(name: str, lengths: list[int]) -> str:
    deciles = statistics.quantiles(lengths, n=10)
    return (f"{name}: {len(lengths)} examples, tokens mean {statistics.mean(lengths):.0f}, p10 {deciles[0]:.0f}, p50 {deciles[4]:.0f}, "
            f"p90 {deciles[8]:.0f}, min {min(lengths)}, max {max(lengths)}")


def run_trainer_child(model_dir: Path, data: Path, validation: Optional[Path], steps: Optional[int], epochs: float, threads: int) -> dict:
    """``throughput_trainer.run_trainer`` in a child process; its result."""
    command = [sys.executable, str(Path(__file__).resolve()), "--child-trainer", "--model-dir", str(model_dir), "--data", str(data),
               "--steps", str(steps or 0), "--epochs", str(epochs), "--threads", str(threads)]
    if validation:
        command += ["--validation", str(validation)]
    child = subprocess.run(command, cwd=ROOT, env=dict(os.environ), capture_output=True, text=True)
    results = [line[len(RESULT_PREFIX):] for line in child.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if child.returncode != 0 or not results:
        sys.exit(f"Trainer on {data.name} failed (exit status {child.returncode}); its output:\n{child.stdout[-3000:]}\n{child.stderr[-3000:]}")
    return json.loads(results[-1])


def child_trainer(args: argparse.Namespace) -> int:
    import torch

    from benchmarks.throughput_trainer import run_trainer

    quiet_transformers()
    torch.set_num_threads(args.threads)
    result = run_trainer(args.model_dir, args.data, args.validation, args.steps or None, args.epochs, TRAINER_SETTINGS)
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


def timed_rate(tokens: list[int], seconds: list[float]) -> float:
    """Tokens per second over the steps after the first (warm-up); all steps when there is only one."""
    if len(tokens) > 1:
        tokens, seconds = tokens[1:], seconds[1:]
    return sum(tokens) / sum(seconds)


def trainer_speed(dataset: str, result: dict) -> SpeedRow:
    steps = result["steps"]
    useful, padded = sum(step["useful"] for step in steps), sum(step["padded"] for step in steps)
    rate = timed_rate([step["useful"] for step in steps], [step["seconds"] for step in steps])
    return SpeedRow(dataset, TRAINER, rate, 1 - useful / padded)


def mftd_variants(options: dict[str, Any], compiled: bool) -> list[tuple[str, dict[str, Any]]]:
    """The mftd runs of the speed phase, as (runner name, options): the job's defaults, and with ``compile: true`` when asked for and not set already."""
    variants = [(MFTD, options)]
    if compiled and "compile" not in options:
        variants.append((MFTD_COMPILED, {**options, "compile": True}))
    return variants


def speed_phase(model_dir: Path, data: dict[str, Path], args: argparse.Namespace, options: dict[str, Any]) -> list[SpeedRow]:
    """Both runners (mftd also compiled, unless ``--no-compile``), ``args.steps`` steps on each dataset."""
    rows = []
    for dataset, path in data.items():
        for runner, variant in mftd_variants(options, args.compile):
            started = time.perf_counter()
            run = run_mftd_job(model_dir, path, None, mftd_job_config(variant, args.threads, max_steps=args.steps))
            print(f"{runner} on {dataset}: {len(run.step_tokens)} steps, {time.perf_counter() - started:.0f} s with loading; "
                  f"{run.describe_settings()}", flush=True)
            if variant.get("compile"):
                if run.compile_seconds is None:
                    print(f"  it trained eager: {'; '.join(run.compile_warnings) or 'no compile event'}", flush=True)
                else:
                    print(f"  compiling took {run.compile_seconds:.0f} s before the first step (not counted in tokens/s)", flush=True)
            rows.append(SpeedRow(dataset, runner, timed_rate(run.step_tokens, run.step_seconds), run.padding_share))
        started = time.perf_counter()
        result = run_trainer_child(model_dir, path, None, args.steps, 1.0, args.threads)
        print(f"{TRAINER} on {dataset}: {len(result['steps'])} steps, {time.perf_counter() - started:.0f} s with loading", flush=True)
        rows.append(trainer_speed(dataset, result))
    return rows


def quality_phase(model_dir: Path, train: Path, validation: Path, args: argparse.Namespace, options: dict[str, Any]) -> list[str]:
    """Both runners ``args.epochs`` passes over the chat training set; lines comparing their validation losses."""
    started = time.perf_counter()
    run = run_mftd_job(model_dir, train, validation, mftd_job_config(options, args.threads, epochs=args.epochs))
    print(f"mftd, {args.epochs:g} epoch(s): {len(run.step_tokens)} steps, {time.perf_counter() - started:.0f} s with loading; "
          f"{run.describe_settings()}", flush=True)
    started = time.perf_counter()
    result = run_trainer_child(model_dir, train, validation, None, args.epochs, args.threads)
    print(f"HF Trainer + PEFT, {args.epochs:g} epoch(s): {len(result['steps'])} steps, {time.perf_counter() - started:.0f} s with loading", flush=True)
    if run.validation_loss is None:
        sys.exit("the mftd job logged no validation loss; check that validation_dataset reached the worker")
    difference = (run.validation_loss - result["validation_loss"]) / result["validation_loss"]
    verdict = "yes" if abs(difference) <= QUALITY_TARGET else "no"
    same, total = same_tokens_and_labels(model_dir, validation)
    return [
        f"Quality: {args.epochs:g} epoch(s) over {args.chat_train_examples} chat examples (HF {len(result['steps'])} steps, "
        f"mftd {len(run.step_tokens)} steps); mean token loss on {args.chat_validation_examples} held-out chat examples "
        f"({result['validation_tokens']} loss tokens):",
        f"- both sides tokenize and label {same} of {total} validation examples identically",
        f"- before training: {result['validation_loss_before']:.4f}",
        f"- HF Trainer + PEFT (float32): {result['validation_loss']:.4f}",
        f"- mftd: {run.validation_loss:.4f}",
        f"- relative difference (mftd - HF) / HF: {difference:+.2%} (target within {QUALITY_TARGET:.0%}: {verdict})",
    ]


def print_speed_table(rows: list[SpeedRow], peaks: dict[str, float], flops: float, args: argparse.Namespace) -> None:
    print()
    print(f"LoRA r={RANK} alpha={ALPHA:g} on {','.join(TARGETS)}; effective batch {EFFECTIVE_BATCH}, max sequence {SEQUENCE}, "
          f"{args.steps} steps (the first not timed), {args.threads} threads; {flops / 4 / 1e6:.1f}M x 4 = {flops / 1e9:.3f} GFLOP per useful token")
    print(f"Measured matmul peaks ({MATMUL_SIZE}x{MATMUL_SIZE} torch.mm, best of {MATMUL_REPEATS}): "
          f"float32 {peaks['float32']:.0f} GFLOP/s, bfloat16 {peaks['bfloat16']:.0f} GFLOP/s")
    print("| dataset | runner | useful tokens/s | ratio vs HF | GFLOP/s | % of fp32 peak | % of bf16 peak | padding share |")
    print("|---|---|---|---|---|---|---|---|")
    baselines = {row.dataset: row.useful_tokens_per_second for row in rows if row.runner == TRAINER}
    for row in rows:
        gflops = row.useful_tokens_per_second * flops / 1e9
        ratio = f"{row.useful_tokens_per_second / baselines[row.dataset]:.2f}x" if row.dataset in baselines else "-"
        padding = f"{row.padding_share:.0%}" if row.padding_share is not None else "-"
        print(f"| {row.dataset} | {row.runner} | {row.useful_tokens_per_second:,.0f} | {ratio} | {gflops:.1f} "
              f"| {gflops / peaks['float32']:.0%} | {gflops / peaks['bfloat16']:.0%} | {padding} |")


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="Optimizer steps per speed run (the first is not timed); a trainer child given 0 trains --epochs.")
    parser.add_argument("--epochs", type=float, default=1.0, help="Passes over the chat training set in the quality phase.")
    parser.add_argument("--chat-train-examples", type=int, default=240, help="Chat examples to train on in the quality phase (and the speed phase's pool).")
    parser.add_argument("--chat-validation-examples", type=int, default=40, help="Held-out chat examples for the validation loss.")
    parser.add_argument("--phases", default="speed,quality", help="Comma-separated: speed, quality.")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="Threads for both trainers and the matmul peaks.")
    parser.add_argument("--mftd-option", action="append", default=[], metavar="KEY=VALUE",
                        help="A JobConfig field for the mftd jobs, e.g. base_dtype=bfloat16 (repeatable).")
    parser.add_argument("--no-compile", dest="compile", action="store_false",
                        help="Leave out the speed phase's mftd runs with compile: true (they need a C++ compiler; compiling takes a minute or two per dataset).")
    parser.add_argument("--child-trainer", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--validation", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> int:
    args = parse_arguments()
    if args.child_trainer:
        return child_trainer(args)
    phases = set(args.phases.split(","))
    if not phases or phases - {"speed", "quality"}:
        sys.exit(f"--phases {args.phases!r}: choose from speed, quality")
    options = parse_mftd_options(args.mftd_option)
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(INDUCTOR_CACHE))
    if options:
        print(f"mftd options: {options}", flush=True)
    model_dir = ensure_smollm2()
    peaks = matmul_peaks(args.threads)
    flops = flops_per_token(model_dir)
    with tempfile.TemporaryDirectory() as tmp:
        train, validation = write_chat_dataset(Path(tmp), args.chat_train_examples, args.chat_validation_examples, SEED)
        fixed = write_fixed_length_examples(Path(tmp) / "fixed.jsonl", args.steps * EFFECTIVE_BATCH)
        chat_lengths = token_lengths(model_dir, train)
        print(describe_lengths("chat training set", chat_lengths), flush=True)
        print(f"chat: dynamic padding in random batches of {EFFECTIVE_BATCH} pads {random_batch_padding_share(chat_lengths, EFFECTIVE_BATCH):.0%} "
              "of the tokens of one epoch", flush=True)
        fixed_lengths = token_lengths(model_dir, fixed)
        print(describe_lengths("fixed-length set", fixed_lengths), flush=True)
        if set(fixed_lengths) != {SEQUENCE}:
            sys.exit(f"the fixed-length set has examples of {sorted(set(fixed_lengths))} tokens, expected all {SEQUENCE}; its texts are too short")
        speed_rows = speed_phase(model_dir, {"chat": train, "fixed": fixed}, args, options) if "speed" in phases else []
        quality_lines = quality_phase(model_dir, train, validation, args, options) if "quality" in phases else []
    if speed_rows:
        print_speed_table(speed_rows, peaks, flops, args)
    if quality_lines:
        print()
        print("\n".join(quality_lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
