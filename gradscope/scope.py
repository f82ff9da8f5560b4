"""watch()/Scope: attach hooks to a model, record statistics per step, detach cleanly.

Activations are measured by forward hooks; gradients are read once they are final,
at the optimizer's step pre-hook (or at ``scope.step()`` without an optimizer).
Full backward hooks on modules are never used: they break with in-place
activations and are skipped under ``torch.compile``.
"""

from __future__ import annotations

import math
import os
import sys
import time
import warnings
import weakref
from typing import Any

import torch
from torch import Tensor

from gradscope import (
    amp,
    carryover,
    compiled,
    distributed,
    linkage,
    replay,
    stats,
    through_time,
    tracking,
)
from gradscope.budget import (
    AUTO_BASE,
    WARMUP_RECORDS,
    Budget,
    DetailCadence,
    GradientJump,
)
from gradscope.errors import GradscopeWarning
from gradscope.history import History, StepRecord
from gradscope.judge import judge, validate_config
from gradscope.modelinfo import (
    ModelInfo,
    describe,
    hooked_modules,
    library_defined,
    own_parameters,
    parametrization_parts,
)
from gradscope.plugins import PluginRunner
from gradscope.recorder import Recorder
from gradscope.report import Report

#: Forward passes without any recorded step before gradscope says so (once).
UNRECORDED_WARN = 1000
#: Training steps whose targets all join the constant prediction's pool (light steps
#: included); later only the detail steps' do (by then the class frequencies are known,
#: and a long run pays nothing on its light steps).
POOL_STEPS = 100
#: Deferred light steps are built into records in batches of at most this many (see
#: Scope._defer_light_step; the gradient-jump window sees each step when it is deferred).
DEFERRED_ROWS = 64


class Scope:
    """A live attachment of gradscope to one model; use through :func:`watch`.

    Args:
        model: any ``torch.nn.Module``.
        optimizer: when given, each ``optimizer.step()`` records a step automatically.
        scaler: a ``torch.amp.GradScaler``; gradients are then read after unscaling.
        every: record one step in ``every``; on the others the hooks return at once.
        config: threshold overrides for the plugins, keyed by plugin name.
        full: measure everything on every recorded step, exactly: max |g|, exact non-finite
            counts, zeros of every module, whole activations and whole update norms.
        detail_every: the costlier statistics (update sizes, mean and max |g|, activation
            size, zeros, silent units and saturation, weight-row symmetry) run on one
            recorded step in this many (and on the first ten); gradient norms, the
            non-finite checks and the loss run on every recorded step.  The default
            (None) is one in 5 for the first 100 recorded steps (a short run is seen
            close to its end), then as often as keeps the detail steps'
            measured extra time near 3% of training, between one in 10 and one in 50
            (:class:`gradscope.budget.DetailCadence`; ``report.overhead`` says what it
            chose; under DDP/FSDP2 it stays one in 10, so the ranks agree).  A number
            given here is kept exactly.
        sample_rows: activation shape statistics use the first rows of each batch.
        unit_window: a ReLU unit counts as dead once silent on every detail step over this
            many training steps (and on at least 2 detail steps in a row).
        history_size: most records kept in memory.
        budget: keep gradscope's own time under this fraction of a step (0.03 = 3%):
            gradient norms every recorded step, activation statistics as often as fits;
            if the gradient checks alone cost more, one step in 2..16 is recorded.
        nan_origin: when the gradients or the loss first turn NaN/Inf, run the step's
            forward again (same weights and inputs, before the optimizer applies them) to
            name the first module whose output is non-finite.  Healthy steps pay only for
            keeping references to the step's inputs.
        name: the model's name in reports (default: its class name).
        parts: name the parts of a model trained in parts, e.g. ``{"generator": model.G,
            "discriminator": model.D}`` (modules or module names); by default they are read
            from the optimizer's parameter groups when it has several.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        scaler: Any = None,
        every: int = 1,
        *,
        config: dict[str, Any] | None = None,
        full: bool = False,
        detail_every: int | None = None,
        sample_rows: int = 32,
        unit_window: int = 5,
        history_size: int = 1024,
        name: str | None = None,
        budget: float | None = None,
        nan_origin: bool = True,
        parts: dict[str, Any] | None = None,
    ) -> None:
        _validate(model, optimizer, scaler, every)
        validate_config(config)
        self.model = model
        self.optimizer = optimizer
        self.scaler = scaler
        self.every = int(every)
        self.config = dict(config or {})
        self.full = full
        self.detail_every = 1 if full else max(1, int(detail_every or AUTO_BASE))
        self.sample_rows = sample_rows
        self.unit_window = unit_window
        self.name = name or type(model).__name__
        self.budget = Budget(fraction=budget) if budget is not None else None
        #: The default's cost-paced detail steps (None: a fixed ``detail_every`` or a budget).
        self._cadence = (
            DetailCadence() if detail_every is None and not full and budget is None else None
        )
        self.nan_origin = bool(nan_origin)
        self.parts = parts

        # Lazy modules' parameters join once materialised (see _track_new_params).
        named = tracking.trainable(model)
        self._lazy_ids = {id(p) for p in model.parameters() if tracking.is_uninitialized(p)}
        self._opt_size = tracking.optimizer_size(optimizer)
        self._param_names = [n for n, _ in named]
        self._params = [p for _, p in named]
        self._lookout = tracking.Lookout(model, self._params)
        self._modules = hooked_modules(model)
        owner = _owners(model, self._modules)
        #: Modules owning parameters directly whose class is a library's (see
        #: modelinfo.library_defined): what only an optional input reads there is by design.
        self._library_owners = _library_owners(model, set(owner.values()))
        self._history = History(
            param_names=self._param_names,
            param_modules=[owner.get(n, "") for n in self._param_names],
            module_names=[n for n, _ in self._modules],
            module_types=[type(m).__name__ for _, m in self._modules],
            param_ndims=[p.dim() for p in self._params],
            capacity=history_size,
        )
        self._measure = self._recorder(full, sample_rows, unit_window)
        self._setup_extensions(model, scaler, optimizer)  # DDP/FSDP2, GradScaler, compile
        if self._ranks is not None:
            # Ranks exchange the detail steps' values: they must agree on which steps those
            # are, so the cadence stays the fixed one (each rank measures its own times).
            self._cadence = None
        #: Light steps whose gradient jumped also measure their update (None: every step
        #: does already, or ranks would have to agree on which steps do).
        self._jumps = GradientJump() if self._ranks is None and not full else None
        #: Whether gradients are reset between steps (not under DDP/FSDP2: their
        #: all-reduce rewrites the gradient between backward and the step).
        self._carry = carryover.CarryCheck() if self._ranks is None else None
        self._calls = replay.CallRecorder(model, _compiler_disable)
        self._replay_calls: list[tuple[int, Tensor | None, Tensor | None]] | None = None
        self._nonfinite_seen = False
        self._init_run_state()
        self._plan_step()
        self.model_info: ModelInfo = self._describe()

    def _init_run_state(self) -> None:
        """Counters and per-run state the hooks update as training goes."""
        self._runner = PluginRunner()
        self._on_step_hook = self._runner.pm.hook.gradscope_on_step
        self._handles: list[Any] = []
        self._module_handles: list[Any] = []
        self._children_hooked = False
        self._root_called = False
        self._hook_fns: list[tuple[Any, Any]] | None = None
        self._root_hooks: tuple[Any, Any] | None = None
        self._step = 0
        self._rank: list[int | None] = [None] * len(self._modules)
        self._shapes: list[tuple[int, ...] | None] = [None] * len(self._modules)
        self._returned: set[int] = set()  # modules whose output the model returns
        self._next_rank = 0
        self._reset_step_state()
        self._loss: Tensor | None = None
        self._forward_since_step = False
        self._overhead = 0.0
        self._overhead_total = 0.0
        self._just_recorded = 0  # training steps since the last recorded one, once recorded
        self._order_changed = False
        self._warned_unseen = False
        self._detail_now = True
        self._hooks_live = True
        self._origin_note: str | None = None
        #: The first container (a module gradscope does not hook) whose own code made a
        #: replayed step's NaN/Inf: its inputs finite, its output not (see _locate_origin).
        self._nonfinite_inside: dict[str, Any] | None = None
        self._last_recorded_step = -1
        self._update_pending: StepRecord | None = None  # a light step measuring its update
        self._producer: weakref.ref | None = None  # the watched model that feeds this one
        self._feeds_another = False
        #: The logged loss is another trainable network's verdict on this model's output
        #: (False until found; a device tensor read only when the run is reported).
        self._judged_by_another: bool | Tensor = False
        self._consumer_calls_max = 0  # most calls per step of the model this one feeds
        self._root_calls = 0
        self._root_calls_max = 0
        self._in_with = False
        self._unrecorded_calls = 0
        self._warned_no_step = False
        self._fired_unmeasured: set[int] = set()
        #: Modules that ran with gradients off inside a training forward (torch.no_grad()
        #: around one layer): autograd records nothing for them, so they get no gradient.
        self._ran_without_grad: set[int] = set()
        #: Modules seen running with gradients off outside a call of the model (a loop
        #: calling its parts, or validation): a part never seen with them on ran only so.
        self._seen_without_grad: set[int] = set()
        self._in_training_forward = False
        #: Light steps read but not yet built into records: (step, gradient L2 norms,
        #: loss, their sum, own seconds); built by _flush_light.
        self._rows: list[tuple[int, list[float], float | None, float]] = []
        self._fast_ok = False  # set by attach(): whether light steps may be deferred
        self._fast_light = False  # this step may be deferred (set by _plan_step)
        self._deferred_now = False  # this step was deferred (its post-hook ends it)
        self._light_end = 0.0  # when the last deferred step ended
        #: The last detail record's activation columns (see _follow_activity).
        self._last_detail_acts: dict[str, list[float]] | None = None
        self._untimed = 0  # deferred steps ended since the cadence last timed one

    @property
    def history(self) -> History:
        """What was recorded so far (light steps kept for a batch are built first)."""
        self._flush_light()
        return self._history

    def _setup_extensions(self, model: torch.nn.Module, scaler: Any, optimizer: Any) -> None:
        """What a plain eager single-process run does not need (docs/distributed.md)."""
        # DDP/FSDP2 under torch.distributed: each recorded step is combined across ranks.
        self._ranks = distributed.RankSync.for_model(model, self._params, self._history)
        self._measure.ranks = self._ranks
        # GradScaler: steps it skipped for overflow never reach the optimizer's hooks.
        self._skips = amp.SkipCounter.for_scope(scaler, optimizer, self._on_skipped_step)
        # torch.compile's module: hooks outside the compiled graph only (compiled.py).
        self._compiled = compiled.is_compiled(model)
        self._losses_logged = 0  # log_loss() calls this step (gradient accumulation)

    # -- attaching -------------------------------------------------------------
    def __enter__(self) -> Scope:
        if self._in_with:
            raise RuntimeError(
                "This scope is already inside a `with` block; a nested `with` on the same "
                "scope would detach it when the inner block ends and drop the outer block's "
                "steps, so use one `with` per scope."
            )
        if not self.attached:
            self.attach()
        self._in_with = True
        return self

    def __exit__(self, *exc: object) -> None:
        self._in_with = False
        self.detach()

    @property
    def attached(self) -> bool:
        """True while hooks are registered on the model."""
        return bool(self._handles)

    def attach(self) -> None:
        """Register the forward hooks (and optimizer step hooks)."""
        if self._handles:
            raise RuntimeError("This scope is already attached; use one `with` block per scope.")
        if self.budget is not None:
            self.budget.last_step_end = None  # time spent detached is not a training step
        if self._cadence is not None:
            # The first step after attaching is timed from here (it may be a detail step,
            # and a loop that attaches per block of steps must not leave those untimed).
            self._cadence.meter.last_step_end = time.perf_counter()
        try:
            if self._compiled:
                self._handles.append(self.model.register_forward_hook(self._step_began))
            else:
                if self.nan_origin:
                    self._calls.attach(own_hooks=False)  # the root hooks below call it
                self._attach_step_hooks()
            if self.optimizer is not None:
                self._handles.append(self.optimizer.register_step_pre_hook(self._on_pre_step))
                self._handles.append(self.optimizer.register_step_post_hook(self._on_post_step))
            if self._skips is not None:
                self._skips.attach()
            self._sync_module_hooks()
            self._fast_ok = self._light_steps_deferrable()
            self._plan_step()
        except BaseException:
            self.detach()
            raise

    def _light_steps_deferrable(self) -> bool:
        """Whether light steps may keep their values for a batch of records (the common
        eager single-process loop with the default cadence; everything else, and a plugin
        that watches each step, records each step as it ends)."""
        return (
            self.optimizer is not None
            and self._cadence is not None
            and self.every == 1
            and self.scaler is None
            and self._ranks is None
            and not self._compiled
            and not self._on_step_hook.get_hookimpls()
        )

    def _attach_step_hooks(self) -> None:
        """The hooks that stay on every step: the root's (a step began; which watched model
        feeds this one).  A loop that calls the root's children one by one (a GAN) gets
        hooks on the children too, once a step is seen without a root call."""
        root = self.model
        if isinstance(root, torch.jit.ScriptModule):  # TorchScript refuses hooks
            return
        if self._root_hooks is None:  # wrapped once (~30 us each)
            wrap = _compiler_disable
            self._root_hooks = (wrap(self._root_pre), wrap(self._root_post))
        pre, post = self._root_hooks
        self._handles.append(root.register_forward_pre_hook(pre, with_kwargs=True))
        self._handles.append(root.register_forward_hook(post, always_call=True))

    def _root_pre(self, module: torch.nn.Module, args: Any, kwargs: Any) -> None:
        """The root's one pre-hook: keep the call's inputs for a NaN replay, note the step
        (and, over the first steps, which other watched model feeds this one: a GAN)."""
        if self.nan_origin:
            self._calls.before(module, args, kwargs)
        self._in_training_forward = torch.is_grad_enabled()
        if not self._in_training_forward:
            return  # validation under no_grad is not part of the training step
        self._forward_since_step = True
        self._root_called = True
        if not (self._history.recorded or self._rows):
            self._count_unrecorded()
        if self._step < linkage.FOLLOW_STEPS:
            self._follow_producer(args)

    def _root_post(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        """The root's one forward hook (called even when the forward raises)."""
        if self.nan_origin:
            self._calls.after(module, args, output)
        self._in_training_forward = False
        if self._hooks_live and torch.is_grad_enabled():
            self._measure.add_model_output(stats.first_float_tensor(output))
        if self._fresh_outputs:
            returned = {stats.storage_key(x) for x in stats.float_tensors(output)}
            returned.discard(None)
            self._returned.update(
                j for j, x in self._fresh_outputs.items() if stats.storage_key(x) in returned
            )
            self._fresh_outputs = {}
        if self._step < linkage.FOLLOW_STEPS and torch.is_grad_enabled():
            linkage.note_output(self, output)


    def _sync_module_hooks(self) -> None:
        """Module hooks are on only for steps that measure activations: light steps pay
        nothing per module (the NaN replay puts them back for its one forward)."""
        want = self._hooks_live and bool(self._handles) and not self._compiled
        if want and not self._module_handles:
            self._attach_module_hooks()
        elif not want and self._module_handles:
            self._remove_module_hooks()

    def _attach_module_hooks(self) -> None:
        if self._hook_fns is None or len(self._hook_fns) != len(self._modules):
            # Built once: wrapping each hook for torch.compile costs ~30 us.
            self._hook_fns = [
                (
                    self._forward_hook(j),
                    self._sequence_input_hook(j)
                    if through_time.is_sequence_layer(module)
                    else None,
                )
                for j, (_, module) in enumerate(self._modules)
            ]
        for (_, module), (hook, pre_hook) in zip(self._modules, self._hook_fns, strict=True):
            self._module_handles.append(module.register_forward_hook(hook))
            if pre_hook is not None:
                self._module_handles.append(module.register_forward_pre_hook(pre_hook))

    def _remove_module_hooks(self) -> None:
        while self._module_handles:
            self._module_handles.pop().remove()

    def detach(self) -> None:
        """Remove every hook gradscope registered; safe to call twice."""
        self._flush_light()
        self._fast_ok = self._fast_light = self._deferred_now = False
        self._remove_module_hooks()
        while self._handles:
            self._handles.pop().remove()
        self._children_hooked = False
        self._calls.detach()
        if self._carry is not None:
            self._carry.disarm()
        if self._skips is not None:
            self._skips.detach()

    # -- recording ---------------------------------------------------------------
    @property
    def recording(self) -> bool:
        """Whether the step in progress is one that gets recorded."""
        every = self.every * (self.budget.record_every if self.budget is not None else 1)
        return self._step % every == 0

    def _plan_step(self) -> None:
        """Decide, once per step, what the coming step measures (the hooks read two flags)."""
        recorded = self._history.recorded + len(self._rows)
        if self.budget is not None:
            detail = self.budget.measures_activations(recorded)
        elif self._cadence is not None:
            detail = self._cadence.is_detail(recorded)
        else:
            # The first records are all detailed: initialisation problems show at the start.
            detail = recorded < WARMUP_RECORDS or recorded % self.detail_every == 0
        every = self.every if self.budget is None else self.every * self.budget.record_every
        recording = every == 1 or self._step % every == 0  # as `self.recording`
        self._recording_now = recording  # what the step hooks read
        self._detail_now = detail
        live = self._hooks_live = recording and detail
        # A light step with nothing else due keeps its values for a later batch of records
        # (see _defer_light_step); the rest of the conditions are fixed at attach().
        self._fast_light = (
            self._fast_ok and recording and not detail and self._warned_unseen
            and not self._order_changed
        )
        self._calls.active = recording
        if self._handles and (live or self._module_handles):
            self._sync_module_hooks()

    @property
    def step_index(self) -> int:
        """How many steps have been taken since attaching."""
        return self._step

    def log_loss(self, loss: Tensor | float) -> None:
        """Attach the loss to the current step (or to the step just taken); never syncs.

        Several calls within one step (gradient accumulation) log the step's mean.
        """
        if not self._handles:  # not attached
            raise RuntimeError(
                "scope.log_loss() was called on a detached scope (after its `with` block "
                "ended?); it would overwrite a recorded loss, so log the loss inside the block."
            )
        tensor = isinstance(loss, Tensor)
        value = loss.detach() if tensor else torch.tensor(float(loss))
        # Most light steps do nothing with the loss's graph (reading grad_fn costs ~1 us).
        pooled = self._hooks_live or self._step < POOL_STEPS
        if tensor and pooled and loss.grad_fn is not None:
            if not self._hooks_live:  # a light step among the first POOL_STEPS
                self._measure.pool_targets(loss)
            else:
                self._measure.add_loss(loss)
                if self._step < linkage.FOLLOW_STEPS and self._judged_by_another is False:
                    own = {id(p) for p in self._params}
                    self._judged_by_another = linkage.judged_by_another_network(loss, own)
        if self._forward_since_step or not (self._history.records or self._rows):
            self._losses_logged += 1
            if self._loss is None or self._losses_logged == 1:
                self._loss = value
            else:  # running mean, in float32 at least
                mean = self._loss.float()
                self._loss = mean + (value.float() - mean) / self._losses_logged
        elif self.history.records[-1].step == self._step - 1:  # (builds deferred records)
            self._history.set_loss(self._step - 1, value)

    def step(self, loss: Tensor | float | None = None) -> None:
        """Record a step by hand, after ``loss.backward()``, when no optimizer is attached."""
        if self.optimizer is not None:
            raise RuntimeError(
                "This scope records at optimizer.step(); call scope.log_loss(loss) to add "
                "the loss instead of scope.step()."
            )
        if loss is not None:
            self.log_loss(loss)
        if self._carry is not None and self._carry.armed:
            self._settle_carry()
        check = self.recording and self._detail_now
        if self.recording:
            t0 = time.perf_counter()
            self._track_new_params()
            self._collect_grads()
            self._finish_step(measure_update=False, started=t0)
        self._end_step()
        if check and self._recording_now:
            self._arm_carry()

    def _forward_hook(self, j: int):
        def hook(module: torch.nn.Module, args: Any, output: Any) -> None:
            if self._replay_calls is not None:
                self._replayed_output(j, args, output)
                return
            if not torch.is_grad_enabled():
                if self._in_training_forward:  # one layer under no_grad in a training forward
                    self._ran_without_grad.add(j)
                else:
                    self._seen_without_grad.add(j)
                return  # validation under no_grad is not part of the training step
            self._forward_since_step = True  # also set by the root's hook, on every step
            if not self._hooks_live:
                return
            self._hooks_fired += 1
            t0 = time.perf_counter()
            if self.nan_origin and self._calls.outside_calls:
                self._calls.watch_child(self._modules[j][0])  # a GAN-style direct call
            if type(output) is Tensor and output.is_floating_point():
                x: Tensor | None = output
            else:
                x = stats.first_float_tensor(output)
            if x is not None:
                if self._rank[j] is None:
                    self._first_call(j, x)
                given = args[0] if len(args) == 1 and type(args[0]) is Tensor else args
                if type(given) is not Tensor or not given.is_floating_point():
                    given = stats.first_float_tensor(args)
                self._measure.add_output(j, x, given)
                self._follow_repeated_call(j, x)
            else:
                self._fired_unmeasured.add(j)  # it ran, but returned no float tensor
            self._overhead += time.perf_counter() - t0

        # Under torch.compile the hook runs eagerly (a graph break) instead of being traced:
        # traced, its changing Python state would force a recompile at every step.
        return _compiler_disable(hook)

    def _hook_children(self) -> None:
        """Pre-hooks on the root's direct children: they say a step began when the loop
        calls them one by one (the root itself is never called)."""
        if self._children_hooked or isinstance(self.model, torch.jit.ScriptModule):
            return
        self._children_hooked = True
        for child in self.model.children():
            if not isinstance(child, torch.jit.ScriptModule):
                hook = _compiler_disable(self._child_in)
                self._handles.append(child.register_forward_pre_hook(hook))

    def _child_in(self, module: torch.nn.Module, args: Any) -> None:
        if torch.is_grad_enabled():
            self._forward_since_step = True  # log_loss() needs to know a step began

    def _follow_producer(self, args: Any) -> None:
        """Follow which other watched model feeds this one (a GAN), from the root's inputs."""
        self._root_calls += 1
        self._root_calls_max = max(self._root_calls_max, self._root_calls)
        producer = linkage.producer_of(self, args)
        if isinstance(producer, Scope):
            self._producer = weakref.ref(producer)
            producer._feeds_another = True
        up = self._producer() if self._producer is not None else None
        if up is not None:
            up._consumer_calls_max = max(up._consumer_calls_max, self._root_calls)

    def _rival(self, final: bool = False) -> dict[str, Any]:
        """What the first steps showed about other watched models, for the plugins to
        judge: whether this model's output fed another watched model (and that model's
        most calls in one step), whether another watched model fed this one, this
        model's most top-level calls in one step, and whether its loss was an unwatched
        trainable network's verdict on it."""
        judged = self._judged_by_another
        # A pending device answer is read at report time only (one host sync per step).
        judged = bool(judged) if final else judged is True
        if not self._feeds_another and self._producer is None and not judged:
            return {}
        return {
            "linked": {
                "feeds_another": self._feeds_another,
                "consumer_calls_per_step": self._consumer_calls_max,
                "fed_by_another": self._producer is not None,
                "calls_per_step": self._root_calls_max,
                "judged_by_another": judged,
            }
        }

    def _sequence_input_hook(self, j: int):
        def pre_hook(module: torch.nn.Module, args: Any) -> Any:
            if self._replay_calls is not None or not self._hooks_live:
                return None
            if not torch.is_grad_enabled():
                return None

            def sink(first: Tensor, last: Tensor) -> None:
                self._measure.add_time_grads(j, first, last)

            return through_time.watch_input(module, args, sink)

        return _compiler_disable(pre_hook)

    def _follow_repeated_call(self, j: int, x: Tensor) -> None:
        """A module called again in the same step may be a recurrent cell: follow the
        gradient of each call's output (the first call's is hooked at the second call)."""
        calls = self._measure.call_grads.get(j)
        if calls is None:
            first = self._first_output.pop(j, None)
            if first is None:
                self._first_output[j] = x  # the first call: nothing to follow yet
                return
            calls = self._measure.calls_of(j)
            through_time.watch_call_output(first, calls.next_sink())
        through_time.watch_call_output(x, calls.next_sink())

    def _count_unrecorded(self) -> None:
        """Warn once when many forwards ran with gradients but no step was ever recorded."""
        self._unrecorded_calls += 1
        if self._warned_no_step or self._unrecorded_calls < UNRECORDED_WARN:
            return
        self._warned_no_step = True
        how = (
            "is the optimizer given to watch() the one whose .step() you call (not one "
            "created after watch())?"
            if self.optimizer is not None
            else "without an optimizer, call scope.step(loss=loss) after loss.backward()"
        )
        warnings.warn(
            f"gradscope: {UNRECORDED_WARN} forward passes ran with gradients enabled but no "
            f"training step was recorded; {how}",
            GradscopeWarning,
            stacklevel=_user_frame(),
        )

    def _track_new_params(self) -> None:
        """Include parameters that appeared since watch(): lazy modules that materialised
        (silently) and parameters added later (with a warning), from this step on."""
        size = tracking.optimizer_size(self.optimizer)
        changed = self._lazy_ids or size != self._opt_size
        if not changed and not (self._detail_now and self._lookout.maybe_new()):
            return
        self._opt_size = size
        added = tracking.new_parameters(self.model, self._params)
        if not added:
            return
        self._lookout.add([p for _, p in added])
        owner = _owners(self.model, self._modules)
        names = [n for n, _ in added]
        self._param_names = [*self._param_names, *names]  # History holds the old list
        self._params.extend(p for _, p in added)  # the recorder's list too
        self._measure.refresh_params()
        tracking.extend_history(
            self.history, names, [owner.get(n, "") for n in names], [p.dim() for _, p in added]
        )
        later = [n for n, p in added if id(p) not in self._lazy_ids]
        self._lazy_ids -= {id(p) for _, p in added}
        self._order_changed = True
        if later:
            shown = ", ".join(later[:5]) + (" ..." if len(later) > 5 else "")
            warnings.warn(
                f"gradscope: {len(later)} trainable parameter(s) appeared after watch() "
                f"({shown}: added or unfrozen); they are measured from step {self._step} on.",
                GradscopeWarning,
                stacklevel=_user_frame(),
            )

    def _step_began(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        """The compiled model's only forward hook (outside its graph): a step began."""
        if torch.is_grad_enabled():
            self._forward_since_step = True

    def _replayed_output(self, j: int, args: Any, output: Any) -> None:
        """During the replay: this call of module ``j`` (its output and input, checked for
        NaN/Inf once the replay ends), in the order calls complete."""
        x = stats.first_float_tensor(output)
        measured = x if x is not None and x.numel() else None
        self._replay_calls.append((j, measured, stats.first_float_tensor(args)))

    def _last_called(self) -> int | None:
        """The module that ran last in the forward so far (the model's output layer)."""
        ranked = [j for j, rank in enumerate(self._rank) if rank is not None]
        return max(ranked, key=lambda j: self._rank[j]) if ranked else None

    def _first_call(self, j: int, x: Tensor) -> None:
        """Note the call order and output shape of a module the first time it runs."""
        self._rank[j] = self._next_rank
        self._next_rank += 1
        self._shapes[j] = tuple(x.shape)
        self._order_changed = True
        self._fresh_outputs[j] = x

    def _on_pre_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if self._fast_light and self._defer_light_step():
            return
        self._flush_light()
        if self._carry is not None and self._carry.armed:
            self._settle_carry()
        if not self._recording_now:
            return
        t0 = time.perf_counter()
        self._track_new_params()
        if not self._detail_now:
            # Recorded now, before the optimizer applies the gradients: if they are NaN,
            # the forward can still be replayed on the weights that made them.
            scale = _scaler_scale(self.scaler)
            record = self._measure.light_record(self._step, self._loss, scale, self._hooks_fired)
            if record is None:
                self._collect_grads()
            self._finish_step(measure_update=False, started=t0, record=record)
            self._watch_for_jump()
            return
        self._collect_grads()
        # Update sizes ride with the costlier statistics (every step in diagnose()).
        self._measure.snapshot()
        self._overhead += time.perf_counter() - t0

    def _defer_light_step(self) -> bool:
        """A light step with nothing else due: read the gradient norms and the loss and
        keep them; their record is built later with the next ones (:meth:`_flush_light`).
        Building a record costs more Python than reading the values, and a tiny model's
        whole step is ~0.5 ms.  False: the step takes the general path (a gradient or the
        loss non-finite, a gradient jump, parameters added, a gradient-reset check due,
        the loop calling the model's parts rather than the model)."""
        t0 = time.perf_counter()
        carry = self._carry
        if (carry is not None and carry.armed) or not self._root_called or self._lazy_ids:
            return False
        if tracking.optimizer_size(self.optimizer) != self._opt_size:
            return False
        loss = self._loss
        norms = self._measure.light_values(loss)  # the norms, then the loss when logged
        if norms is None:
            return False
        loss_value = norms.pop() if loss is not None else None
        size = sum(norms)
        jumps = self._jumps
        if not size <= (jumps.limit if jumps is not None else math.inf) or size == math.inf:
            return False  # NaN or Inf, or a jump: recorded (and replayed) now
        if loss_value is not None and not math.isfinite(loss_value):
            return False
        if jumps is not None:
            jumps.observe(size)  # under its limit: no jump; the window moves on in order
        self._rows.append((self._step, norms, loss_value, time.perf_counter() - t0))
        self._deferred_now = True
        return True

    def _end_deferred_step(self) -> None:
        """The end of a deferred light step (what :meth:`_end_step` does, minus what such a
        step never touched); the records are built in batches."""
        self._deferred_now = False
        self._root_called = False
        self._root_calls = 0
        self._calls.calls.clear()
        self._loss, self._losses_logged = None, 0
        self._forward_since_step = False
        self._step += 1
        self._light_end = time.perf_counter()
        self._untimed += 1
        if len(self._rows) >= DEFERRED_ROWS:
            self._flush_light()
        self._plan_step()

    def _flush_light(self) -> None:
        """Build the records of the deferred light steps, in order, and account them as
        :meth:`_finish_step` and :meth:`_end_step` would have (own time, gradient-jump
        window, the cadence's light-step wall time)."""
        rows = self._rows
        if not rows:
            return
        self._rows = []
        build, append = self._measure.record_light, self._history.append
        own_total = 0.0
        for step, norms, loss, own in rows:
            record = build(step, norms, loss, None)
            record.overhead_s = own
            own_total += own
            append(record)
        self._overhead_total += own_total
        self._last_recorded_step = rows[-1][0]
        if self._cadence is not None and self._untimed:
            self._cadence.meter.time(False, self._light_end, self._untimed)
        self._untimed = 0

    def _watch_for_jump(self) -> None:
        """After a light step's record: if its gradient jumped, copy the weights so that
        the step's update is measured too (see :class:`gradscope.budget.GradientJump`)."""
        size = self._measure.grad_size  # summed once, by the record's non-finite check
        if self._jumps is None or size is None or not self._history.records:
            return
        if self._jumps.observe(size):
            t0 = time.perf_counter()
            self._measure.snapshot()
            self._update_pending = self._history.records[-1]
            self._overhead_total += time.perf_counter() - t0

    def _on_post_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if self._deferred_now:
            self._end_deferred_step()
            return
        if self._update_pending is not None:
            t0 = time.perf_counter()
            self._measure.add_update(self._update_pending)
            self._update_pending = None
            self._overhead_total += time.perf_counter() - t0
        if self._recording_now and self._measure.has_grads:
            self._finish_step(measure_update=True, started=time.perf_counter())
        check = self._recording_now and self._detail_now
        self._end_step()
        if check and self._recording_now:
            self._arm_carry()

    def _arm_carry(self) -> None:
        """After a detail step: follow one gradient to the next (recorded) step."""
        if self._carry is not None:
            t0 = time.perf_counter()
            self._carry.arm(self._params, self.optimizer)
            self._overhead_total += time.perf_counter() - t0

    def _settle_carry(self) -> None:
        """Before the next step: was the gradient reset?  The next record carries it."""
        t0 = time.perf_counter()
        self._carry.settle(self._params)
        self._measure.carried, self._carry.result = self._carry.result, None
        self._overhead_total += time.perf_counter() - t0

    def _on_skipped_step(self, persistent: bool) -> None:
        """The scaler skipped ``opt.step()`` (overflow): end the step without recording it,
        unless overflow persists or the loss itself was NaN/Inf (an overflow of the scaled
        gradients never makes the loss so: the forward did), then record it so the
        non-finite detector judges it (one host read of the loss, on skipped steps only)."""
        loss = self._loss
        if not persistent and loss is not None and not bool(torch.isfinite(loss).all()):
            persistent = True
            self._skips.blame_model()
        if persistent and self.recording:
            t0 = time.perf_counter()
            self._collect_grads()
            self._finish_step(measure_update=False, started=t0)
        self._end_step()

    def _collect_grads(self) -> None:
        self._measure.collect_grads(self._detail_now)

    def _finish_step(
        self, measure_update: bool, started: float, record: StepRecord | None = None
    ) -> None:
        self._flush_light()  # the records stay in step order
        loss, self._loss = self._loss, None
        if record is None:
            scale = _scaler_scale(self.scaler)
            fired = self._hooks_fired
            record = self._measure.gather(self._step, loss, scale, measure_update, fired)
        if not self._nonfinite_seen and record.nonfinite:
            self._nonfinite_seen = True
            if self.nan_origin and not self._detail_now:
                self._locate_origin(record)
            elif self.nan_origin and self._ranks is None:
                self._locate_inside()  # the hooks saw the modules; not the containers
        now = time.perf_counter()
        self._overhead += now - started
        record.overhead_s = self._overhead
        self._overhead_total += self._overhead
        since = self._step - self._last_recorded_step if self._last_recorded_step >= 0 else 1
        if self.budget is not None:
            self.budget.observe(self._overhead, self._detail_now, now, since)
        self._just_recorded = since  # the cadence times the step at its end
        self._last_recorded_step = self._step
        self._history.append(record)
        if record.detail and self._cadence is not None:
            self._follow_activity(record)
        if not self._warned_unseen:
            self._warn_unseen_once()
        if self._order_changed:
            self._history.module_order = self._module_order()
            self._measure.output_module = self._last_called()
            self.model_info = self._describe()
            self._order_changed = False
        if self._on_step_hook.get_hookimpls():  # none of the built-in plugins has one
            self._runner.call("gradscope_on_step", record=record, scope=self)

    def _follow_activity(self, record: StepRecord) -> None:
        """A detail record: if units saturated or went silent quickly since the last one,
        the cadence measures the next steps too (see DetailCadence.follow_shift)."""
        before, self._last_detail_acts = self._last_detail_acts, record.acts
        if before is not None and not record.nonfinite:
            self._cadence.follow_shift(self._history.recorded - 1, before, record.acts)

    def _locate_inside(self) -> None:
        """Replay a detail step that went non-finite with hooks on the containers only:
        whether one's own forward() made the NaN/Inf (see replay.ContainerWatch)."""
        calls = self._calls.calls
        if not calls:
            return
        inside = replay.ContainerWatch(self.model, {id(m) for _, m in self._modules})
        try:
            failure = replay.replay(self.model, calls, keep=inside.ids)
        finally:
            inside.remove()
        first = inside.first_made_nonfinite()
        if failure is None and first is not None:
            self._nonfinite_inside = {"module": first, "step": self._step}

    def _locate_origin(self, record: StepRecord) -> None:
        """Replay the step's top-level calls and mark which module outputs were non-finite."""
        calls = self._calls.calls
        if not calls:
            self._origin_note = "the step's forward could not be replayed: no call was seen"
            return
        self._replay_calls = []
        temporary = not self._module_handles
        if temporary:
            self._attach_module_hooks()
        inside = replay.ContainerWatch(self.model, {id(m) for _, m in self._modules})
        try:
            # Only gradscope's hooks run in the replay; the user's stay off.
            keep = {h.id for h in self._handles + self._module_handles} | inside.ids
            failure = replay.replay(self.model, calls, keep=keep)
            seen = self._replay_calls
        finally:
            self._replay_calls = None
            inside.remove()
            if temporary:
                self._remove_module_hooks()
        first = inside.first_made_nonfinite()
        if first is not None and self._nonfinite_inside is None:
            self._nonfinite_inside = {"module": first, "step": self._step}
        if failure is not None:
            self._origin_note = f"the step's forward could not be replayed ({failure})"
            return
        record.acts = {column: list(values) for column, values in record.acts.items()}  # unshare
        for column, found in stats.nonfinite_by_module(stats.call_flags(seen)).items():
            if self._ranks is not None:  # every rank replayed its own batch: combine
                if column == "nonfinite_order":
                    continue  # each rank's own order; the flags are combined
                found = self._ranks.combine_replay(
                    found, len(self._modules), self._step, note=column == "nonfinite"
                )
            for j, value in found.items():
                record.acts[column][j] = value

    def _end_step(self) -> None:
        self._update_pending = None  # measured by now, or the optimizer never stepped
        since = self._just_recorded
        if since and self._cadence is not None:  # a recorded step ends: time it
            recorded = self._history.recorded - 1
            self._cadence.observe(recorded, self._detail_now, time.perf_counter(), since)
        self._just_recorded = 0
        if not self._root_called and self._handles and not self._compiled:
            self._hook_children()  # the loop calls the parts, not the model
        self._root_called = False
        self._root_calls = 0
        self._calls.calls.clear()
        self._loss, self._losses_logged = None, 0
        self._step += 1
        self._plan_step()
        self._forward_since_step = False
        self._measure.begin_step()
        self._reset_step_state()

    def _recorder(self, full: bool, sample_rows: int, unit_window: int) -> Recorder:
        """The per-step measurement state over the hooked modules."""
        return Recorder(
            self._params,
            [stats.activation_kind(m) for _, m in self._modules],
            full=full,
            sample_rows=sample_rows,
            unit_window=unit_window,
            channels_first=[isinstance(m, stats.CHANNELS_FIRST_TYPES) for _, m in self._modules],
        )

    def _reset_step_state(self) -> None:
        self._hooks_fired = 0
        self._first_output: dict[int, Tensor] = {}
        #: First outputs of new modules, held (no freed memory reused) until the model
        #: returns: the ones it returns are its outputs (one of several heads runs last).
        #: Emptied here too, for a forward whose model never returned (a direct call).
        self._fresh_outputs: dict[int, Tensor] = {}
        self._overhead = 0.0

    def _module_order(self) -> list[int]:
        seen = sorted((rank, j) for j, rank in enumerate(self._rank) if rank is not None)
        order = [j for _, j in seen]
        order += [j for j in range(len(self._modules)) if self._rank[j] is None]
        return order

    def _describe(self, final: bool = False) -> ModelInfo:
        """The model as seen so far; ``final`` (a report) also reads answers still on the
        device (see :meth:`_rival`)."""
        info = describe(
            self.model,
            self._modules,
            self._module_order(),
            self.optimizer,
            self.scaler is not None,
            name=self.name,
            shapes=self._shapes,
            parts=self.parts,
        )
        info.extra.update(self._rival(final))
        if self._skips is not None and self._skips.overflow_from is not None:
            # Skipped steps are recorded only once the overflow persists: where it began.
            info.extra["overflow_from"] = self._skips.overflow_from
        if self._ran_without_grad:
            names = (self._modules[j][0] for j in self._ran_without_grad)
            info.extra["ran_without_grad"] = sorted(names)
        if self._seen_without_grad:
            names = (self._modules[j][0] for j in self._seen_without_grad)
            info.extra["seen_without_grad"] = sorted(names)
        if self._returned:
            info.extra["model_outputs"] = sorted(self._modules[j][0] for j in self._returned)
        outside = tracking.outside_optimizer(self.optimizer, self._param_names, self._params)
        if outside:
            info.extra["outside_optimizer"] = outside
        if self._library_owners:
            info.extra["library_modules"] = self._library_owners
        if self._nonfinite_inside is not None:
            info.extra["nonfinite_inside"] = self._nonfinite_inside
        return info

    # -- reporting ---------------------------------------------------------------
    def report(self) -> Report:
        """Judge what has been recorded so far; callable while training runs."""
        self.model_info = self._describe(final=True)
        judgement = judge(self.history, self.model_info, self.config, self._runner)
        notes = self.coverage_notes() + self._activation_notes()
        notes += [self._origin_note] if self._origin_note else []
        notes += self._skips.notes() if self._skips is not None else []
        notes += [compiled.NOTE] if self._compiled else []
        notes += [carryover.OFF_NOTE] if self._carry is None else []
        report = Report(
            findings=judgement.findings,
            model_name=self.name,
            history=self.history,
            plugin_errors=judgement.plugin_errors,
            coverage=self.coverage(),
            overhead=self.overhead(),
            config=self.config,
            notes=notes,
            model_info=self.model_info,
            not_judged=judgement.not_judged,
        )
        if self._ranks is not None:  # names the rank of rank-specific findings
            report = self._ranks.finish(report, self.history.module_names)
        return report

    def overhead(self) -> dict[str, float]:
        """gradscope's own measured time: total and per recorded step."""
        recorded = self.history.recorded
        summary = {
            "seconds_total": self._overhead_total,
            "seconds_per_step": self._overhead_total / recorded if recorded else 0.0,
            "recorded_steps": float(recorded),
            "steps": float(self._step),
        }
        if self._jumps is not None:
            summary["update_jumps"] = float(self._jumps.jumps)
        if self.budget is not None:
            summary.update(self.budget.summary())
        elif self._cadence is not None:
            summary.update(self._cadence.summary())
        else:
            summary.update(detail_interval=float(self.detail_every), detail_auto=0.0)
        return summary

    def coverage(self) -> dict[str, Any]:
        """Hooks fired per detail step, and modules that ran but were never seen."""
        records = self.history.records
        # Forward hooks work on the detail steps only (the others have no L1 norms).
        fired = [r.hooks_fired for r in records if any(v == v for v in r.grads["grad_l1"])]
        return {
            "hooks_registered": len(self._modules),
            "hooks_fired_per_step": (sum(fired) / len(fired)) if fired else 0.0,
            "unseen_modules": self._unseen_modules(),
        }

    def _unseen_modules(self) -> list[str]:
        """Modules whose parameters got gradients although their forward hook never fired."""
        if self._compiled:
            return []  # not hooked on purpose; the report says so
        self.history.settle()
        got_grad = {
            self.history.param_modules[i] for i, seen in enumerate(self.history.grad_seen) if seen
        }
        calls = self.history.calls_total
        candidates = [
            j
            for j, name in enumerate(self.history.module_names)
            if name in got_grad and calls[j] == 0 and j not in self._fired_unmeasured
        ]
        if not candidates:
            return []
        # A tied module never called itself (T5's `shared`) is seen through its twin that ran.
        ran = {j for j in range(len(calls)) if calls[j] or j in self._fired_unmeasured}
        holders: dict[int, set[int]] = {}
        for j, (_, module) in enumerate(self._modules):
            for p in module.parameters(recurse=False):
                holders.setdefault(id(p), set()).add(j)
        unseen = []
        for j in candidates:
            own = [id(p) for p in self._modules[j][1].parameters(recurse=False)]
            if not any(holders.get(pid, set()) & ran for pid in own):
                unseen.append(self.history.module_names[j])
        return unseen

    def _warn_unseen_once(self) -> None:
        """After the first recorded step: warn once about modules whose hooks were skipped."""
        self._warned_unseen = True
        if self._ranks is not None and not self._ranks.is_main:
            return  # under DDP/FSDP2 only rank 0 prints
        known = _attention_out_projections(self.model)
        if all(name in known for name in self._unseen_modules()):
            return  # torch's own attention calls its out_proj as a function: a note only
        notes = self.coverage_notes()
        if notes:
            warnings.warn(f"gradscope: {notes[0]}.", GradscopeWarning, stacklevel=_user_frame())

    def _activation_notes(self) -> list[str]:
        """A note when no activation could be seen: no activation module, and no logged
        loss whose graph could show activations called as functions."""
        if not self._history.recorded or self._measure.activations_looked_for:
            return []
        return [
            "no activation module (ReLU, sigmoid, tanh) was found and no loss was logged with "
            "scope.log_loss(loss), so activations called as functions (F.relu, torch.tanh) "
            "were not looked for: dead or saturated units there are not judged; log the "
            "loss to have them measured"
        ]

    def coverage_notes(self) -> list[str]:
        """Readable warnings about hooks that were silently skipped."""
        unseen = self._unseen_modules()
        if not unseen:
            return []
        shown = ", ".join(unseen[:5]) + (" ..." if len(unseen) > 5 else "")
        return [
            f"{len(unseen)} module(s) got gradients but their forward hook never fired "
            f"({shown}); their activations are not measured (called as a function, e.g. "
            "attention's out_proj, or skipped by torch.compile)"
        ]


def _attention_out_projections(model: torch.nn.Module) -> set[str]:
    """The ``out_proj`` of every ``nn.MultiheadAttention``: torch passes its weight to a
    function instead of calling it, so its forward hook never fires, in every model that
    uses torch's attention (the report notes it; nothing to warn a user about)."""
    return {
        f"{name}.out_proj" if name else "out_proj"
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.MultiheadAttention)
    }


def _user_frame() -> int:
    """The ``stacklevel`` that points a warning at the user's line (``opt.step()``), past
    gradscope's and torch's own frames."""
    inside = (os.path.dirname(__file__) + os.sep, os.path.dirname(torch.__file__) + os.sep)
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(inside):
        frame, level = frame.f_back, level + 1
    return level


def _compiler_disable(fn: Any) -> Any:
    """``fn`` for a hook: run eagerly, and under torch.compile's tracing as a graph break
    (``torch.compiler.disable``) instead of being traced.  The eager call skips the
    disabled wrapper, which costs ~10 us per call on the CPU (a tiny model's step is
    ~0.8 ms); while tracing, ``is_compiling()`` is a constant and only the disabled branch
    is traced."""
    compiler = getattr(torch, "compiler", None)
    disable = getattr(compiler, "disable", None)
    is_compiling = getattr(compiler, "is_compiling", None)
    if disable is None or is_compiling is None:
        return fn
    disabled = disable(fn)

    def hook(*args: Any) -> Any:
        if is_compiling():
            return disabled(*args)
        return fn(*args)

    return hook


def _library_owners(model: torch.nn.Module, owners: set[str]) -> list[str]:
    """The parameter-owning modules among ``owners`` whose class a library defines."""
    return sorted(
        name for name, module in model.named_modules() if name in owners and library_defined(module)
    )


def _owners(model: torch.nn.Module, modules: list[tuple[str, torch.nn.Module]]) -> dict[str, str]:
    """Parameter name -> the hooked module that owns it."""
    by_id = {id(m): name for name, m in modules}
    owners = {}
    inside = parametrization_parts(model)
    for mod_name, module in model.named_modules():
        if id(module) in inside:
            continue  # their parameters are the parametrized module's (own_parameters)
        for p_name, _ in own_parameters(module):
            full = f"{mod_name}.{p_name}" if mod_name else p_name
            owners[full] = by_id.get(id(module), mod_name)
    return owners


def _scaler_scale(scaler: Any) -> Tensor | float | None:
    if scaler is None or not scaler.is_enabled():
        return None
    scale = getattr(scaler, "_scale", None)
    if isinstance(scale, Tensor):
        return scale
    return None


def _validate(model: Any, optimizer: Any, scaler: Any, every: Any) -> None:
    if not isinstance(model, torch.nn.Module):
        raise TypeError(
            f"gradscope.watch() needs a torch.nn.Module, got {type(model).__name__}; "
            "pass the model itself, e.g. gradscope.watch(model, optimizer=opt)."
        )
    if optimizer is not None:
        if isinstance(optimizer, (list, tuple)):
            raise TypeError(
                f"watch() takes one optimizer, got a {type(optimizer).__name__} of "
                f"{len(optimizer)}; for a GAN, watch each network with its own optimizer "
                "(with gradscope.watch(G, optimizer=opt_g), gradscope.watch(D, "
                "optimizer=opt_d): ...), and gradscope tells the players apart."
            )
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(
                f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}; "
                "pass the optimizer you call .step() on, e.g. torch.optim.SGD(model.parameters())."
            )
        held = {id(p) for group in optimizer.param_groups for p in group["params"]}
        trainable = [p for p in model.parameters() if p.requires_grad]
        if trainable and not any(id(p) in held for p in trainable):
            raise ValueError(
                "The optimizer does not hold any of this model's trainable parameters; "
                "pass the optimizer built from it, e.g. torch.optim.Adam(model.parameters())."
            )
    if scaler is not None and not isinstance(scaler, torch.amp.GradScaler):
        raise TypeError(
            f"scaler must be a torch.amp.GradScaler, got {type(scaler).__name__}; pass the "
            "scaler you call scaler.step(optimizer) on, or leave it out."
        )
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"every must be a whole number of steps >= 1, got {every!r}.")


def watch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scaler: Any = None,
    every: int = 1,
    **options: Any,
) -> Scope:
    """Watch ``model`` while it trains; use as ``with gradscope.watch(model, optimizer=opt):``.

    The hooks are attached at once; the ``with`` block (or ``scope.detach()``) removes them.

    With an optimizer, each ``optimizer.step()`` records a step; without one, call
    ``scope.step(loss=loss)`` after ``loss.backward()``.  Call ``scope.log_loss(loss)``
    to let the detectors see the loss.  Options are those of :class:`Scope`.
    """
    scope = Scope(model, optimizer=optimizer, scaler=scaler, every=every, **options)
    scope.attach()
    return scope
