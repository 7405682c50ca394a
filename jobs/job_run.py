"""One run of a job, start to end: read the job, resolve its config, load model and data, resume, train, save.

This is where the job's config is read; everything below takes plain arguments.
"""

from __future__ import annotations

import dataclasses
import os
import resource
from pathlib import Path
from typing import Any, Optional

import torch
from pydantic import ValidationError
from sqlalchemy.engine import Engine

from jobs.allocator import use_allocator
from jobs.attention import use_matmul_attention
from jobs.artifacts import save_artifacts
from jobs.batches import epoch_layout_fill, micro_batches
from jobs.checkpoint import (
    CheckpointContents,
    checkpoint_folders,
    folder_size_bytes,
    prune_checkpoints,
    read_checkpoint,
    read_checkpoint_config,
    remove_checkpoints,
    verify_checkpoint,
    write_checkpoint,
)
from jobs.compile import compile_decoder_layers
from jobs.cores import use_cores
from jobs.data import FALLBACK_CHAT_TEMPLATE, TokenizedDataset, tokenize_dataset
from jobs.errors import CorruptCheckpointError, DatasetNotUsableError, JobConfigError, JobNotFoundError
from jobs.evaluation import evaluate
from jobs.mapped_weights import load_mapped_model
from jobs.model_setup import (
    add_lora_adapter,
    count_parameters,
    enable_gradient_checkpointing,
    load_model,
    load_model_config,
    load_tokenizer,
    load_trainable_state,
    release_freed_memory,
    trainable_state,
)
from mftd.memory_plan import MemoryPlan, ModelShape, does_not_fit_message, plan_memory, plan_request
from jobs.optimization import build_lr_scheduler, build_optimizer
from jobs.precision import bfloat16_matmul_problem
from jobs.reporting import JobReporter
from jobs.resolved_config import ResolvedJobConfig, resolve_config, write_resolved_config
from jobs.sharding import ShardedAdamW
from jobs.stop import StopSignal
from jobs.throttle import ThrottleFile
from jobs.training import LoopEnd, StepReport, train
from jobs.training_state import TrainingProgress, restore_rng_state, seed_everything
from mftd.cpu import default_num_threads
from mftd.db import new_session
from mftd.errors import NotFoundError
from mftd.jobconfig import ADAPTER_METHODS, JobConfig
from mftd.registry.lookup import Reference, resolve
from mftd.protocol import CHECKPOINTS_DIRNAME, RESOLVED_CONFIG_FILENAME, users_allocator
from mftd.settings import Settings
from mftd.throttle import THROTTLE_FILENAME
from mftd.tables import Dataset, Job, Model


# Bookkeeping that may differ between runs without making a checkpoint unusable. (Another thread
# count can change the last bits of sums, but resuming is still far better than starting over.)
FIELDS_THAT_DO_NOT_CHANGE_TRAINING = frozenset(
    {"num_threads", "compile", "log_every_steps", "checkpoint_every_steps", "keep_checkpoints", "validation_dataset", "eval_every_steps", "constraints"}
)
# The memory plan's split of the effective batch (which is compared) and how activations are kept:
# a run re-planned after a kill for memory resumes with another micro-batch (see _continue_position).
FIELDS_THE_PLAN_MAY_CHANGE = frozenset({"batch_size", "grad_accum_steps", "gradient_checkpointing", "memory_budget_mb"})
# Model families whose attention honours packed position ids (tests/jobs/test_packing.py shows it for each);
# others train on padded examples.
PACKABLE_MODEL_TYPES = frozenset({"gpt2", "qwen2", "llama", "gemma3_text"})
# The live shard files of a sharded run (its checkpoints hold consistent copies).
SHARDS_DIRNAME = "shards"


def run_job(job_id: int, settings: Settings, engine: Engine, reporter: JobReporter, stop: StopSignal) -> LoopEnd:
    """Train job ``job_id`` from its newest valid checkpoint until it is done or asked to stop.

    Args:
        job_id: the job's row id.
        settings: the daemon's settings (for the job folder).
        engine: the SQLite engine.
        reporter: where events, metrics and progress go.
        stop: read before every micro-batch.

    Returns:
        ``LoopEnd.COMPLETED`` with artifacts saved, or ``LoopEnd.STOPPED`` with a checkpoint of the last completed step.

    Raises:
        JobSetupError: the job cannot run as configured (bad config, model or dataset).
    """
    job, model_row, dataset_row = _load_rows(engine, job_id)
    config = _parse_config(job.config_json)
    validation_path = _validation_dataset_path(engine, config.validation_dataset)
    job_dir = settings.job_dir(job_id)
    model_path = Path(model_row.path)
    model_config = load_model_config(model_path)
    tokenizer = load_tokenizer(model_path)
    dataset = tokenize_dataset(Path(dataset_row.path), tokenizer, config.dataset_format, config.max_seq_len)
    _report_dataset(reporter, dataset, config.max_seq_len)
    validation = None
    if validation_path is not None:
        validation = tokenize_dataset(validation_path, tokenizer, "auto", config.max_seq_len)
        reporter.event(
            f"validation dataset: {len(validation.examples)} examples, {validation.num_tokens} tokens",
            data={"examples": len(validation.examples), "tokens": validation.num_tokens},
        )
    plan = _plan_memory(reporter, config, job, model_row, model_config, dataset, settings)
    use_allocator(plan.allocator, reporter)
    packing = _packing(reporter, config, model_config.model_type, dataset, plan.micro_batch)
    resolved = resolve_config(
        config,
        architecture=(model_config.architectures or [type(model_config).__name__])[0],
        model_type=model_config.model_type,
        dataset_format=dataset.dataset_format,
        num_examples=len(dataset.examples),
        default_num_threads=default_num_threads(),
        plan=plan,
        packing=packing,
    )
    write_resolved_config(resolved, job_dir / RESOLVED_CONFIG_FILENAME)
    use_cores(resolved.num_threads, reporter)

    reporter.event("loading model", data={"path": str(model_path)})
    model = _build_trainable_model(model_path, resolved)
    _use_planned_attention(model, plan, reporter)
    release_freed_memory()  # loading frees a lot that glibc would otherwise keep for the whole run
    total_parameters, trainable_parameters = count_parameters(model)
    reporter.event(
        f"model loaded ({total_parameters:,} params, {trainable_parameters:,} trainable)",
        data={"parameters": total_parameters, "trainable": trainable_parameters, "lora_target_modules": resolved.lora_target_modules},
    )
    optimizer = build_optimizer(
        model.named_parameters(), resolved.learning_rate, resolved.weight_decay, (resolved.adam_beta1, resolved.adam_beta2), resolved.adam_epsilon
    )
    scheduler = build_lr_scheduler(optimizer, resolved.lr_schedule, resolved.warmup_steps, resolved.total_steps)
    sharded = _setup_sharding(model, optimizer, resolved, job_dir, reporter)
    checkpoints_dir = job_dir / CHECKPOINTS_DIRNAME
    config_json = resolved.model_dump(mode="json")
    progress = _resume_from_newest_checkpoint(checkpoints_dir, config_json, model, optimizer, scheduler, reporter, sharded)
    reporter.forget_metrics_after(progress.step)
    reporter.progress(progress.step, resolved.total_steps, job.loss if progress.step else None, progress.tokens_seen)
    last_checkpoint_step = progress.step
    throttle = ThrottleFile(job_dir / THROTTLE_FILENAME)

    # Full fine-tuning's planned compute dtype, or an adapter's base dtype: products in bfloat16 either way.
    compute_dtype = torch.bfloat16 if resolved.compute_dtype == "bfloat16" else None

    def save_checkpoint(progress: TrainingProgress, rng_state: dict[str, Any]) -> None:
        nonlocal last_checkpoint_step
        contents = _checkpoint_contents(model, optimizer, scheduler, progress, rng_state, config_json, sharded)
        folder = write_checkpoint(checkpoints_dir, contents)
        removed = prune_checkpoints(checkpoints_dir, resolved.keep_checkpoints)
        reporter.checkpoints_changed(folder, progress.step, folder_size_bytes(folder), removed)
        last_checkpoint_step = progress.step

    def on_step(report: StepReport, progress: TrainingProgress, rng_state: dict[str, Any]) -> None:
        is_last = report.step == resolved.total_steps
        if report.step % resolved.log_every_steps == 0 or is_last:
            reporter.metric(report.step, report.loss, report.learning_rate, report.grad_norm, report.tokens, report.tokens_per_second)
        if validation is not None and (is_last or (resolved.eval_every_steps and report.step % resolved.eval_every_steps == 0)):
            result = evaluate(model, validation.examples, resolved.batch_size, tokenizer.pad_token_id, compute_dtype)
            reporter.eval_metric(report.step, result.loss, result.perplexity, result.loss_tokens)
            reporter.event(
                f"step {report.step}: validation loss {result.loss:.4f}, perplexity {result.perplexity:.2f}",
                kind="eval",
                data={"step": report.step, "loss": result.loss, "perplexity": result.perplexity},
            )
        reporter.progress(report.step, resolved.total_steps, report.loss, progress.tokens_seen)
        # The last step needs no checkpoint: the artifacts come right after it.
        if report.step % resolved.checkpoint_every_steps == 0 and not is_last:
            save_checkpoint(progress, rng_state)
        if not is_last:
            throttle.pause_after_step(report.seconds, stop.is_requested)

    batches = micro_batches(
        dataset.examples, resolved.batch_size, resolved.seed, tokenizer.pad_token_id, progress.epoch, progress.batch_in_epoch,
        _pack_capacity(dataset) if resolved.packing else None,
    )
    if resolved.compile:
        batches, _compiled = compile_decoder_layers(
            model, batches, compute_dtype, settings.data_dir / "cache" / "inductor", reporter.event, resolved.batch_size,
        )
    outcome = train(
        model, optimizer, scheduler, batches, progress, resolved.total_steps, resolved.grad_accum_steps,
        resolved.max_grad_norm, stop.is_requested, on_step, stepper=sharded, autocast_dtype=compute_dtype,
    )
    _report_peak_memory(reporter, plan)
    if outcome.end == LoopEnd.STOPPED:
        if outcome.progress.step > last_checkpoint_step:
            save_checkpoint(outcome.progress, outcome.rng_state)
        reporter.event(f"stopped at step {outcome.progress.step} of {resolved.total_steps} ({stop.reason})", data={"step": outcome.progress.step})
        _close_sharding(sharded)
        return LoopEnd.STOPPED
    chat_template = FALLBACK_CHAT_TEMPLATE if dataset.used_fallback_chat_template else None
    artifacts_dir = save_artifacts(model, tokenizer, job_dir, resolved.method, chat_template)
    _close_sharding(sharded)
    reporter.event("artifacts saved", kind="artifacts", data={"path": str(artifacts_dir), "step": outcome.progress.step})
    return LoopEnd.COMPLETED


def _load_rows(engine: Engine, job_id: int) -> tuple[Job, Model, Dataset]:
    with new_session(engine) as session:
        job = session.get(Job, job_id)
        if job is None:
            raise JobNotFoundError(f"job {job_id} is not in the database; start the worker with an existing job id")
        model_row = session.get(Model, job.model_id)
        dataset_row = session.get(Dataset, job.dataset_id)
    if model_row is None or dataset_row is None:
        missing = "model" if model_row is None else "dataset"
        raise JobNotFoundError(f"job {job_id} points to {missing} that no longer exists; create the job again with an existing {missing}")
    return job, model_row, dataset_row


def _validation_dataset_path(engine: Engine, reference: Optional[Reference]) -> Optional[Path]:
    if reference is None:
        return None
    with new_session(engine) as session:
        try:
            return Path(resolve(session, Dataset, reference, "dataset").path)
        except NotFoundError as error:
            raise DatasetNotUsableError(f"validation_dataset: {error}") from error


def _parse_config(config_json: str) -> JobConfig:
    try:
        return JobConfig.model_validate_json(config_json)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(str(part) for part in item['loc']) or 'config'}: {item['msg']}" for item in error.errors())
        raise JobConfigError(f"the job's config is not valid: {problems}; create the job again with a fixed config") from error


def _report_dataset(reporter: JobReporter, dataset: TokenizedDataset, max_seq_len: int) -> None:
    counts = {
        "format": dataset.dataset_format,
        "examples": len(dataset.examples),
        "tokens": dataset.num_tokens,
        "truncated": dataset.num_truncated,
        "dropped": dataset.num_dropped,
    }
    reporter.event(
        f"dataset: {len(dataset.examples)} examples, {dataset.num_tokens} tokens, {dataset.num_truncated} truncated"
        + (f", {dataset.num_dropped} dropped (nothing to learn within max_seq_len)" if dataset.num_dropped else ""),
        data=counts,
    )
    if dataset.num_truncated or dataset.num_dropped:
        reporter.event(
            f"{dataset.num_truncated} examples were longer than max_seq_len={max_seq_len} and were cut; "
            "raise max_seq_len if their ends matter",
            level="warning",
            data=counts,
        )
    if dataset.used_fallback_chat_template:
        reporter.event(
            "the tokenizer has no chat template; conversations use the simple 'role: content' fallback template, "
            "which is saved with the artifacts",
            level="warning",
        )


def _build_trainable_model(model_path: Path, config: ResolvedJobConfig) -> torch.nn.Module:
    is_adapter = config.method in ADAPTER_METHODS
    if is_adapter:  # the base stays frozen, so it can stay in its file (mapped) instead of being copied
        model = load_mapped_model(model_path, torch.bfloat16 if config.base_dtype == "bfloat16" else torch.float32)
    else:
        model = load_model(model_path, torch.float32)
    if config.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    # Seeded after loading and before the adapter's init, so that its initial weights depend on the seed alone.
    seed_everything(config.seed)
    if is_adapter:
        return add_lora_adapter(
            model, config.lora_rank, config.lora_alpha, config.lora_dropout, config.lora_target_modules, use_dora=config.method == "dora"
        )
    model.requires_grad_(True)
    return model


def _use_planned_attention(model: torch.nn.Module, plan: MemoryPlan, reporter: JobReporter) -> None:
    """Attention as matrix products when the plan has room for its weights (``MemoryPlan.attention``), and an event saying which."""
    if plan.attention != "matmul":
        return
    if use_matmul_attention(model):
        reporter.event("attention: matrix products (the plan has room for the attention weights they keep)", kind="memory",
                       data={"attention": "matmul"})
    else:
        reporter.event("attention: the model's own (it does not run SDPA, which matrix-product attention stands in for)", kind="memory",
                       data={"attention": "model"})


def _packing(reporter: JobReporter, config: JobConfig, model_type: str, dataset: TokenizedDataset, micro_batch: int) -> bool:
    """Whether micro-batches are packed (the job asks for it and the family confines attention to each packed example); says what it saves."""
    if not config.packing:
        return False
    if model_type not in PACKABLE_MODEL_TYPES:
        reporter.event(
            f"examples are not packed: the {model_type} family is not among those shown to keep attention inside each packed example "
            f"({', '.join(sorted(PACKABLE_MODEL_TYPES))}); each example is padded instead",
            level="warning", data={"model_type": model_type},
        )
        return False
    lengths = [len(example.input_ids) for example in dataset.examples]
    packed = epoch_layout_fill(lengths, micro_batch, config.seed, 0, _pack_capacity(dataset))
    padded = epoch_layout_fill(lengths, micro_batch, config.seed, 0, None)
    reporter.event(
        f"packing: micro-batches of {micro_batch} examples are {packed:.0%} real tokens ({padded:.0%} if each example were padded)",
        data={"micro_batch": micro_batch, "fill": round(packed, 4), "padded_fill": round(padded, 4)},
    )
    return True


def _pack_capacity(dataset: TokenizedDataset) -> int:
    """Tokens a packed row may hold: the longest example, the length the memory plan is made for."""
    return max(len(example.input_ids) for example in dataset.examples)


def _plan_memory(
    reporter: JobReporter,
    config: JobConfig,
    job: Job,
    model_row: Model,
    model_config: Any,
    dataset: TokenizedDataset,
    settings: Settings,
) -> MemoryPlan:
    """Pick micro-batch, checkpointing, base dtype and sharding to fit the job's budget; show the plan on the job.

    The plan is made for micro-batches of the longest example actually in the data (rows of packed
    micro-batches are no longer), not max_seq_len, and never above the micro-batch cap the daemon set after a kill for memory.

    Raises:
        JobConfigError: nothing fits the budget (the message has the estimate and what would fit).
    """
    shape = ModelShape.from_config(model_config, model_row.num_parameters or None)  # 0: not counted at registration
    lengths = [len(example.input_ids) for example in dataset.examples]
    longest = max(lengths)
    budget = config.memory_budget_mb or settings.default_memory_budget_mb
    slow_bfloat16 = bfloat16_matmul_problem()
    asked = config.compute_dtype if config.method == "full" else config.base_dtype
    if asked == "bfloat16" and slow_bfloat16:
        reporter.event(f"the job asks for bfloat16, which will be slow here: {slow_bfloat16}", level="warning", kind="memory")
    request = plan_request(
        config, budget, min(longest, config.max_seq_len), job.micro_batch_cap, prefer_bfloat16=slow_bfloat16 is None,
        allocator=users_allocator(os.environ),
    )
    plan = plan_memory(shape, request)
    reporter.memory_plan(plan.to_json())
    if not plan.fits:
        raise JobConfigError(does_not_fit_message(shape, request, plan))
    reporter.event(f"memory plan: {plan.describe()}", kind="memory", data=plan.to_json())
    return plan


def _report_peak_memory(reporter: JobReporter, plan: MemoryPlan) -> None:
    """Log the measured peak next to the estimate, so that the planner's error stays visible."""
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    estimate = plan.estimate.total
    error = (estimate - peak_mb) / peak_mb
    reporter.memory_plan({**plan.to_json(), "peak_mb": round(peak_mb, 1), "error": round(error, 4)})
    reporter.event(
        f"peak RSS {peak_mb:,.0f} MB (estimate {estimate:,.0f} MB, error {error:+.0%})",
        kind="memory",
        data={"peak_rss_mb": peak_mb, "estimate_mb": estimate, "error": error},
    )


def _resume_from_newest_checkpoint(
    checkpoints_dir: Path,
    config_json: dict[str, Any],
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    reporter: JobReporter,
    sharded: Optional[ShardedAdamW] = None,
) -> TrainingProgress:
    """Restore the newest checkpoint that verifies and was trained with this config; a fresh start if none.

    Checkpoints skipped on the way are deleted: left in place, their higher step numbers would make
    pruning keep them instead of the new ones.
    """
    unusable: list[Path] = []
    progress = TrainingProgress()
    for folder in checkpoint_folders(checkpoints_dir):
        problem = _why_not_resumable(folder, config_json)
        if problem is not None:
            reporter.event(f"skipped checkpoint {folder.name}: {problem}; deleting it", level="warning", kind="checkpoint")
            unusable.append(folder)
            continue
        contents = read_checkpoint(folder)
        position = _continue_position(contents.progress, contents.config["batch_size"], config_json["batch_size"])
        if position is None:
            reporter.event(
                f"skipped checkpoint {folder.name}: its data position is not on a boundary of the new micro-batch {config_json['batch_size']}; deleting it",
                level="warning", kind="checkpoint",
            )
            unusable.append(folder)
            continue
        _restore_weights_and_optimizer(contents, model, optimizer, sharded)
        scheduler.load_state_dict(contents.lr_scheduler_state)
        restore_rng_state(contents.rng_state)
        reporter.event(f"resumed from step {position.step}", kind="checkpoint", data=position.state_dict())
        progress = position
        break
    if unusable:
        remove_checkpoints(unusable)
        reporter.checkpoints_removed(unusable)
    return progress


def _continue_position(progress: TrainingProgress, saved_batch_size: int, batch_size: int) -> Optional[TrainingProgress]:
    """``progress`` counted in micro-batches of ``batch_size`` instead of ``saved_batch_size``; None when it falls inside one.

    Epoch order does not depend on the micro-batch, so the same examples come next.
    """
    examples = progress.batch_in_epoch * saved_batch_size
    if examples % batch_size:
        return None
    return dataclasses.replace(progress, batch_in_epoch=examples // batch_size)


def _why_not_resumable(folder: Path, config_json: dict[str, Any]) -> Optional[str]:
    try:
        verify_checkpoint(folder)
    except CorruptCheckpointError as error:
        return str(error)
    saved_config = read_checkpoint_config(folder)
    changed = sorted(
        key
        for key in (config_json.keys() | saved_config.keys()) - FIELDS_THAT_DO_NOT_CHANGE_TRAINING - FIELDS_THE_PLAN_MAY_CHANGE
        if config_json.get(key) != saved_config.get(key)
    )
    if changed:
        return f"it was trained with a different config (changed: {', '.join(changed)})"
    return None


def _setup_sharding(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, config: ResolvedJobConfig, job_dir: Path, reporter: JobReporter
) -> Optional[ShardedAdamW]:
    """With parameter sharding on, move the weights and AdamW state into shard files under the job folder."""
    if not config.parameter_sharding:
        return None
    sharded = ShardedAdamW(model, optimizer, job_dir / SHARDS_DIRNAME, config.max_grad_norm)
    release_freed_memory()  # the loaded weights now live in the shard files
    reporter.event(
        "parameter sharding: weights and AdamW state in memory-mapped files, "
        + ("optimizer step fused into the backward pass" if config.max_grad_norm is None else "stepped after the gradient norm"),
        kind="memory",
        data={"shard_dir": str(sharded.shard_dir)},
    )
    return sharded


def _close_sharding(sharded: Optional[ShardedAdamW]) -> None:
    """Delete the live shard files (several times the model's size on flash); checkpoints keep their own copies."""
    if sharded is not None:
        sharded.close()


def _checkpoint_contents(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    progress: TrainingProgress,
    rng_state: dict[str, Any],
    config_json: dict[str, Any],
    sharded: Optional[ShardedAdamW],
) -> CheckpointContents:
    """What a checkpoint holds: the weights and optimizer state in memory, or, sharded, copies of the shard files."""
    if sharded is None:
        return CheckpointContents(trainable_state(model), optimizer.state_dict(), scheduler.state_dict(), progress, rng_state, config_json)
    return CheckpointContents(
        {}, sharded.state_dict(), scheduler.state_dict(), progress, rng_state, config_json, shard_files=sharded.checkpoint_files()
    )


def _restore_weights_and_optimizer(
    contents: CheckpointContents, model: torch.nn.Module, optimizer: torch.optim.Optimizer, sharded: Optional[ShardedAdamW]
) -> None:
    if sharded is None:
        load_trainable_state(model, contents.trainable_weights)
        optimizer.load_state_dict(contents.optimizer_state)
    else:
        sharded.load(contents.optimizer_state, contents.shard_files)
