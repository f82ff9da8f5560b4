"""Recording: the step's device tensors in, one :class:`StepRecord` out, one host sync.

The scope's hooks hand the recorder what they see (module outputs on detail steps, the
gradients at the optimizer step); :meth:`Recorder.gather` stacks every measured scalar,
brings them to the host together and lays them out in the columns declared in
:mod:`gradscope.statistics`.  Columns not measured on a step stay NaN.

Light steps (gradient norms and the loss only) are built without per-layer Python:
columns that were not measured are shared, read-only lists, and a step whose gradients
are all present and finite needs no per-parameter bookkeeping at all.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from gradscope import distributed, functional_acts, gan_loss, loss_input, stats
from gradscope.constant_loss import ConstantLoss
from gradscope.history import StepRecord
from gradscope.statistics import ACT_COLUMNS, GRAD_COLUMNS
from gradscope.through_time import CallGradients

NAN = math.nan
_UNSET = object()
#: Lists of at most this many CPU scalars are read one by one rather than stacked.
_FEW = 16
#: A ReLU unit is dead only after being seen silent on this many detail steps in a row
#: (spanning at least ``unit_window`` training steps: two full batches, steps apart).
MIN_SILENT_DETAIL = 2
#: Output nodes remembered per step for naming the module a loss term was given.
MAX_OUTPUT_NODES = 1 << 14
#: Per-module counts that the accumulators keep on the host.
_COUNT_COLUMNS = ("calls", "numel", "sampled", "zero_sampled", "units")
#: Per-module device totals: accumulator part -> column.
#: Parts whose device totals become 0/1 non-finite flags before the host transfer.
_FLAG_PARTS = ("bad", "bad_input")
_DEVICE_COLUMNS = (
    ("bad", "nonfinite"),
    ("bad_input", "input_nonfinite"),
    ("zeros", "zeros"),
    ("saturated", "saturated"),
    ("spread", "output_spread"),
)


class _Blocks:
    """Device values waiting for the one host transfer, each with where it lands: a list
    of scalars or one 1-D tensor (a column reduced in a few calls, see stats.Layout)."""

    def __init__(self) -> None:
        self.items: list[tuple[list[float], Any, list[Tensor] | Tensor]] = []

    def put(self, target: list[float], positions: Any, values: list[Tensor] | Tensor) -> None:
        """Land ``values`` at ``positions`` of ``target`` after the transfer."""
        if isinstance(values, Tensor) or values:  # an empty list: not measured on this step
            self.items.append((target, positions, values))

    def transfer(self, ranks: distributed.RankSync | None = None, **where: Any) -> None:
        """One host sync for everything put so far; with ``ranks`` (DDP/FSDP2) every rank
        gets the values combined across ranks (``where``: the column names and the step)."""
        lists = all(type(values) is list for _, _, values in self.items)
        if ranks is None and lists and self.items and not self.items[0][2][0].is_cpu:
            host = stats.to_host([v for _, _, values in self.items for v in values])  # 1 stack
        elif ranks is None:
            host = stats.to_host([v for _, _, values in self.items for v in _vector(values)])
        else:
            self.items = [
                (target, positions, list(values.unbind()) if isinstance(values, Tensor) else values)
                for target, positions, values in self.items
            ]
            host = ranks.combine(self.items, **where)  # may take the loss out of self.items
        k = 0
        for target, positions, _ in self.items:
            n = len(positions)
            if type(positions) is range and positions.step == 1:
                target[positions.start : positions.stop] = host[k : k + n]
            else:
                for position, value in zip(positions, host[k : k + n], strict=True):
                    target[position] = value
            k += n


def _vector(values: list[Tensor] | Tensor) -> list[Tensor]:
    """``values`` as one 1-D tensor (several when they are on several devices); a few CPU
    scalars stay as they are (stats.to_host reads them one by one)."""
    if isinstance(values, Tensor):
        return [values]
    if len(values) <= _FEW and values[0].is_cpu:
        return values
    if len(values) == 1:
        return [values[0].reshape(1)]
    try:
        return [torch.stack(values)]
    except RuntimeError:  # several devices: to_host groups them
        return [v.reshape(1) for v in values]


class Recorder:
    """Per-step measurement state of one scope.

    Args:
        params: the trainable parameters, in the history's order.
        kinds: the activation kind of each hooked module (relu, sigmoid, tanh, plain).
        full: measure everything exactly.
        sample_rows: activation shape statistics use the first rows of each batch.
        unit_window: a ReLU unit counts as dead once silent on every detail step over this
            many training steps (and on at least 2 detail steps in a row).
        ranks: under DDP/FSDP2, combines each step across ranks (gradscope/distributed.py).
        channels_first: per hooked module, whether its output keeps channels in dim 1
            (``stats.CHANNELS_FIRST_TYPES``); modules fed such an output pass it on.
    """

    def __init__(
        self,
        params: list[Tensor],
        kinds: list[str],
        *,
        full: bool = False,
        sample_rows: int = 32,
        unit_window: int = 5,
        ranks: distributed.RankSync | None = None,
        channels_first: list[bool] | None = None,
    ) -> None:
        self.params = params
        self.channels_first = channels_first or [False] * len(kinds)
        self.ranks = ranks
        self.kinds = kinds
        self.full = full
        self.sample_rows = sample_rows
        #: The module that runs last in the forward (the model's output), once known.
        self.output_module: int | None = None
        self.unit_window = unit_window
        n_modules = len(kinds)
        self.refresh_params()
        idle = {c: [NAN] * n_modules for c in ACT_COLUMNS}
        for column in _COUNT_COLUMNS:
            idle[column] = [0.0] * n_modules
        self._idle_acts = idle
        #: Per ReLU module: (silent detail steps in a row, training steps they span) per unit.
        self._streaks: list[tuple[Tensor, Tensor] | None] = [None] * n_modules
        self._unit_steps: list[int] = [0] * n_modules  # the step of each module's last count
        self._constant = ConstantLoss()
        #: Modules whose output goes straight into an activation called as a function
        #: (module -> measuring kind; see gradscope/functional_acts.py), and graphs walked.
        self.functional: dict[int, str] = {}
        self._walks = 0
        self._last_param_norm: list[float] | None = None
        #: (parameter index, carried share) of a gradient-reset check for the next record.
        self.carried: tuple[int, float] | None = None
        self.begin_step()

    def refresh_params(self) -> None:
        """(Re)build the per-parameter columns after :attr:`params` grew (parameters that
        appeared after ``watch()``); the last measured parameter norms are forgotten."""
        n_params = len(self.params)
        # Shared, read-only columns of light steps (nothing ever writes into them).
        self._numels = [float(p.numel()) for p in self.params]
        self._nan_params = [NAN] * n_params
        self._zeros_params = [0.0] * n_params
        self._ones_params = [1.0] * n_params
        #: A light step's columns before its norms are in (every list shared, read-only).
        self._light_columns = dict.fromkeys(GRAD_COLUMNS, self._nan_params)
        self._light_columns.update(
            numel=self._numels, has_grad=self._ones_params, grad_nonfinite=self._zeros_params
        )
        self._last_param_norm = None
        #: Weight matrices whose rows held copies when first measured (None: not measured
        #: yet, so every matrix is): only they are looked at for copies again (copies that
        #: were not there at the start are not symmetric initialisation; see symmetry).
        self._copies_seen: set[int] | None = None
        # FSDP2 shards: each rank reads its local part (checked once, not every step).
        self._sharded = any(distributed.local(p) is not p for p in self.params)
        self._param_layout = stats.Layout.of(self._local_params())
        self._grad_layout: stats.Layout | None = None
        self._grad_layout_key: Any = _UNSET  # which gradients the layout is of

    def _local_params(self) -> list[Tensor]:
        return distributed.locals_of(self.params) if self._sharded else self.params

    # -- what the hooks hand over ------------------------------------------------
    def begin_step(self) -> None:
        """Forget the previous step's device tensors."""
        self.acc: dict[int, stats.ActivationAccumulator] = {}
        self._channels_first_outputs: set[tuple] = set()
        self.time_grads: dict[int, tuple[Tensor, Tensor]] = {}
        self.call_grads: dict[int, CallGradients] = {}
        self._grads: dict[str, list[Tensor]] | None = None
        self._index: list[int] | None = None
        self._row_spread: list[tuple[str, list[int], Tensor | list[Tensor]]] = []
        self._stacks: list[Tensor] | None = None
        self._before: stats.Snapshot | None = None
        #: The sum of this step's recorded gradient norms, as the non-finite check summed
        #: them (None: not recorded yet).
        self.grad_size: float | None = None
        self._loss_terms: tuple[Tensor, Tensor] | None = None
        self._fake_score: Tensor | None = None
        self._output: Tensor | None = None
        self._model_output: Tensor | None = None
        #: The step's measured calls in the order they completed: (module, output, input).
        self._calls: list[tuple[int, Tensor, Tensor | None]] = []
        #: id of each measured output's autograd node -> its module: what a loss was given
        #: (ids only: holding the nodes would hold the inputs they saved).
        self._made_by: dict[int, int] = {}
        self._loss_faults: list[tuple[Tensor, int | None]] = []

    def add_loss(self, loss: Tensor) -> None:
        """Compare the step's loss with a constant prediction's (a detail step, the loss
        logged before ``backward()``; the first logged loss of a step counts)."""
        if self._loss_terms is not None:
            self._constant.pool_targets(loss)  # a step's later losses (accumulation)
        elif self.output_module is None:
            self._constant.pool_targets(loss)  # the first step: no row to put it on yet
        else:
            self._loss_terms = self._constant.measure(loss, self._output, self._model_output)
            self._loss_faults = [
                (code, loss_input.made_by(node, self._made_by))
                for code, node in loss_input.faults(loss)
            ]
            self._fake_score = gan_loss.fake_score(loss)
            if self._walks < functional_acts.WALKS:
                self._walks += 1
                found = functional_acts.find(loss, self._made_by, self.kinds)
                self.functional.update({j: k for j, k in found.items() if self.kinds[j] == "plain"})

    @property
    def activations_looked_for(self) -> bool:
        """Whether an activation can have been seen: some module is one (ReLU, sigmoid,
        tanh, a recurrence), or a logged loss's graph was searched for activations called
        as functions."""
        return self._walks > 0 or any(kind != "plain" for kind in self.kinds)

    def pool_targets(self, loss: Tensor) -> None:
        """A light step's loss: only its targets join the constant prediction's pool."""
        self._constant.pool_targets(loss)

    def add_output(self, j: int, x: Tensor, given: Tensor | None = None) -> None:
        """Measure one call's floating-point output (and input) of module ``j`` (a detail
        step)."""
        acc = self.acc.get(j)
        if acc is None:
            kind = self.functional.get(j, self.kinds[j])
            acc = self.acc[j] = stats.ActivationAccumulator(kind)
        output = x.detach()
        acc.add(output, self.sample_rows, self.full, self._is_channels_first(j, x, given))
        # Detached, as the accumulators hold them: the same memory, not the caller's tensors.
        self._calls.append((j, output, None if given is None else given.detach()))
        if x.grad_fn is not None and len(self._made_by) < MAX_OUTPUT_NODES:
            self._made_by[id(x.grad_fn)] = j
        if j == self.output_module:
            acc.add_spread(x, self.sample_rows)
            self._output = x  # the model's output: an L1 loss's targets are read from it
        if given is not None:
            acc.add_input(given.detach(), self.sample_rows, self.full)

    def _is_channels_first(self, j: int, x: Tensor, given: Tensor | None) -> bool:
        """Whether module ``j``'s 3-D output is a (N, C, L) map: it is a 1-D convolution's
        (or pooling's, normalisation's), or its input was one and the shape is kept (a
        ReLU or dropout after a Conv1d)."""
        if x.dim() != 3:
            return False
        channels_first = self.channels_first[j] or (
            type(given) is Tensor
            and given.shape == x.shape
            and _layout_key(given) in self._channels_first_outputs
        )
        if channels_first:
            self._channels_first_outputs.add(_layout_key(x))
        return channels_first

    def add_model_output(self, output: Tensor | None) -> None:
        """What the watched model returned on a detail step (an L1 loss's prediction may be
        it rather than the output module's output)."""
        self._model_output = output

    def add_time_grads(self, j: int, first: Tensor, last: Tensor) -> None:
        """The gradient norms reaching module ``j``'s first and last time step."""
        self.time_grads[j] = (first, last)

    def calls_of(self, j: int) -> CallGradients:
        """Per-call gradient norms of module ``j`` this step (a cell run as a loop)."""
        calls = self.call_grads.get(j)
        if calls is None:
            calls = self.call_grads[j] = CallGradients()
        return calls

    @property
    def has_grads(self) -> bool:
        """Whether this step's gradients were collected and not yet recorded."""
        return self._grads is not None

    def collect_grads(self, detail: bool) -> None:
        """Read the gradients (final at the optimizer's step pre-hook) on the device."""
        grads = [p.grad for p in self.params]
        if self._sharded:
            grads = distributed.locals_of(grads)  # FSDP2: this rank's shard
        params = self._local_params()
        if any(g is None for g in grads):  # `None in grads` would compare tensors with ==
            index: list[int] | None = [i for i, g in enumerate(grads) if g is not None]
            grads = [grads[i] for i in index]
        else:
            index = None  # every parameter has a gradient: no per-parameter bookkeeping
        key = None if index is None else tuple(index)
        if key != self._grad_layout_key:
            self._grad_layout_key = key
            self._grad_layout = stats.Layout.of(grads)
        with torch.no_grad():
            try:
                self._measure_grads(grads, params, detail)
            except RuntimeError:  # shapes or devices changed under a layout: per tensor
                self._param_layout = self._grad_layout = None
                self._measure_grads(grads, params, detail)
                self._param_layout = stats.Layout.of(params)  # fresh layouts from now on
                self._grad_layout_key = _UNSET
        self._index = index

    def _measure_grads(self, grads: list[Tensor], params: list[Tensor], detail: bool) -> None:
        layout = self._param_layout
        self._stacks = layout.stack(params) if detail and layout is not None else None
        layouts = (self._grad_layout, layout)
        self._grads = stats.grad_statistics(grads, params, detail, self.full, layouts, self._stacks)
        if detail:
            self._row_spread = _row_spreads(params, layout, self._stacks, self._copies_seen)

    def snapshot(self) -> None:
        """Copy (a slice of) each parameter before the optimizer moves it (detail steps);
        the parameters stacked by :meth:`collect_grads` are such copies already."""
        with torch.no_grad():
            sample = None if self.full else stats.UPDATE_SAMPLE
            params = self._local_params()
            self._before = stats.snapshot(params, sample, self._param_layout, self._stacks)

    def add_update(self, record: StepRecord) -> None:
        """Write the update of the step just taken into ``record`` (a light step that took
        a :meth:`snapshot` because its gradient jumped): one more host sync."""
        if self._before is None:
            return
        with torch.no_grad():
            sample = None if self.full else stats.UPDATE_SAMPLE
            n_params = len(self.params)
            column = [NAN] * n_params
            blocks = _Blocks()
            updates = stats.update_norms(
                self._local_params(), self._before, sample, self._param_layout
            )
            blocks.put(column, range(n_params), updates)
            blocks.transfer()
        self._before = None
        record.grads = {**record.grads, "update_norm": column}

    # -- the record ----------------------------------------------------------------
    def light_record(
        self, step: int, loss: Tensor | None, scale: Any, hooks_fired: int
    ) -> StepRecord | None:
        """A light step's record (gradient L2 norms, loss, scale) read and built in one
        pass: :meth:`light_values`, then :meth:`record_light`.  None when the step needs
        :meth:`collect_grads` and :meth:`gather` (a gradient missing, FSDP2 shards, several
        ranks, the first step, a measured activation)."""
        host = self.light_values(loss, scale)
        if host is None:
            return None
        n_params = len(self.params)
        loss_value = host[n_params] if loss is not None else None
        scale_value = host[-1] if isinstance(scale, Tensor) else scale
        return self.record_light(step, host[:n_params], loss_value, scale_value, hooks_fired)

    def light_values(self, loss: Tensor | None, scale: Any = None) -> list[float] | None:
        """A light step's values on the host: every gradient's L2 norm, then the loss and
        the scale when given; one reduction call per group of same-shaped gradients and
        one host transfer.  None when the step needs :meth:`collect_grads` (see
        :meth:`light_record`).

        On the CPU, with no group of same-shaped gradients (a small model), the norms are
        one ``foreach`` call and a read of each value: no stack and no grad-mode switch
        (the values are read at once, so no graph outlives the call).
        """
        layout = self._grad_layout
        if layout is None or self._grad_layout_key is not None or self.ranks is not None:
            return None
        if self._sharded or self.acc or self.time_grads or self.call_grads:
            return None
        grads = [p.grad for p in self.params]
        # TypeError/AttributeError: a gradient is missing; RuntimeError: shapes or devices
        # changed.  One device (the layout checked it when it was made): the first says.
        try:
            if not layout.groups and grads[0].is_cpu:
                host = [t.item() for t in torch._foreach_norm(grads, 2)]
                if loss is not None:
                    host.append((loss if loss.dtype is torch.float32 else loss.float()).item())
                if isinstance(scale, Tensor):
                    host.append(scale.item())
                return host
            return _light_values(grads, layout, loss, scale)
        except (TypeError, AttributeError, RuntimeError):
            return None

    def record_light(
        self,
        step: int,
        l2: list[float],
        loss: float | None,
        scale: float | None,
        hooks_fired: int = 0,
    ) -> StepRecord:
        """The record of a light step whose gradient norms ``l2`` (one per parameter),
        loss and scale were read by :meth:`light_values`: shared columns, no per-layer
        Python unless a value is non-finite."""
        n_params = len(self.params)
        columns = self._light_columns.copy()  # shared, read-only lists
        if self.carried is not None:
            self._put_carried(columns)
        columns["grad_l2"] = l2
        if self._last_param_norm is None:
            self._last_param_norm = self._nan_params
        else:
            # Weights move ~1e-3 per step: between detail steps the last measurement stands.
            columns["param_norm"] = self._last_param_norm
        self._index = None
        # The L2 norm is finite when every entry is (and no square overflows): a healthy
        # step pays nothing for the check (a sum of norms can overflow: each is looked at).
        self.grad_size = size = sum(l2)
        nonfinite = not _finite(size) and self._count_nonfinite(columns, range(n_params))
        return StepRecord(
            step=step,
            loss=loss,
            scale=scale,
            grads=columns,
            acts=self._idle_acts,  # shared and never written (a replay gives a record its own)
            hooks_fired=hooks_fired,
            detail=False,
            nonfinite=nonfinite or (loss is not None and not _finite(loss)),
        )

    def gather(
        self, step: int, loss: Tensor | None, scale: Any, measure_update: bool, hooks_fired: int
    ) -> StepRecord:
        """Stack everything measured this step, bring it to the host in one sync, and
        lay it out as a :class:`StepRecord`."""
        with torch.no_grad():
            blocks = _Blocks()
            grads, grad_min = self._grad_columns(blocks, measure_update)
            fired = sorted(self.acc)
            acts = self._act_columns(blocks, fired, step)
            self._loss_columns(blocks, acts)
            scalars = [NAN, NAN]
            if loss is not None:
                blocks.put(scalars, (0,), [loss if loss.dtype is torch.float32 else loss.float()])
            if isinstance(scale, Tensor):
                blocks.put(scalars, (1,), [scale])
            if self.ranks is None:
                blocks.transfer()
            else:  # DDP/FSDP2: every rank gets the values combined across ranks
                columns = {**grads, **acts, "grad_min": grad_min, "scalars": scalars}
                blocks.transfer(self.ranks, columns=columns, step=step)
        nonfinite = self._derive_grads(grads, grad_min)
        if self._copies_seen is None and any(c == "row_twins" for c, _, _ in self._row_spread):
            self._copies_seen = {i for i, share in enumerate(grads["row_twins"]) if share > 0}
        if fired and self.functional:  # known on the host (after any cross-rank combine)
            acts["functional_act"] = list(acts["functional_act"])
            for k, kind in self.functional.items():
                acts["functional_act"][k] = functional_acts.CODES[kind]
        if fired:
            self._derive_acts(acts, fired)
            if self.ranks is None and _nonfinite_outputs(acts):
                self._order_nonfinite_calls(acts)
        record = StepRecord(
            step=step,
            loss=scalars[0] if loss is not None else None,
            scale=scalars[1] if isinstance(scale, Tensor) else scale,
            grads=grads,
            acts=acts,
            hooks_fired=hooks_fired,
            detail=bool(fired) or "grad_l1" in (self._grads or {}),
            nonfinite=nonfinite
            or (bool(fired) and _nonfinite_outputs(acts))
            or (loss is not None and not _finite(scalars[0])),
        )
        self._grads = None  # recorded; the scope calls begin_step() when the step ends
        return record

    def _order_nonfinite_calls(self, acts: dict[str, list[float]]) -> None:
        """On the step whose outputs went non-finite (one more sync, that step only): the
        flags per call, so a module called twice is judged at the call that went wrong
        (see :func:`stats.nonfinite_by_module`)."""
        # A view of a parameter (a dropout at p=0 of an embedding table) is read after the
        # optimizer applied this step's NaN to it: it held what the weights held, finite
        # up to this first non-finite step.
        weights = {stats.storage_key(p) for p in self.params} - {None}
        calls = [
            (j, *(None if t is None or stats.storage_key(t) in weights else t for t in (x, given)))
            for j, x, given in self._calls
        ]
        for column, found in stats.nonfinite_by_module(stats.call_flags(calls)).items():
            for j, value in found.items():
                acts[column][j] = value

    def _loss_columns(self, blocks: _Blocks, acts: dict[str, list[float]]) -> None:
        """Put the loss-vs-constant pair and a saturating generator loss's D(G(z)) on the
        output module's row, and each loss term's input check on the row of the module
        whose output that term was given (see add_loss)."""
        terms, fake = self._loss_terms, self._fake_score
        faults, self._loss_faults = self._loss_faults, []
        self._loss_terms = self._fake_score = None
        j = self.output_module
        if j is None:
            return
        values = [
            (column, j, value)
            for column, value in zip(("loss_term", "constant_loss"), terms or (), strict=False)
        ]
        values += [("fake_score", j, fake)] if fake is not None else []
        # Each term's check on the row of the module whose output it was given (a second
        # head's loss names that head), else on the output module's.
        values += [("loss_input_fault", j if k is None else k, code) for code, k in faults]
        for column, row, value in values:
            if acts[column] is self._idle_acts[column]:
                acts[column] = list(acts[column])  # idle columns are shared: write a copy
            blocks.put(acts[column], (row,), [value.float()])

    def _grad_columns(
        self, blocks: _Blocks, measure_update: bool
    ) -> tuple[dict[str, list[float]], list[float] | None]:
        measured = self._grads or {}
        n_params = len(self.params)
        grads = dict.fromkeys(GRAD_COLUMNS, self._nan_params)
        positions: Any = self._index if self._index is not None else range(n_params)
        for column in ("grad_l2", "grad_l1", "grad_max"):
            values = measured.get(column)
            if isinstance(values, Tensor) or values:
                grads[column] = [NAN] * n_params
                blocks.put(grads[column], positions, values)
        if self.carried is not None:
            self._put_carried(grads)
        grad_min = None
        if measured.get("grad_min"):
            grad_min = [NAN] * n_params
            blocks.put(grad_min, positions, measured["grad_min"])
        param_norm = measured.get("param_norm")
        if isinstance(param_norm, Tensor) or param_norm:
            grads["param_norm"] = [NAN] * n_params
            blocks.put(grads["param_norm"], range(n_params), param_norm)
        for column in {column for column, _, _ in self._row_spread}:
            grads[column] = [NAN] * n_params  # the shared idle list is never written
        for column, matrices, values in self._row_spread:
            blocks.put(grads[column], matrices, values)
        if measure_update and self._before is not None:
            sample = None if self.full else stats.UPDATE_SAMPLE
            grads["update_norm"] = [NAN] * n_params
            params = self._local_params()
            updates = stats.update_norms(params, self._before, sample, self._param_layout)
            blocks.put(grads["update_norm"], range(n_params), updates)
        return grads, grad_min

    def _put_carried(self, grads: dict[str, list[float]]) -> None:
        """The last gradient-reset check's result (gradscope/carryover.py), in its column."""
        index, share = self.carried
        self.carried = None
        if index < len(self.params):
            column = grads["grad_carried"] = [NAN] * len(self.params)
            column[index] = share

    def _derive_grads(self, grads: dict[str, list[float]], grad_min: list[float] | None) -> bool:
        """Host-side columns; returns whether some gradient is non-finite."""
        grads["numel"] = self._numels
        index = self._index
        l2 = grads["grad_l2"]
        if index is None:
            grads["has_grad"] = self._ones_params
            grads["grad_nonfinite"] = self._zeros_params
            present: Any = range(len(self.params))
        else:
            has = [0.0] * len(self.params)
            nonfinite = [NAN] * len(self.params)
            for i in index:
                has[i] = 1.0
                nonfinite[i] = 0.0
            grads["has_grad"], grads["grad_nonfinite"] = has, nonfinite
            present = index
        if grad_min is not None:
            grads["grad_max"] = [
                max(abs(low), abs(high)) if low == low else high
                for low, high in zip(grad_min, grads["grad_max"], strict=True)
            ]
        if grads["param_norm"] is not self._nan_params or self._last_param_norm is None:
            self._last_param_norm = grads["param_norm"]
        else:
            # Weights move ~1e-3 per step: between detail steps the last measurement stands.
            grads["param_norm"] = self._last_param_norm
        # The L2 norm is finite when every entry is (and their squares fit), so a healthy
        # step pays nothing for the check; only a step that went bad counts (a 2nd sync).
        self.grad_size = size = sum(l2) if index is None else sum(l2[i] for i in present)
        if _finite(size):
            return False
        return self._count_nonfinite(grads, present)

    def _count_nonfinite(self, grads: dict[str, list[float]], present: Any) -> bool:
        """Exact NaN/Inf counts of the gradients whose L2 norm is not finite (a step that
        went bad: a second sync); returns whether there was any.  A norm can also overflow
        with every entry finite (entries of 1e20 square past float32's range): that one is
        measured again in float64, and the gradient is not called non-finite."""
        l2 = grads["grad_l2"]
        bad = [i for i in present if not _finite(l2[i])]
        if not bad:
            return False
        tensors = distributed.locals_of([self.params[i].grad for i in bad])
        counts = stats.nonfinite_counts(tensors)
        grads["grad_nonfinite"] = list(grads["grad_nonfinite"])  # unshare before writing
        for i, count, grad in zip(bad, counts, tensors, strict=True):
            grads["grad_nonfinite"][i] = count
            if count == 0:
                l2[i] = float(grad.detach().double().norm())
        return any(count > 0 for count in counts)

    def _act_columns(
        self, blocks: _Blocks, fired: list[int], step: int
    ) -> dict[str, list[float]]:
        if not fired:
            return dict(self._idle_acts)  # its lists are shared and never written
        n_modules = len(self.kinds)
        acts = {c: [NAN] * n_modules for c in ACT_COLUMNS}
        accs = [self.acc[j] for j in fired]
        for column, positions, flags in _flag_columns(fired, accs):
            blocks.put(acts[column], positions, flags)
        for part, column in _DEVICE_COLUMNS:
            if part in _FLAG_PARTS:
                continue
            chosen = [(j, acc) for j, acc in zip(fired, accs, strict=True) if getattr(acc, part)]
            totals = [acc.total(part) for _, acc in chosen]
            blocks.put(acts[column], [j for j, _ in chosen], totals)
        chosen = [(j, acc) for j, acc in zip(fired, accs, strict=True) if acc.sumsqs]
        # Norms on the device (no overflow), squared on the host: acts["sumsq"] holds norms
        # until _derive_acts squares them.
        blocks.put(acts["sumsq"], [j for j, _ in chosen], [acc.total_norm() for _, acc in chosen])
        chosen = [(j, acc) for j, acc in zip(fired, accs, strict=True) if acc.input_norms]
        # Norms too; _derive_acts divides them by the root of the entries they read.
        norms = [acc.input_norm() for _, acc in chosen]
        blocks.put(acts["input_rms"], [j for j, _ in chosen], norms)
        self._put_unit_counts(blocks, fired, acts, step)
        self._put_time_grads(blocks, acts)
        return acts

    def _put_time_grads(self, blocks: _Blocks, acts: dict) -> None:
        """First and last time-step gradient norms of recurrences (layers and loops)."""
        pairs = dict(self.time_grads)
        for j, calls in self.call_grads.items():
            measured = calls.first_and_last()
            if measured is not None and j not in pairs:
                pairs[j] = measured
        for j, (first, last) in pairs.items():
            blocks.put(acts["time_grad_first"], (j,), [first])
            blocks.put(acts["time_grad_last"], (j,), [last])

    def _put_unit_counts(self, blocks: _Blocks, fired: list[int], acts: dict, step: int) -> None:
        """Silent units this step and dead units: silent on every detail step for the last
        ``unit_window`` training steps, seen silent on at least :data:`MIN_SILENT_DETAIL`
        detail steps in a row (or on ``unit_window`` of them, when that is fewer)."""
        needed = min(MIN_SILENT_DETAIL, self.unit_window)
        for j in fired:
            unit_max = self.acc[j].unit_max
            if unit_max is None:
                continue
            silent = unit_max <= 0
            streak = self._streaks[j]
            if streak is None or streak[0].shape != silent.shape:
                zeros = torch.zeros_like(silent, dtype=torch.int32)
                streak, gap = (zeros, zeros), 1
            else:
                gap = step - self._unit_steps[j]
            records, steps = ((streak[0] + 1) * silent, (streak[1] + gap) * silent)
            self._streaks[j] = (records, steps)
            self._unit_steps[j] = step
            dead = (records >= needed) & (steps >= self.unit_window)
            blocks.put(acts["silent_units"], (j,), [silent.sum()])
            blocks.put(acts["dead_units"], (j,), [dead.sum()])

    def _derive_acts(self, acts: dict[str, list[float]], fired: list[int]) -> None:
        for column in _COUNT_COLUMNS:
            acts[column] = [0.0] * len(self.kinds)
        for j in fired:
            acc = self.acc[j]
            for column in _COUNT_COLUMNS:
                acts[column][j] = float(getattr(acc, column))
            norm = acts["sumsq"][j]
            acts["sumsq"][j] = norm * norm
            if acc.input_sampled:
                acts["input_rms"][j] /= math.sqrt(acc.input_sampled)
            for part, column in (("bad", "nonfinite"), ("bad_input", "input_nonfinite")):
                if getattr(acc, part):  # 0/1 flags (combined across ranks by their max)
                    acts[column][j] = 1.0 if acts[column][j] > 0 else 0.0


def _light_values(
    grads: list[Tensor], layout: stats.Layout, loss: Tensor | None, scale: Any
) -> list[float]:
    """The gradients' L2 norms (grouped by ``layout``), then the loss and the scale when
    given, brought to the host together."""
    tail = [] if loss is None else [loss if loss.dtype is torch.float32 else loss.float()]
    if isinstance(scale, Tensor):
        tail.append(scale)
    with torch.no_grad():
        norms = layout.norms(grads, 2)
        if isinstance(norms, list):  # one stack for everything
            return stats.to_host(norms + [t.reshape(()) for t in tail])
        return stats.to_host([norms, *(t.reshape(1) for t in tail)])


#: The row statistics of weight matrices: column, then its function for a stack of
#: same-shaped matrices and for a list of matrices.
_ROW_STATISTICS = (
    ("row_spread", stats.stacked_row_spread, stats.row_spread),
    ("row_twins", stats.stacked_row_twins, stats.row_twins),
)


def _row_spreads(
    params: list[Tensor],
    layout: stats.Layout | None,
    stacks: list[Tensor] | None,
    copies_seen: set[int] | None,
) -> list[tuple[str, list[int], Tensor | list[Tensor]]]:
    """The row statistics (:data:`_ROW_STATISTICS`) of every weight matrix: (column,
    parameter positions, values), one per stacked group of same-shaped matrices and one
    for the others.  Copies (``row_twins``) only of the matrices in ``copies_seen``
    (every one when None)."""
    out: list[tuple[str, list[int], Tensor | list[Tensor]]] = []

    def wanted(column: str, positions: list[int]) -> bool:
        return column != "row_twins" or copies_seen is None or bool(copies_seen & set(positions))

    alone = range(len(params))
    if layout is not None and stacks is not None:
        for group, stacked in zip(layout.groups, stacks, strict=True):
            # A group of matrices (or higher: conv kernels); complex weights have no order
            # to sort rows by: their row statistics are not measured.
            if stacked.dim() >= 3 and not stacked.is_complex():
                out += [
                    (c, group, of_stack(stacked))
                    for c, of_stack, _ in _ROW_STATISTICS
                    if wanted(c, group)
                ]
        alone = layout.rest
    matrices = [i for i in alone if params[i].dim() >= 2 and not params[i].is_complex()]
    for column, _, of_list in _ROW_STATISTICS:
        chosen = [i for i in matrices if wanted(column, [i])]
        if chosen:
            out.append((column, chosen, of_list([params[i] for i in chosen])))
    return out


def _flag_columns(
    fired: list[int], accs: list[stats.ActivationAccumulator]
) -> list[tuple[str, list[int], Tensor | list[Tensor]]]:
    """(column, modules, flags): whether any output (input) of each module had a NaN/Inf.

    Each distinct tensor is checked once (a Sequential's input to a layer is the output
    of the layer before), every tensor of the step in one foreach call; a module's flag
    is the count of its non-finite tensors (the host turns it into 0/1).
    """
    index: dict[int, int] = {}
    tensors: list[Tensor] = []
    pairs: dict[str, tuple[list[int], list[int]]] = {part: ([], []) for part in _FLAG_PARTS}
    for j, acc in zip(fired, accs, strict=True):
        for part in _FLAG_PARTS:
            modules, which = pairs[part]
            for t in getattr(acc, part):
                k = index.setdefault(id(t), len(tensors))
                if k == len(tensors):
                    tensors.append(t)
                modules.append(j)
                which.append(k)
    if not tensors:
        return []
    try:
        norms = stats.nonfinite_flags(tensors)
        norms = norms if isinstance(norms, Tensor) else torch.stack(norms)
        bad = (~torch.isfinite(norms)).to(torch.float32)
    except RuntimeError:  # tensors on several devices: per module, as before
        return [
            (
                column,
                [j for j, acc in zip(fired, accs, strict=True) if getattr(acc, part)],
                _flags([getattr(acc, part) for acc in accs if getattr(acc, part)]),
            )
            for part, column in _DEVICE_COLUMNS
            if part in _FLAG_PARTS
        ]
    out: list[tuple[str, list[int], Tensor | list[Tensor]]] = []
    for part, column in (("bad", "nonfinite"), ("bad_input", "input_nonfinite")):
        modules, which = pairs[part]
        if not modules:
            continue
        positions = sorted(set(modules))
        if positions == modules:  # one tensor per module
            out.append((column, positions, bad[torch.tensor(which, device=bad.device)]))
            continue
        slot = {j: s for s, j in enumerate(positions)}
        owners = torch.tensor([slot[j] for j in modules], device=bad.device)
        picked = bad[torch.tensor(which, device=bad.device)]
        counts = torch.zeros(len(positions), device=bad.device).index_add_(0, owners, picked)
        out.append((column, positions, counts))
    return out


def _flags(per_module: list[list[Tensor]]) -> list[Tensor]:
    """0/1 per module: whether any of its calls' tensors had a NaN/Inf, from one foreach
    call over every tensor (flags, not sums, so ranks can combine them by their max)."""
    norms = stats.nonfinite_flags([t for tensors in per_module for t in tensors])
    norms = list(norms.unbind()) if isinstance(norms, Tensor) else norms
    out, k = [], 0
    for tensors in per_module:
        part = norms[k : k + len(tensors)]
        k += len(tensors)
        total = part[0] if len(part) == 1 else torch.stack(part).sum()
        out.append((~torch.isfinite(total)).to(torch.float32))
    return out


def _layout_key(x: Tensor) -> tuple:
    """Which tensor (storage, shape, strides): a permuted view is another layout."""
    try:
        return (x.data_ptr(), tuple(x.shape), x.stride())
    except RuntimeError:  # a tensor subclass without storage
        return (id(x),)


def _finite(value: float) -> bool:
    return value == value and value not in (math.inf, -math.inf)


def _nonfinite_outputs(acts: dict[str, list[float]]) -> bool:
    return any(bad == 1.0 for bad in acts["nonfinite"])
