"""Peak memory of sharded full fine-tuning, optionally under a cgroup (v1) memory cap.

Builds a model with the exact config of Qwen2.5-0.5B or Gemma 3 270M and random weights (no hub
access; saved once under the work folder), then runs a few full fine-tuning steps with parameter
sharding through mftd's training loop: random tokens, sequence 256, micro-batch 1 x accumulation 4,
gradient checkpointing, chunked cross-entropy. The run is a child process; it prints each step and
its own peak RSS (``ru_maxrss``: anonymous memory plus the mapped shard pages it had resident). With
``--cap-mb``, the child runs in a fresh memory cgroup with that limit (needs root and cgroup v1), and
the cgroup's peak usage (page cache included) and OOM-kill count are printed afterwards.

    python benchmarks/sharding_probe.py --model qwen2.5-0.5b --steps 3 --cap-mb 3072
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SEQUENCE, MICRO_BATCH, GRAD_ACCUM = 256, 1, 4
CGROUP_ROOT = Path("/sys/fs/cgroup/memory")


def model_config(name: str):
    """The published config of the model, by hand."""
    if name == "qwen2.5-0.5b":
        from transformers import Qwen2Config

        return Qwen2Config(
            vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
            num_key_value_heads=2, max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6,
            tie_word_embeddings=True, architectures=["Qwen2ForCausalLM"],
        )
    if name == "gemma3-270m":
        from transformers import Gemma3TextConfig

        return Gemma3TextConfig(
            vocab_size=262144, hidden_size=640, intermediate_size=2048, num_hidden_layers=18, num_attention_heads=4,
            num_key_value_heads=1, head_dim=256, sliding_window=512, max_position_embeddings=32768, rope_theta=1000000.0,
            query_pre_attn_scalar=256, tie_word_embeddings=True, architectures=["Gemma3ForCausalLM"],
        )
    raise SystemExit(f"unknown model {name!r}; use qwen2.5-0.5b or gemma3-270m")


def ensure_model(name: str, work_dir: Path) -> Path:
    folder = work_dir / name
    if not (folder / "config.json").is_file():
        # A child process, so that this launcher stays small while the child's 1-2 GB of fresh weights come and go.
        subprocess.run([sys.executable, __file__, "--build", name, "--work-dir", str(work_dir)], check=True)
    return folder


def build(name: str, work_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(model_config(name))
    model.save_pretrained(work_dir / name)
    print(f"built {name}: {sum(p.numel() for p in model.parameters()):,} parameters", flush=True)


def run(name: str, work_dir: Path, steps: int, max_grad_norm) -> None:
    """The measured child: sharded full fine-tuning for ``steps`` steps."""
    import torch

    from jobs.batches import MicroBatch
    from jobs.model_setup import enable_gradient_checkpointing, load_model, release_freed_memory
    from jobs.optimization import build_lr_scheduler, build_optimizer
    from jobs.sharding import ShardedAdamW
    from jobs.training import train
    from jobs.training_state import TrainingProgress

    started = time.perf_counter()
    model = load_model(work_dir / name)
    enable_gradient_checkpointing(model)
    model.requires_grad_(True)
    optimizer = build_optimizer(model.named_parameters(), 1e-5, 0.01, (0.9, 0.999), 1e-8)
    scheduler = build_lr_scheduler(optimizer, "constant", 0, steps)
    stepper = ShardedAdamW(model, optimizer, work_dir / f"shards-{name}", max_grad_norm)
    release_freed_memory()
    print(f"ready after {time.perf_counter() - started:.0f} s, RSS {current_rss_mb():,.0f} MB", flush=True)
    generator = torch.Generator().manual_seed(0)

    def batches():
        index = 0
        while True:
            ids = torch.randint(0, model.config.vocab_size, (MICRO_BATCH, SEQUENCE), generator=generator)
            index += 1
            yield MicroBatch(ids, torch.ones_like(ids), ids.clone(), 0, index)

    def on_step(report, *_):
        print(
            f"step {report.step}: loss {report.loss:.4f}, grad norm {report.grad_norm:.3f}, {report.seconds:.0f} s, "
            f"RSS now {current_rss_mb():,.0f} MB, peak {peak_rss_mb():,.0f} MB",
            flush=True,
        )

    train(model, optimizer, scheduler, batches(), TrainingProgress(), steps, GRAD_ACCUM, max_grad_norm, lambda: False, on_step, stepper)
    stepper.close()
    print(json.dumps({"model": name, "steps": steps, "peak_rss_mb": round(peak_rss_mb()), "seconds": round(time.perf_counter() - started)}), flush=True)


def current_rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def evict_from_page_cache(folder: Path) -> None:
    """Drop the model files' cached pages: a page is charged to the cgroup that first reads it, so the child must read them itself."""
    for path in folder.iterdir():
        descriptor = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(descriptor)


def run_capped(arguments: list[str], cap_mb: int) -> None:
    """Run the child inside a new memory cgroup limited to ``cap_mb``; print the cgroup's peak and OOM kills."""
    group = CGROUP_ROOT / f"mftd-sharding-probe-{os.getpid()}"
    group.mkdir()
    try:
        (group / "memory.limit_in_bytes").write_text(str(cap_mb << 20))
        command = f"echo $$ > {group}/cgroup.procs; exec " + " ".join(arguments)
        code = subprocess.run(["sh", "-c", command]).returncode
        peak = int((group / "memory.max_usage_in_bytes").read_text()) / 2**20
        oom = dict(line.split() for line in (group / "memory.oom_control").read_text().splitlines())
        print(json.dumps({"cap_mb": cap_mb, "exit_code": code, "cgroup_peak_mb": round(peak), "oom_kills": int(oom.get("oom_kill", -1))}))
    finally:
        group.rmdir()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="qwen2.5-0.5b", choices=["qwen2.5-0.5b", "gemma3-270m"])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--max-grad-norm", default="1.0", help="a number, or 'none' for the step fused into the backward pass")
    parser.add_argument("--cap-mb", type=int, help="run under a cgroup v1 memory limit of this many MiB (root only)")
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/mftd-sharding-probe"))
    parser.add_argument("--build", help=argparse.SUPPRESS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    if args.build:
        return build(args.build, args.work_dir)
    max_grad_norm = None if args.max_grad_norm == "none" else float(args.max_grad_norm)
    if args.child:
        return run(args.model, args.work_dir, args.steps, max_grad_norm)
    evict_from_page_cache(ensure_model(args.model, args.work_dir))
    child = [sys.executable, __file__, "--child", "--model", args.model, "--steps", str(args.steps),
             "--max-grad-norm", args.max_grad_norm, "--work-dir", str(args.work_dir)]
    if args.cap_mb:
        run_capped(child, args.cap_mb)
    else:
        subprocess.run(child, check=True)


if __name__ == "__main__":
    main()
