"""Bounded per-layer time series of recorded steps.

The first ``head`` records (each layer's baseline) and the most recent ``tail``
records are always kept; the records in between are thinned by halving, so a run
of any length costs at most ``capacity`` records.  Facts that must survive the
thinning (the first step a gradient turned non-finite, how often a parameter got a
gradient) are kept as running tallies beside the records.
"""

from __future__ import annotations

import array
import itertools
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from gradscope.statistics import ACT_COLUMNS, GRAD_COLUMNS


@dataclass
class StepRecord:
    """What one recorded step measured, already on the host.

    ``grads[column][i]`` belongs to parameter ``i`` of :attr:`History.param_names`
    (NaN where it had no gradient); ``acts[column][j]`` to module ``j`` of
    :attr:`History.module_names`.
    """

    step: int
    loss: float | None
    scale: float | None
    grads: dict[str, list[float]]
    acts: dict[str, list[float]]
    hooks_fired: int = 0
    overhead_s: float = 0.0
    #: Whether the step measured the detail statistics (activations, update sizes).
    detail: bool = True
    #: Whether a gradient, the loss or a checked module output was NaN/Inf.
    nonfinite: bool = False

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready copy."""
        return {
            "step": self.step,
            "loss": _json_float(self.loss),
            "scale": _json_float(self.scale),
            "grads": {k: [_json_float(v) for v in vs] for k, vs in self.grads.items()},
            "acts": {k: [_json_float(v) for v in vs] for k, vs in self.acts.items()},
            "hooks_fired": self.hooks_fired,
            "overhead_s": self.overhead_s,
            "detail": self.detail,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StepRecord:
        """Inverse of :meth:`to_dict`; a column a run saved by an older version did not
        measure reads as NaN (not measured)."""
        grads = {k: [_from_json_float(v) for v in vs] for k, vs in data["grads"].items()}
        acts = {k: [_from_json_float(v) for v in vs] for k, vs in data["acts"].items()}
        for table, columns in ((grads, GRAD_COLUMNS), (acts, ACT_COLUMNS)):
            width = len(next(iter(table.values()), []))
            for column in columns:
                table.setdefault(column, [math.nan] * width)
        record = cls(
            step=data["step"],
            loss=_from_json_float(data["loss"]),
            scale=_from_json_float(data["scale"]),
            grads=grads,
            acts=acts,
            hooks_fired=data.get("hooks_fired", 0),
            overhead_s=data.get("overhead_s", 0.0),
            detail=data.get("detail", True),
        )
        record.nonfinite = _any_nonfinite(record)
        return record


def _json_float(v: float | None) -> float | str | None:
    if v is None:
        return None
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return v


def _from_json_float(v: float | str | None) -> float | None:
    if v is None:
        return None
    return float(v)


@dataclass
class History:
    """Recorded steps of one run, bounded in memory, with depth-ordered names.

    Args:
        param_names: qualified names of the trainable parameters.
        param_modules: the module (qualified name) that owns each parameter.
        module_names: qualified names of the hooked modules.
        module_types: class name of each hooked module.
        param_ndims: number of dimensions of each parameter (empty when unknown).
        capacity: most records kept; older middle records are thinned.
    """

    param_names: list[str]
    param_modules: list[str]
    module_names: list[str]
    module_types: list[str]
    param_ndims: list[int] = field(default_factory=list)
    capacity: int = 1024
    head: int = 64
    tail: int = 512
    records: list[StepRecord] = field(default_factory=list)
    module_order: list[int] = field(default_factory=list)
    recorded: int = 0
    grad_seen: list[int] = field(default_factory=list)
    first_nonfinite_grad: list[int | None] = field(default_factory=list)
    first_nonfinite_act: list[int | None] = field(default_factory=list)
    #: Per module: the first step whose replay found the module's *input* non-finite.
    first_nonfinite_input: list[int | None] = field(default_factory=list)
    first_nonfinite_loss: int | None = None
    #: Whether module outputs were checked on the first step with a NaN/Inf (None: no such step).
    nonfinite_outputs_checked: bool | None = None
    calls_total: list[int] = field(default_factory=list)
    late_losses: dict[int, Any] = field(default_factory=dict)
    _pending_has: list[float] | None = field(default=None, repr=False, compare=False)
    _pending_count: int = field(default=0, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.capacity = max(self.capacity, 8)
        self.head = min(self.head, self.capacity // 4)
        self.tail = min(self.tail, self.capacity // 2)
        if not self.grad_seen:
            self.grad_seen = [0] * len(self.param_names)
            self.first_nonfinite_grad = [None] * len(self.param_names)
        if not self.first_nonfinite_act:
            self.first_nonfinite_act = [None] * len(self.module_names)
        if not self.first_nonfinite_input:
            self.first_nonfinite_input = [None] * len(self.module_names)
            self.calls_total = [0] * len(self.module_names)
        if not self.module_order:
            self.module_order = list(range(len(self.module_names)))

    # -- writing ---------------------------------------------------------------
    def append(self, record: StepRecord) -> None:
        """Add a record, update the running tallies and keep memory bounded.

        A healthy light step costs no per-layer Python: gradient presence is tallied
        lazily (see :meth:`settle`), and the non-finite and call tallies only look at
        records that went bad or measured activations.
        """
        self.recorded += 1
        has_grad = record.grads["has_grad"]
        if has_grad is self._pending_has:
            self._pending_count += 1
        else:
            self._tally_presence()
            self._pending_has, self._pending_count = has_grad, 1
        if record.nonfinite:
            self._note_nonfinite(record)
        if record.detail:
            for j, calls in enumerate(record.acts["calls"]):
                if calls:
                    self.calls_total[j] += int(calls)
        self.records.append(record)
        if len(self.records) > self.capacity:
            middle = self.records[self.head : len(self.records) - self.tail]
            self.records = (
                self.records[: self.head]
                + middle[::2]
                + self.records[len(self.records) - self.tail :]
            )

    def _note_nonfinite(self, record: StepRecord) -> None:
        l2 = record.grads["grad_l2"]
        for i, seen in enumerate(record.grads["has_grad"]):
            if seen and self.first_nonfinite_grad[i] is None and not math.isfinite(l2[i]):
                self.first_nonfinite_grad[i] = record.step
        # Also set by a replay of the step's forward (see gradscope.replay), without calls.
        for j, bad in enumerate(record.acts["nonfinite"]):
            if bad == 1.0 and self.first_nonfinite_act[j] is None:
                self.first_nonfinite_act[j] = record.step
        for j, bad in enumerate(record.acts.get("input_nonfinite", ())):
            if bad == 1.0 and self.first_nonfinite_input[j] is None:
                self.first_nonfinite_input[j] = record.step
        if (
            self.first_nonfinite_loss is None
            and record.loss is not None
            and not math.isfinite(record.loss)
        ):
            self.first_nonfinite_loss = record.step
        if self.nonfinite_outputs_checked is None:
            self.nonfinite_outputs_checked = any(v == v for v in record.acts["nonfinite"])

    def _tally_presence(self) -> None:
        pending, count = self._pending_has, self._pending_count
        if pending is not None and count:
            for i, seen in enumerate(pending):
                if seen:
                    self.grad_seen[i] += count
        self._pending_has, self._pending_count = None, 0

    def settle(self) -> None:
        """Bring the running tallies up to date (gradient presence, late losses).

        Called before judging, saving and by every reader of the tallies.
        """
        self._tally_presence()
        self._resolve_losses()

    def set_loss(self, step: int, loss: Any) -> None:
        """Attach a loss (a float or a tensor, read lazily) to an already recorded step."""
        self.late_losses[step] = loss

    def _resolve_losses(self) -> None:
        if not self.late_losses:
            return
        by_step = {r.step: r for r in self.records}
        for step, loss in self.late_losses.items():
            value = float(loss.detach().float()) if isinstance(loss, torch.Tensor) else float(loss)
            if step in by_step:
                by_step[step].loss = value
            if self.first_nonfinite_loss is None and not math.isfinite(value):
                self.first_nonfinite_loss = step
        self.late_losses.clear()

    # -- reading ---------------------------------------------------------------
    @property
    def steps(self) -> list[int]:
        """Step index of each kept record."""
        return [r.step for r in self.records]

    def __len__(self) -> int:
        return len(self.records)

    def losses(self) -> torch.Tensor:
        """Loss per kept record (NaN where none was logged), shape (T,)."""
        self._resolve_losses()
        return torch.tensor(
            [math.nan if r.loss is None else r.loss for r in self.records], dtype=torch.float64
        )

    def grad_series(self, column: str) -> torch.Tensor:
        """One gradient column over time, shape (T, P), parameters in attach order."""
        if column not in GRAD_COLUMNS:
            raise KeyError(f"unknown gradient column {column!r}; known: {GRAD_COLUMNS}")
        return _table([r.grads[column] for r in self.records], len(self.param_names))

    def act_series(self, column: str) -> torch.Tensor:
        """One activation column over time, shape (T, M), modules in attach order."""
        if column not in ACT_COLUMNS:
            raise KeyError(f"unknown activation column {column!r}; known: {ACT_COLUMNS}")
        return _table([r.acts[column] for r in self.records], len(self.module_names))

    def depth_rank(self) -> dict[str, int]:
        """Module name -> position in forward order (modules never called come last)."""
        return {self.module_names[j]: rank for rank, j in enumerate(self.module_order)}

    # -- persistence -----------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready copy, tallies included."""
        self.settle()
        return {
            "param_names": self.param_names,
            "param_modules": self.param_modules,
            "module_names": self.module_names,
            "module_types": self.module_types,
            "param_ndims": self.param_ndims,
            "module_order": self.module_order,
            "capacity": self.capacity,
            "recorded": self.recorded,
            "grad_seen": self.grad_seen,
            "first_nonfinite_grad": self.first_nonfinite_grad,
            "first_nonfinite_act": self.first_nonfinite_act,
            "first_nonfinite_input": self.first_nonfinite_input,
            "first_nonfinite_loss": self.first_nonfinite_loss,
            "nonfinite_outputs_checked": self.nonfinite_outputs_checked,
            "calls_total": self.calls_total,
            "records": [r.to_dict() for r in self.records],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> History:
        """Inverse of :meth:`to_dict`."""
        return cls(
            param_names=data["param_names"],
            param_modules=data["param_modules"],
            module_names=data["module_names"],
            module_types=data["module_types"],
            param_ndims=data.get("param_ndims", []),
            module_order=data["module_order"],
            capacity=data["capacity"],
            recorded=data["recorded"],
            grad_seen=data["grad_seen"],
            first_nonfinite_grad=data["first_nonfinite_grad"],
            first_nonfinite_act=data["first_nonfinite_act"],
            first_nonfinite_input=data.get("first_nonfinite_input", []),
            first_nonfinite_loss=data["first_nonfinite_loss"],
            nonfinite_outputs_checked=data.get("nonfinite_outputs_checked"),
            calls_total=data["calls_total"],
            records=[StepRecord.from_dict(r) for r in data["records"]],
        )


def _table(rows: list[list[float]], width: int) -> torch.Tensor:
    """Rows of floats as a (len(rows), width) float64 tensor, through one flat buffer
    (about twice as fast as ``torch.tensor`` on nested lists of 1,000s of columns)."""
    flat = array.array("d", itertools.chain.from_iterable(rows))
    if len(flat) != len(rows) * width:
        raise ValueError(f"records hold {len(flat)} values, expected {len(rows)} x {width}")
    if not flat:
        return torch.empty((len(rows), width), dtype=torch.float64)
    return torch.frombuffer(flat, dtype=torch.float64).reshape(len(rows), width)


def went_nonfinite(record: StepRecord) -> bool:
    """Whether a gradient, the loss or a checked module output of this record is NaN/Inf."""
    return record.nonfinite


def _any_nonfinite(record: StepRecord) -> bool:
    """Recompute :attr:`StepRecord.nonfinite` from the columns (records loaded from JSON)."""
    if record.loss is not None and not math.isfinite(record.loss):
        return True
    if any(count > 0 for count in record.grads["grad_nonfinite"]):
        return True
    return any(bad == 1.0 for bad in record.acts["nonfinite"])
