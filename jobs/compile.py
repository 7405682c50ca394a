"""``torch.compile`` of the decoder layers for training, tried behind the job's ``compile`` setting and dropped on any failure.

Regional compilation: each repeated decoder layer's ``forward`` is compiled, not the whole model,
so the work is paid once per distinct layer class (every layer of a model shares one graph, its
weights being the graph's inputs) and the embedding, the mask building and the chunked loss stay
eager. The module objects stay where they are, so state dict keys, checkpoints and saved adapters
have no ``_orig_mod.`` prefixes, and hooks on the layers (parameter sharding's) stay outside the graph.

Shapes are compiled dynamic from the start (``dynamic=True``): rows are padded to the longest row
of their micro-batch and the last micro-batch may hold fewer rows, so static shapes
would compile again for nearly every new shape (then switch to dynamic after the second).

Inductor writes C++ and needs a C++ compiler: without one compilation is not tried (a warning
event says so). Otherwise a trial forward and backward pass of the decoder on the first
micro-batch compiles the layers before training starts, so the compile time is reported on its
own and is not part of the first step's tokens/s. The trial changes nothing: its gradients are
returned by ``torch.autograd.grad`` and dropped (no ``.grad`` is written, no gradient hook runs)
and the random generators are put back. If it raises, or a compiled layer raises later (a new
shape that does not compile), every layer goes back to its eager ``forward`` for the rest of the
run, a warning event gives the reason, and training goes on: the same steps of the same model.
A failure inside a later backward pass is not caught here: it fails the run, which the daemon
resumes from its last checkpoint. Dynamic shapes serve every row length, but a size of 1 is still
specialized, and so is whether a layer's input requires a gradient (not the first layer's under
LoRA): the trial runs the first micro-batch and the same rows cut to one (or doubled, when it has
one), so all four graphs are compiled before the first step. Measured on chat data, a micro-batch
packed into one row otherwise recompiled every layer mid-run for 26 s, a step's time 30 times
over. With matrix-product attention (``jobs/attention.py``, in fast plans) every pass reaches the
layers with a mask of one layout and nothing compiles after the trial (``tests/jobs/test_compile.py``
counts the graphs). Under SDPA a micro-batch whose rows hold one example each and no padding gets no
mask, and a layer compiles once more for it.

Compiled code is cached on disk in ``TORCHINDUCTOR_CACHE_DIR`` (the environment's, else
``<data dir>/cache/inductor``), so a resumed job, or another job of the same model, compiles in a
fraction of the time. Evaluation (no gradients) runs the eager layers: it would need graphs of its own.
"""

from __future__ import annotations

import os
import shutil
import time
import traceback
from dataclasses import replace
from itertools import chain
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch
from torch._dynamo.utils import counters

from jobs.batches import MicroBatch, attention_inputs
from jobs.chunked_loss import causal_lm_of
from jobs.precision import computing_in
from jobs.sharding import decoder_layers
from jobs.training_state import capture_rng_state, restore_rng_state

CACHE_DIR_ENV = "TORCHINDUCTOR_CACHE_DIR"
# Looked for after the compiler inductor is configured with (the CXX environment variable, else g++):
# Termux's clang package has clang++ and c++ but may have no g++.
COMPILER_NAMES = ("c++", "g++", "clang++")
REASON_CHARS = 300

EventSink = Callable[..., None]  # JobReporter.event(message, level=..., kind=..., data=...)


def find_cpp_compiler() -> Optional[str]:
    """The path of the C++ compiler inductor will use: the one it is configured with if it is on PATH, else the first of ``COMPILER_NAMES``; None when there is none."""
    from torch._inductor import config as inductor_config

    configured = inductor_config.cpp.cxx if isinstance(inductor_config.cpp.cxx, (list, tuple)) else (inductor_config.cpp.cxx,)
    for name in [name for name in configured if name] + list(COMPILER_NAMES):
        path = shutil.which(name)
        if path is not None:
            return path
    return None


def use_inductor_cache_dir(default: Path) -> Path:
    """Point inductor's on-disk cache at ``default`` unless the environment already names one; returns the folder in use."""
    folder = Path(os.environ.get(CACHE_DIR_ENV) or default)
    os.environ[CACHE_DIR_ENV] = str(folder)
    return folder


class CompiledLayers:
    """The decoder layers of a model with compiled forwards, each falling back to its eager one, all together, on the first failure."""

    def __init__(self, layers: list[torch.nn.Module], on_failure: Callable[[BaseException], None]):
        self.layers = layers
        self.failure: Optional[BaseException] = None
        self._on_failure = on_failure
        self._eager = [layer.forward for layer in layers]
        for layer, eager in zip(layers, self._eager):
            # An instance attribute: Module.__call__ (and its hooks) stays as it is and calls this.
            layer.forward = self._guarded(torch.compile(eager, dynamic=True), eager)

    def _guarded(self, compiled: Callable[..., Any], eager: Callable[..., Any]) -> Callable[..., Any]:
        def forward(*args: Any, **kwargs: Any) -> Any:
            if self.failure is not None or not torch.is_grad_enabled():
                return eager(*args, **kwargs)
            try:
                return compiled(*args, **kwargs)
            except Exception as error:
                self.fall_back(error)
                return eager(*args, **kwargs)

        return forward

    def fall_back(self, error: BaseException) -> None:
        """Put every layer back on its eager forward for the rest of the run (once; later calls do nothing)."""
        if self.failure is not None:
            return
        self.failure = error
        for layer in self.layers:
            del layer.forward  # the class's forward again
        self._on_failure(error)


def compile_decoder_layers(
    model: torch.nn.Module,
    batches: Iterator[MicroBatch],
    autocast_dtype: Optional[torch.dtype],
    default_cache_dir: Path,
    event: EventSink,
    max_rows: int,
) -> tuple[Iterator[MicroBatch], Optional[CompiledLayers]]:
    """Compile ``model``'s decoder layers for training and check them on the first micro-batch; eager when that cannot be done.

    Args:
        model: the model about to be trained (a causal LM, or a PEFT model around one), trainable parameters set up.
        batches: the micro-batch stream the training loop will read.
        autocast_dtype: the dtype the loop will multiply in (``jobs.precision.computing_in``; None: the weights'), so that the trial compiles the same graph.
        default_cache_dir: inductor's cache folder when ``TORCHINDUCTOR_CACHE_DIR`` is not set.
        event: records an event for the job (``JobReporter.event``).
        max_rows: the most rows a micro-batch can have (the job's batch_size): above 1, the trial
            also compiles the row count the first micro-batch does not have (one row or two).

    Returns:
        The stream to train on (the same micro-batches, the first one included), and the compiled
        layers, or None when the model trains eager (no compiler, no layers, or the trial failed).
    """
    compiler = find_cpp_compiler()
    if compiler is None:
        event(
            "compile: no C++ compiler found (looked for $CXX, " + ", ".join(COMPILER_NAMES) + "); training runs eager. "
            "Install one (in Termux: pkg install clang) to use compile",
            level="warning", kind="compile", data={"path": os.environ.get("PATH", "")},
        )
        return batches, None
    layers = decoder_layers(causal_lm_of(model))
    if not layers:
        event("compile: the model has no repeated decoder layers to compile; training runs eager", level="warning", kind="compile")
        return batches, None
    from torch._inductor import config as inductor_config

    inductor_config.cpp.cxx = (compiler,)
    cache_dir = use_inductor_cache_dir(default_cache_dir)

    def report_failure(error: BaseException) -> None:
        reason = _one_line(error)
        event(
            f"compile failed, training goes on eager: {reason}",
            level="warning", kind="compile",
            data={"error_type": type(error).__name__, "traceback": "".join(traceback.format_exception(type(error), error, error.__traceback__))},
        )

    compiled = CompiledLayers(layers, report_failure)
    first = next(batches)
    started, graphs_before = time.perf_counter(), counters["stats"]["unique_graphs"]
    try:
        for batch in (first, _other_row_count(first, max_rows)):
            if batch is not None:
                _trial_step(model, layers, batch, autocast_dtype)
    except Exception as error:
        compiled.fall_back(error)
    if compiled.failure is not None:
        return chain([first], batches), None
    seconds, graphs = time.perf_counter() - started, counters["stats"]["unique_graphs"] - graphs_before
    event(
        f"compiled {len(layers)} decoder layers ({type(layers[0]).__name__}, {graphs} graphs) in {seconds:.1f} s with {compiler}; cache {cache_dir}",
        kind="compile",
        data={"layers": len(layers), "graphs": graphs, "seconds": round(seconds, 2), "compiler": compiler, "cache_dir": str(cache_dir)},
    )
    return chain([first], batches), compiled


def _other_row_count(batch: MicroBatch, max_rows: int) -> Optional[MicroBatch]:
    """``batch`` with one row if it has several, or with its row twice if it has one and a micro-batch may have more; None if neither.

    Dynamic shapes still specialize a size of 1: a layer that has seen only micro-batches of several
    rows compiles again (26 s for SmolLM2's layers on a 2-core x86 box) at the first micro-batch packed into
    one row, in the middle of training, and the other way round. The trial compiles both kinds up front.
    """
    if batch.input_ids.shape[0] > 1:
        rows = [0]
    elif max_rows > 1:
        rows = [0, 0]
    else:
        return None
    return replace(
        batch, input_ids=batch.input_ids[rows], attention_mask=batch.attention_mask[rows], labels=batch.labels[rows],
        position_ids=None if batch.position_ids is None else batch.position_ids[rows],
    )


def _trial_step(model: torch.nn.Module, layers: list[torch.nn.Module], batch: MicroBatch, autocast_dtype: Optional[torch.dtype]) -> None:
    """A forward and backward pass of the decoder on ``batch`` that leaves no trace: no gradients kept, the generators put back.

    The backward pass runs down to the lowest trainable weight of the layers, and only that one's
    gradient is asked for: every layer's compiled backward runs, and no full set of gradients is
    held (parameter sharding's budget has no room for it).
    """
    causal_lm = causal_lm_of(model)
    decoder = causal_lm.base_model if causal_lm.base_model is not causal_lm else causal_lm
    lowest = next((parameter for layer in layers for parameter in layer.parameters() if parameter.requires_grad), None)
    rng_state = capture_rng_state()
    was_training = model.training
    model.train()
    try:
        with computing_in(model, autocast_dtype):
            output = decoder(input_ids=batch.input_ids, **attention_inputs(batch.attention_mask, batch.position_ids), use_cache=False)
        hidden = output[0] if isinstance(output, tuple) else output.last_hidden_state
        if lowest is not None and hidden.requires_grad:
            torch.autograd.grad(hidden.float().sum(), [lowest], allow_unused=True)
    finally:
        restore_rng_state(rng_state)
        model.train(was_training)


def _one_line(error: BaseException) -> str:
    text = next((line.strip() for line in str(error).splitlines() if line.strip()), "")
    reason = f"{type(error).__name__}: {text}" if text else type(error).__name__
    return reason if len(reason) <= REASON_CHARS else reason[: REASON_CHARS - 3] + "..."
