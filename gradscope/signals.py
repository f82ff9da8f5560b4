"""Per-layer signals derived from a History, shared by every plugin that judges.

These are measurements rearranged (per-layer norms in forward order, windows,
loss trends), not judgements: thresholds live in the plugins.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import torch
from torch import Tensor

from gradscope.history import History
from gradscope.modelinfo import ModelInfo
from gradscope.statistics import SHARE_OF

#: Records treated as "the start" and "recent" when a plugin asks for a window.
DEFAULT_WINDOW = 5
#: Logged losses that make the loss curve's starting point.
HEAD = 3


@dataclass
class LayerSignal:
    """Gradient and parameter series of one module (all of its trainable parameters).

    Each series has one value per kept record; NaN where the module had no gradient.
    """

    name: str
    type: str
    depth: int
    params: list[str]
    numel: int
    grad_norm: Tensor
    grad_mean_abs: Tensor
    param_norm: Tensor
    update_norm: Tensor
    nonfinite: Tensor
    #: ``grad_norm`` and ``param_norm`` over the module's weight matrices only (its
    #: parameters of two or more dimensions; all of them when it has none, or when the
    #: history does not know the shapes): a layer learns features in its weights, and a
    #: bias's gradient can be large while they stay where they were initialised.
    matrix_grad_norm: Tensor
    matrix_norm: Tensor
    matrix_update_norm: Tensor

    @property
    def relative_grad(self) -> Tensor:
        """||grad|| / ||param||: gradient size in units of the weights it moves."""
        return self.grad_norm / self.param_norm.clamp_min(1e-12)

    @property
    def update_ratio(self) -> Tensor:
        """||update|| / ||param|| of each step (NaN without an optimizer)."""
        return self.update_norm / self.param_norm.clamp_min(1e-12)

    @property
    def rms(self) -> Tensor:
        """Root-mean-square of the parameter entries."""
        return self.param_norm / math.sqrt(max(self.numel, 1))


def layer_signals(history: History) -> list[LayerSignal]:
    """One :class:`LayerSignal` per module owning trainable parameters, in forward order.

    Modules whose parameters never got a gradient are left out (see ``no_gradient``).
    Every module's series come from a few whole-table reductions (parameters summed into
    their modules), so 1,000 layers cost about what ten do.
    """
    if not history.records:
        return []
    memo = _MEMO.get()
    kept = memo.get(id(history)) if memo is not None else None
    if kept is not None and kept[0] is history:
        return list(kept[1])
    signals = _layer_signals(history)
    if memo is not None:
        memo[id(history)] = (history, signals)
    return list(signals)


_MEMO: ContextVar[dict[int, tuple[History, list[LayerSignal]]] | None] = ContextVar(
    "gradscope_layer_signals", default=None
)


@contextmanager
def shared_signals() -> Iterator[None]:
    """Within the block, :func:`layer_signals` is computed once per history and shared by
    every caller (``judge()`` runs its detectors in one: the history does not change
    meanwhile, and a model of 1,000 layers is read once instead of once per detector)."""
    token = _MEMO.set(_MEMO.get() if _MEMO.get() is not None else {})
    try:
        yield
    finally:
        _MEMO.reset(token)


def _layer_signals(history: History) -> list[LayerSignal]:
    history.settle()
    by_module: dict[str, list[int]] = {}
    for i, module in enumerate(history.param_modules):
        if history.grad_seen[i]:
            by_module.setdefault(module, []).append(i)
    if not by_module:
        return []
    columns = _module_columns(history, list(by_module.values()))
    rank = history.depth_rank()
    where = {name: j for j, name in enumerate(history.module_names)}
    signals = []
    for m, (module, idx) in enumerate(by_module.items()):
        j = where.get(module, -1)
        signals.append(
            LayerSignal(
                name=module,
                type=history.module_types[j] if j >= 0 else "?",
                depth=rank.get(module, len(rank)),
                params=[history.param_names[i] for i in idx],
                numel=int(columns["numel"][m]),
                **{field: columns[field][:, m] for field in _SERIES},
            )
        )
    signals.sort(key=lambda s: s.depth)
    return signals


_SERIES = (
    "grad_norm",
    "grad_mean_abs",
    "param_norm",
    "update_norm",
    "nonfinite",
    "matrix_grad_norm",
    "matrix_norm",
    "matrix_update_norm",
)


def _module_columns(history: History, groups: list[list[int]]) -> dict[str, Tensor]:
    """Per-module (T, M) series of :class:`LayerSignal`, from the per-parameter tables:
    each parameter's column summed into its module's (``index_add``)."""
    flat = [i for idx in groups for i in idx]
    cols = torch.tensor(flat)
    owner = torch.tensor([m for m, idx in enumerate(groups) for _ in idx])
    n_modules = len(groups)

    def per_module(table: Tensor) -> Tensor:
        out = torch.zeros(table.shape[0], n_modules, dtype=table.dtype)
        return out.index_add_(1, owner, table)

    l2 = history.grad_series("grad_l2")[:, cols]
    l1 = history.grad_series("grad_l1")[:, cols]
    numel = per_module(history.grad_series("numel")[:1, cols])[0]
    present = per_module(history.grad_series("has_grad")[:, cols]) > 0
    # A non-finite entry anywhere in the module makes its norm non-finite.
    all_finite = per_module((~torch.isfinite(l2)).to(l2.dtype)) == 0

    def grad_norm(keep: Tensor) -> Tensor:
        squares = torch.where(keep, torch.nan_to_num(l2, nan=0.0).square(), 0.0)
        norm = per_module(squares).sqrt()
        norm = torch.where(present, norm, torch.full_like(norm, math.nan))
        return torch.where(all_finite | ~present, norm, math.inf)

    mean_abs = per_module(torch.nan_to_num(l1, nan=0.0)) / numel.clamp_min(1.0)
    measured = present & (per_module((~torch.isnan(l1)).to(l1.dtype)) > 0)  # detail steps
    mean_abs = torch.where(measured, mean_abs, torch.full_like(mean_abs, math.nan))
    weights = history.grad_series("param_norm")[:, cols]
    updates = history.grad_series("update_norm")[:, cols]
    matrix = _matrix_columns(history, flat, owner, n_modules)
    everything = torch.ones_like(matrix)
    return {
        "numel": numel,
        "grad_norm": grad_norm(everything),
        "grad_mean_abs": mean_abs,
        "param_norm": per_module(weights.square()).sqrt(),
        "update_norm": per_module(updates.square()).sqrt(),
        "nonfinite": per_module(torch.nan_to_num(history.grad_series("grad_nonfinite")[:, cols])),
        "matrix_grad_norm": grad_norm(matrix),
        "matrix_norm": per_module(torch.where(matrix, weights, 0.0).square()).sqrt(),
        "matrix_update_norm": per_module(torch.where(matrix, updates, 0.0).square()).sqrt(),
    }


def _matrix_columns(history: History, flat: list[int], owner: Tensor, n_modules: int) -> Tensor:
    """Per column of ``flat``: whether the parameter counts as its module's weight matrix
    (two or more dimensions; every parameter of a module without one, or of a history
    that does not know the shapes)."""
    if len(history.param_ndims) != len(history.param_names):
        return torch.ones(len(flat), dtype=torch.bool)
    matrix = torch.tensor([history.param_ndims[i] >= 2 for i in flat], dtype=torch.bool)
    has_matrix = torch.zeros(n_modules, dtype=torch.bool).index_put_(
        (owner[matrix],), torch.tensor(True), accumulate=False
    )
    return matrix | ~has_matrix[owner]


def default_init_norm(signal: LayerSignal, model_info: ModelInfo) -> float:
    """The norm a PyTorch-default-initialised copy of the layer's weight matrices (its
    parameters of two or more dimensions, whatever their names) has: each entry of
    variance 1 / (3 fan_in).  0 when the shapes are unknown."""
    total = 0.0
    for name in signal.params:
        shape = model_info.param_shapes.get(name)
        if shape and len(shape) >= 2:
            fan_in = math.prod(shape[1:])
            total += math.prod(shape) / (3.0 * max(fan_in, 1))
    return math.sqrt(total)


def init_scale(signal: LayerSignal, model_info: ModelInfo) -> float:
    """Weight RMS times sqrt(fan-in) of the layer's weight matrices at the first record
    (before the first update: the init itself): ~0.58 for PyTorch's default, 1 LeCun,
    1.41 Kaiming.  Biases are left out; a layer of several matrices (a recurrence's
    input and recurrent weights) gets the one scale that gives its matrices' norm."""
    default = default_init_norm(signal, model_info)
    if default <= 0:
        return math.nan
    # Default init has scale 1/sqrt(3): the layer's norm over that copy's, times it.
    return early(signal.matrix_norm, 1) / default / math.sqrt(3.0)


def recent(series: Tensor, window: int = DEFAULT_WINDOW) -> float:
    """Median of the last ``window`` finite values (NaN if none): a run that turned
    non-finite is judged on its last finite records."""
    finite = series[torch.isfinite(series)]
    return _finite_median(finite[-window:])


def early(series: Tensor, window: int = DEFAULT_WINDOW) -> float:
    """Median of the first ``window`` finite values (NaN if none)."""
    return _finite_median(series[torch.isfinite(series)][:window])


def over_run(series: Tensor) -> float:
    """Median of every finite value of the run (NaN if none): the typical value over
    training, as the definitions measure a layer's relative gradient."""
    return _finite_median(series)


def step_weighted_median(values: Tensor, steps: list[int]) -> float:
    """Median of ``values`` measured at training ``steps`` (finite ones only), each value
    standing for the steps until the next measurement: detail steps come dense at the
    start and sparse later, and an unweighted median would over-count the first steps."""
    if len(steps) != values.numel():
        raise ValueError(f"{values.numel()} values for {len(steps)} steps")
    at = torch.tensor(steps, dtype=torch.float64)
    gaps = at.diff()
    weights = torch.cat([gaps, gaps[-1:] if gaps.numel() else torch.ones(1, dtype=at.dtype)])
    keep = torch.isfinite(values)
    if not bool(keep.any()):
        return math.nan
    kept, weight = values[keep].double(), weights[keep]
    order = kept.argsort()
    cumulative = weight[order].cumsum(0)
    middle = int(torch.searchsorted(cumulative, cumulative[-1] / 2))
    return float(kept[order][middle])


def _finite_median(values: Tensor) -> float:
    finite = values[torch.isfinite(values)]
    if finite.numel() == 0:
        return math.nan
    return float(finite.median())


@dataclass
class LossTrend:
    """How the logged loss moved: early and recent medians and the relative improvement."""

    logged: int
    first: float
    last: float
    best: float
    improvement: float
    late_improvement: float = math.nan
    #: The largest finite loss of the run (a transient blow-up shows here).
    peak: float = math.nan
    #: The first logged loss (at the initial weights).
    initial: float = math.nan

    @property
    def known(self) -> bool:
        """Whether enough loss values were logged to say anything."""
        return self.logged >= 4 and math.isfinite(self.first) and math.isfinite(self.last)


def loss_trend(history: History, window: int = DEFAULT_WINDOW) -> LossTrend:
    """Summarise the loss curve; ``improvement`` is (first - last) / |first|, and
    ``late_improvement`` the same over the second half of the run.

    ``first`` is the median of the first three logged losses only: a learning rate that
    blows up within the first steps must not raise the baseline it is compared with.
    """
    return trend_of(history.losses(), window)


def trend_of(losses: torch.Tensor, window: int = DEFAULT_WINDOW) -> LossTrend:
    """:func:`loss_trend` of a series of logged losses (NaN where none was logged)."""
    finite = losses[torch.isfinite(losses)]
    logged = int((~torch.isnan(losses)).sum())
    if finite.numel() == 0:
        return LossTrend(logged, math.nan, math.nan, math.nan, math.nan)
    w = max(1, min(window, finite.numel() // 3 or 1))
    first = float(finite[: min(w, HEAD)].median())
    last = float(finite[-w:].median())
    improvement = (first - last) / max(abs(first), 1e-12)
    # The second half is compared on wide windows: a noisy loss must not look like progress.
    wide = max(w, finite.numel() // 5)
    half = finite[finite.numel() // 2 :]
    middle = float(half[:wide].median())
    late = (middle - float(finite[-wide:].median())) / max(abs(middle), 1e-12)
    return LossTrend(
        logged,
        first,
        last,
        float(finite.min()),
        improvement,
        late,
        float(finite.max()),
        float(finite[0]),
    )


#: Columns summarised by the median of each record's fraction, as docs/definitions.md
#: takes saturation (a generator whose saturation swings between steps is judged by its
#: typical step, not by entries pooled over the window); the others are pooled.
_PER_STEP_MEDIAN = frozenset({"saturated"})


def activation_fraction(history: History, column: str, window: int = DEFAULT_WINDOW) -> dict:
    """Per module: ``column`` (zeros, saturated) as a fraction of the entries it was counted
    on (pooled; for saturation the median of each record's fraction), over the last
    ``window`` records in which it was measured within the second half of the run (the
    warm-up's detail steps do not speak for its end; the latest measured record always
    counts).  A run that turned non-finite ends at its last finite record:
    what NaN outputs count says nothing about the activations that led there."""
    values = history.act_series(column)
    sampled = history.act_series(SHARE_OF[column])
    ok = (sampled > 0).any(dim=1) & torch.isfinite(values).any(dim=1)
    bad = [k for k, record in enumerate(history.records) if record.nonfinite]
    end = len(history.records) - 1
    if bad and bool(ok[: bad[0]].any()):
        ok[bad[0] :] = False
        end = bad[0] - 1
    rows = torch.nonzero(ok).flatten()
    if rows.numel():
        steps = torch.tensor(history.steps, dtype=torch.float64)
        middle = (steps[0] + steps[end]) / 2
        late = rows[steps[rows] >= middle]
        rows = late if late.numel() else rows[-1:]
    rows = rows[-window:]
    values, sampled = values[rows], sampled[rows]
    out = {}
    for j, name in enumerate(history.module_names):
        ran = sampled[:, j] > 0
        ok = ran & torch.isfinite(values[:, j])
        if bool(ok.any()):
            if column in _PER_STEP_MEDIAN:
                out[name] = float((values[ok, j] / sampled[ok, j]).median())
            else:
                out[name] = float(values[ok, j].sum() / sampled[ok, j].sum())
    return out


def last_measured(history: History, column: str) -> dict[str, tuple[int, float]]:
    """Per parameter: (step, value) of the latest record where gradient ``column`` was measured."""
    series = history.grad_series(column)
    steps = history.steps
    out = {}
    for i, name in enumerate(history.param_names):
        finite = torch.nonzero(~torch.isnan(series[:, i])).flatten()
        if finite.numel():
            k = int(finite[-1])
            out[name] = (steps[k], float(series[k, i]))
    return out


def norm_gains(history: History, model_info: ModelInfo) -> dict[str, float]:
    """Normalisation layer -> the root mean square of its gain (its 1-D ``weight``) at the
    first record that measured it: 1 for PyTorch's and most libraries' initialisation."""
    if not history.records:
        return {}
    norms = history.grad_series("param_norm")
    numel = history.grad_series("numel")[0]
    layers = {layer.name for layer in model_info.layers if layer.role == "norm"}
    out = {}
    owners = zip(history.param_names, history.param_modules, strict=True)
    for k, (name, module) in enumerate(owners):
        if module not in layers or name != f"{module}.weight":
            continue
        if len(model_info.param_shapes.get(name, [])) != 1:
            continue
        value = early(norms[:, k], 1)
        if math.isfinite(value) and numel[k] > 0:
            out[module] = value / math.sqrt(float(numel[k]))
    return out


def first_output_rms(history: History) -> dict[str, float]:
    """Module -> the root mean square of its sampled output at the first record that
    measured it (modules never measured are left out)."""
    sumsq, sampled = history.act_series("sumsq"), history.act_series("sampled")
    out = {}
    for j, name in enumerate(history.module_names):
        measured = torch.nonzero((sampled[:, j] > 0) & torch.isfinite(sumsq[:, j])).flatten()
        if measured.numel():
            k = int(measured[0])
            out[name] = math.sqrt(float(sumsq[k, j]) / float(sampled[k, j]))
    return out


def data_rms(history: History, model_info: ModelInfo) -> tuple[str, float] | None:
    """The size of the data as the model sees it: (the first layer with parameters, in
    forward order; the median root mean square of its input over the records that measured
    it), or None when it was not measured (token ids into an embedding, no detail step)."""
    first = next((layer for layer in model_info.layers if layer.params), None)
    if first is None or first.name not in history.module_names or not history.records:
        return None
    values = history.act_series("input_rms")[:, history.module_names.index(first.name)]
    values = values[torch.isfinite(values)]
    return (first.name, float(values.median())) if values.numel() else None
