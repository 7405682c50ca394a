"""Parameter sharding for full fine-tuning: fp32 weights, AdamW moments and gradient sums live in mapped files.

Full fine-tuning with plain AdamW keeps four full-size float32 tensors per parameter in RAM (weight,
gradient, two moments): 16 bytes a parameter, 8 GB for a 0.5B model. Here the weights, both moments
and the gradient sum of the accumulation group are slots in memory-mapped files (``shard_files``); the
model's parameters are views onto the weight file. Each parameter's gradient is taken away from
autograd as soon as the backward pass has made it (``register_post_accumulate_grad_hook``), added into
its slot and freed, so the whole model's gradients never exist in RAM at once. The embeddings' gradients
are not made by autograd at all: the chunked loss and the input lookup add theirs straight into the
slot, a block of rows at a time (``jobs.gradient_sink``), and the slot's pages are released as they go.

Without clipping, a parameter's AdamW step runs inside the backward pass of the group's last
micro-batch, the moment its gradient is complete. With clipping, the global norm must be known
first: each parameter's norm is taken during that backward pass, and the steps run right after it,
one parameter after another, reading the next one ahead. A stepped parameter's pages are written back
and dropped from memory; large tensors (embeddings) are stepped in chunks of rows so that AdamW's
temporaries stay small.

The results are bitwise those of ``torch.optim.AdamW`` with ``clip_grad_norm_``: the same torch
functions on the same numbers, in the same order (the first micro-batch's gradient, then ``+=``, or
for a weight a sink writes, zeros and then the same row-block additions into ``.grad``; the
per-tensor norms stacked in parameter order), and AdamW's arithmetic is elementwise, so stepping a
tensor in pieces changes no bit.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from torch.optim.adam import adam

from jobs.gradient_sink import GRADIENT_SINK
from jobs.shard_files import MappedFile, Slot, plan_slots

WEIGHTS_FILENAME = "weights.f32"
EXP_AVG_FILENAME = "exp_avg.f32"
EXP_AVG_SQ_FILENAME = "exp_avg_sq.f32"
GRADIENTS_FILENAME = "gradients.f32"
# What a checkpoint must copy; the gradient sums are scratch between micro-batches.
CHECKPOINTED_FILENAMES = (WEIGHTS_FILENAME, EXP_AVG_FILENAME, EXP_AVG_SQ_FILENAME)
STEPS_KEY = "sharded_adamw_steps"
PARAM_GROUPS_KEY = "optimizer"
STEP_CHUNK_ELEMENTS = 1 << 22  # 16 MB of float32 per piece of a large tensor's step


@dataclass(eq=False)
class _Entry:
    """One trainable parameter and its bookkeeping."""

    name: str
    parameter: torch.nn.Parameter
    slot: Slot
    group_index: int  # into optimizer.param_groups, which load_state_dict replaces with new dicts
    layer: Optional[int]
    steps: int = 0
    has_gradient: bool = False
    is_stepped: bool = False
    norm: Optional[torch.Tensor] = None
    is_written_directly: bool = False  # its sink was opened in this backward pass


class ShardedAdamW:
    """Trains a model's parameters with AdamW, keeping weights and optimizer state in mapped files.

    It replaces ``optimizer.step()`` and ``clip_grad_norm_`` in the loop; the optimizer given only
    holds the hyperparameters per parameter group (and the learning rate the scheduler sets), never state.
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, shard_dir: Path, max_grad_norm: Optional[float]):
        """Move the model's trainable weights into new shard files under ``shard_dir`` and hook into its backward pass.

        Args:
            model: the model, float32, all of it to be trained.
            optimizer: a ``torch.optim.AdamW`` over its parameters (``build_optimizer``); read, never stepped.
            shard_dir: a folder for the live shard files (replaced if it exists).
            max_grad_norm: clip the gradient norm to this; None steps each parameter inside the backward pass.

        Raises:
            ValueError: a trainable parameter that is not float32, or not in any of the optimizer's groups.
        """
        self.optimizer = optimizer
        self.max_grad_norm = max_grad_norm
        self.shard_dir = Path(shard_dir)
        if self.shard_dir.exists():
            shutil.rmtree(self.shard_dir)
        self.shard_dir.mkdir(parents=True)
        named = [(name, parameter) for name, parameter in model.named_parameters() if parameter.requires_grad]
        groups = {id(parameter): index for index, group in enumerate(optimizer.param_groups) for parameter in group["params"]}
        _check_parameters(named, optimizer, groups)
        slots, num_elements = plan_slots([tuple(parameter.shape) for _name, parameter in named])
        self.weights = MappedFile(self.shard_dir / WEIGHTS_FILENAME, num_elements, create=True)
        self.exp_avg = MappedFile(self.shard_dir / EXP_AVG_FILENAME, num_elements, create=True)
        self.exp_avg_sq = MappedFile(self.shard_dir / EXP_AVG_SQ_FILENAME, num_elements, create=True)
        self.gradients = MappedFile(self.shard_dir / GRADIENTS_FILENAME, num_elements, create=True)
        self.layers = decoder_layers(model)
        layer_of = {id(parameter): index for index, layer in enumerate(self.layers) for parameter in layer.parameters()}
        self.entries = [
            _Entry(name, parameter, slot, groups[id(parameter)], layer_of.get(id(parameter))) for (name, parameter), slot in zip(named, slots)
        ]
        for entry in self.entries:
            self._move_into_shard(entry)
            entry.parameter.register_post_accumulate_grad_hook(lambda _parameter, entry=entry: self._take_gradient(entry))
        for index, layer in enumerate(self.layers):
            layer.register_forward_pre_hook(lambda _module, _args, index=index: self._entering_layer(index))
            layer.register_forward_hook(lambda _module, _args, _output, index=index: self._leaving_layer(index))
        for entry in self.entries:
            setattr(entry.parameter, GRADIENT_SINK, _SlotSink(self, entry))
        self._is_last_micro_batch = False
        self._is_in_backward = False

    # The loop's interface (the same as the ordinary optimizer's stepper in jobs/training.py).

    def backward(self, loss: torch.Tensor, is_last_micro_batch: bool) -> None:
        """Backpropagate one micro-batch's loss into the gradient sums (and step, on the last one without clipping)."""
        self._is_last_micro_batch = is_last_micro_batch
        # Out of memory until needed: the output layer's gradient reads its weight again a block of rows at a time.
        for entry in self.entries:
            if entry.layer is None:
                self.weights.release(entry.slot)
        self._is_in_backward = True
        try:
            loss.backward()
        finally:
            self._is_in_backward = False
        for entry in self.entries:
            if entry.is_written_directly:
                entry.is_written_directly = False
                self._complete_gradient(entry)

    def finish_step(self) -> torch.Tensor:
        """Complete the optimizer step of the group whose last micro-batch was backpropagated; returns the gradient norm before clipping."""
        with_gradient = [entry for entry in self.entries if entry.has_gradient]
        if not with_gradient:  # as clip_grad_norm_ and AdamW do: a zero norm and no step
            return torch.tensor(0.0)
        for entry in with_gradient:
            if entry.norm is None:  # its gradient came in an earlier micro-batch only
                entry.norm = _gradient_norm(self.gradients.view(entry.slot))
        total_norm = torch.linalg.vector_norm(torch.stack([entry.norm for entry in with_gradient]), 2.0)
        clip_coefficient = None
        if self.max_grad_norm is not None:
            clip_coefficient = torch.clamp(self.max_grad_norm / (total_norm + 1e-6), max=1.0)
        pending = [entry for entry in with_gradient if not entry.is_stepped]
        for position, entry in enumerate(pending):
            if position + 1 < len(pending):
                self._prefetch_step(pending[position + 1])
            self._step(entry, clip_coefficient)
        self.discard()
        # No parameter holds a .grad, so this changes nothing; it tells the LR scheduler that the optimizer stepped.
        self.optimizer.step()
        return total_norm

    def discard(self) -> None:
        """Forget the current accumulation group (a stop between micro-batches)."""
        for entry in self.entries:
            entry.has_gradient = entry.is_stepped = entry.is_written_directly = False
            entry.norm = None

    # Checkpoints.

    def checkpoint_files(self) -> dict[str, Path]:
        """The live files a checkpoint copies (consistent between optimizer steps)."""
        return {filename: self.shard_dir / filename for filename in CHECKPOINTED_FILENAMES}

    def state_dict(self) -> dict[str, Any]:
        """The small part of the optimizer state that is not in the files: step counts, and the groups' learning rates."""
        # The optimizer holds no state, only its param groups, where the scheduler writes the learning rate.
        return {STEPS_KEY: {entry.name: entry.steps for entry in self.entries}, PARAM_GROUPS_KEY: self.optimizer.state_dict()}

    def load(self, state: dict[str, Any], files: dict[str, Path]) -> None:
        """Restore a checkpoint's shard files and step counts into the live files.

        Raises:
            ValueError: the checkpoint's parameters or file sizes do not match this model.
        """
        steps = state[STEPS_KEY]
        if set(steps) != {entry.name for entry in self.entries}:
            raise ValueError("the checkpoint's sharded optimizer state names other parameters than this model's")
        for filename, mapped in zip(CHECKPOINTED_FILENAMES, (self.weights, self.exp_avg, self.exp_avg_sq)):
            mapped.copy_from(files[filename])
        for entry in self.entries:
            entry.steps = steps[entry.name]
        self.optimizer.load_state_dict(state[PARAM_GROUPS_KEY])

    def close(self) -> None:
        """Delete the live shard files (the parameters keep their mapping until they are freed)."""
        for mapped in (self.weights, self.exp_avg, self.exp_avg_sq, self.gradients):
            mapped.close()
        for entry in self.entries:
            delattr(entry.parameter, GRADIENT_SINK)
        shutil.rmtree(self.shard_dir, ignore_errors=True)

    # Inside the passes.

    def _move_into_shard(self, entry: _Entry) -> None:
        view = self.weights.view(entry.slot)
        with torch.no_grad():
            view.copy_(entry.parameter)
        entry.parameter.data = view
        self.weights.release(entry.slot)

    def _take_gradient(self, entry: _Entry) -> None:
        gradient, entry.parameter.grad = entry.parameter.grad, None
        if gradient is None:  # autograd had nothing for it: a sink wrote its gradient
            return
        gradient_sum = self.gradients.view(entry.slot)
        with torch.no_grad():
            if entry.has_gradient:
                gradient_sum.add_(gradient)
            else:
                gradient_sum.copy_(gradient)
        del gradient
        entry.has_gradient = True
        if not entry.is_written_directly:  # else more comes from a sink; completed after the backward pass
            self._complete_gradient(entry)

    def _open_gradient(self, entry: _Entry) -> torch.Tensor:
        """The gradient slot, for a sink to add into (zeroed at the first micro-batch of a step)."""
        if not entry.has_gradient:
            self.gradients.zero(entry.slot)
            entry.has_gradient = True
        entry.is_written_directly = True
        return self.gradients.view(entry.slot)

    def _release_rows(self, entry: _Entry, rows: slice) -> None:
        self.gradients.release(entry.slot, rows)
        self.weights.release(entry.slot, rows)

    def _complete_gradient(self, entry: _Entry) -> None:
        """The parameter's gradient of this micro-batch is in its slot: measure and step it after the last, else release it."""
        gradient_sum = self.gradients.view(entry.slot)
        if self._is_last_micro_batch:
            entry.norm = _gradient_norm(gradient_sum)
            if self.max_grad_norm is None:
                self._step(entry, None)
                return
        # Needed again at the next micro-batch or the step; until then the page cache or flash holds it.
        self.gradients.release(entry.slot)
        self.weights.release(entry.slot)

    def _entering_layer(self, index: int) -> None:
        # In the backward pass, gradient checkpointing recomputes layer i just before its gradients, so the
        # pass runs from the last layer down: read the layer below ahead, and this layer's optimizer state.
        if not self._is_in_backward:
            self._prefetch_weights(index + 1)
            return
        self._prefetch_weights(index - 1)
        for entry in self._layer_entries(index):
            self.gradients.will_need(entry.slot)
            if self._is_last_micro_batch and self.max_grad_norm is None:
                self.exp_avg.will_need(entry.slot)
                self.exp_avg_sq.will_need(entry.slot)

    def _leaving_layer(self, index: int) -> None:
        # Gradient checkpointing recomputes the layer in the backward pass, which reads its weights again then.
        if not self._is_in_backward:
            for entry in self._layer_entries(index):
                self.weights.release(entry.slot)

    def _prefetch_weights(self, index: int) -> None:
        for entry in self._layer_entries(index):
            self.weights.will_need(entry.slot)

    def _layer_entries(self, index: int) -> list[_Entry]:
        if not 0 <= index < len(self.layers):
            return []
        return [entry for entry in self.entries if entry.layer == index]

    def _prefetch_step(self, entry: _Entry) -> None:
        for mapped in (self.weights, self.exp_avg, self.exp_avg_sq, self.gradients):
            mapped.will_need(entry.slot)

    def _step(self, entry: _Entry, clip_coefficient: Optional[torch.Tensor]) -> None:
        """AdamW on one parameter, in pieces of rows; then its pages go back to the kernel."""
        entry.steps += 1
        entry.is_stepped = True
        group = self.optimizer.param_groups[entry.group_index]
        weight, gradient = entry.parameter.detach(), self.gradients.view(entry.slot)
        exp_avg, exp_avg_sq = self.exp_avg.view(entry.slot), self.exp_avg_sq.view(entry.slot)
        pieces = _row_pieces(weight)
        with torch.no_grad():
            for rows in pieces:
                if clip_coefficient is not None:
                    torch._foreach_mul_([gradient[rows]], clip_coefficient)
                adam(
                    [weight[rows]], [gradient[rows]], [exp_avg[rows]], [exp_avg_sq[rows]], [],
                    # AdamW counts steps in a float tensor it increments before use.
                    [torch.tensor(float(entry.steps - 1))],
                    foreach=group["foreach"], capturable=False, differentiable=False, fused=group["fused"],
                    decoupled_weight_decay=True, amsgrad=False, beta1=group["betas"][0], beta2=group["betas"][1],
                    lr=group["lr"], weight_decay=group["weight_decay"], eps=group["eps"], maximize=False,
                )
                if len(pieces) > 1:  # an embedding: its four tensors would not fit in memory at once
                    for mapped in (self.weights, self.exp_avg, self.exp_avg_sq):
                        mapped.release(entry.slot, rows)
                    self.gradients.drop(entry.slot, rows)
        self.weights.release(entry.slot)
        self.exp_avg.release(entry.slot)
        self.exp_avg_sq.release(entry.slot)
        self.gradients.discard(entry.slot)


def _gradient_norm(gradient: torch.Tensor) -> torch.Tensor:
    # clip_grad_norm_ takes each CPU gradient's norm with torch._foreach_norm; the same call gives the same bits.
    return torch._foreach_norm([gradient], 2.0)[0]


def _row_pieces(tensor: torch.Tensor) -> list[slice]:
    """Slices of whole rows of at most about ``STEP_CHUNK_ELEMENTS`` elements (one slice for small tensors)."""
    if tensor.dim() < 2 or tensor.numel() <= STEP_CHUNK_ELEMENTS:
        return [slice(None)]
    rows_per_piece = max(1, STEP_CHUNK_ELEMENTS // (tensor.numel() // tensor.size(0)))
    return [slice(start, start + rows_per_piece) for start in range(0, tensor.size(0), rows_per_piece)]


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated blocks of the model: its ``ModuleList`` with the most parameters (empty if it has none)."""
    lists = [module for module in model.modules() if isinstance(module, torch.nn.ModuleList)]
    if not lists:
        return []
    return list(max(lists, key=lambda layers: sum(parameter.numel() for parameter in layers.parameters())))


class _SlotSink:
    """A parameter's gradient sink: its slot in the gradient file (``jobs.gradient_sink.GradientSink``)."""

    def __init__(self, stepper: ShardedAdamW, entry: _Entry):
        self._stepper, self._entry = stepper, entry

    def open(self) -> torch.Tensor:
        return self._stepper._open_gradient(self._entry)

    def release_rows(self, rows: slice) -> None:
        self._stepper._release_rows(self._entry, rows)


def _check_parameters(named: list[tuple[str, torch.nn.Parameter]], optimizer: torch.optim.Optimizer, groups: dict[int, int]) -> None:
    not_float32 = [name for name, parameter in named if parameter.dtype != torch.float32]
    if not_float32:
        raise ValueError(f"parameter sharding keeps float32 master weights, but {not_float32[:3]} are not float32; load the model in float32")
    outside = [name for name, parameter in named if id(parameter) not in groups]
    if outside:
        raise ValueError(f"parameters {outside[:3]} are trainable but not in the optimizer; build the optimizer over model.named_parameters()")
    unsupported = {key for group in optimizer.param_groups for key in ("amsgrad", "maximize", "capturable", "differentiable") if group.get(key)}
    if unsupported:
        raise ValueError(f"parameter sharding implements plain AdamW; the optimizer has {sorted(unsupported)} switched on")
