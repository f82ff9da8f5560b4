"""Per-layer signals derived from a History, shared by every plugin that judges.

These are measurements rearranged (per-layer norms in forward order, windows,
loss trends), not judgements: thresholds live in the plugins.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from gradscope.history import History
from gradscope.modelinfo import ModelInfo

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


def _combine_norms(columns: Tensor) -> Tensor:
    """Norm over several parameters from their norms, (T, k) -> (T,)."""
    return columns.square().sum(dim=1).sqrt()


def layer_signals(history: History) -> list[LayerSignal]:
    """One :class:`LayerSignal` per module owning trainable parameters, in forward order.

    Modules whose parameters never got a gradient are left out (see ``no_gradient``).
    """
    if not history.records:
        return []
    history.settle()
    l2 = history.grad_series("grad_l2")
    l1 = history.grad_series("grad_l1")
    pn = history.grad_series("param_norm")
    un = history.grad_series("update_norm")
    nf = history.grad_series("grad_nonfinite")
    numel = history.grad_series("numel")[0]
    has = history.grad_series("has_grad")
    rank = history.depth_rank()
    by_module: dict[str, list[int]] = {}
    for i, module in enumerate(history.param_modules):
        if history.grad_seen[i]:
            by_module.setdefault(module, []).append(i)
    signals = []
    for module, idx in by_module.items():
        cols = torch.tensor(idx)
        present = has[:, cols].sum(dim=1) > 0
        grad = _combine_norms(torch.nan_to_num(l2[:, cols], nan=0.0))
        grad = torch.where(present, grad, torch.full_like(grad, math.nan))
        # A non-finite entry anywhere in the module makes its norm non-finite.
        grad = torch.where(torch.isfinite(l2[:, cols]).all(dim=1) | ~present, grad, math.inf)
        n = float(numel[cols].sum())
        mean_abs = torch.nan_to_num(l1[:, cols], nan=0.0).sum(dim=1) / max(n, 1.0)
        measured = present & ~torch.isnan(l1[:, cols]).all(dim=1)  # L1 runs on detail steps
        mean_abs = torch.where(measured, mean_abs, torch.full_like(mean_abs, math.nan))
        j = history.module_names.index(module) if module in history.module_names else -1
        signals.append(
            LayerSignal(
                name=module,
                type=history.module_types[j] if j >= 0 else "?",
                depth=rank.get(module, len(rank)),
                params=[history.param_names[i] for i in idx],
                numel=int(n),
                grad_norm=grad,
                grad_mean_abs=mean_abs,
                param_norm=_combine_norms(pn[:, cols]),
                update_norm=_combine_norms(un[:, cols]),
                nonfinite=torch.nan_to_num(nf[:, cols], nan=0.0).sum(dim=1),
            )
        )
    signals.sort(key=lambda s: s.depth)
    return signals


def init_scale(signal: LayerSignal, model_info: ModelInfo) -> float:
    """Weight RMS times sqrt(fan-in): ~0.58 for PyTorch's default, 1 LeCun, 1.41 Kaiming."""
    for name in signal.params:
        shape = model_info.param_shapes.get(name)
        if name.endswith("weight") and shape and len(shape) >= 2:
            fan_in = math.prod(shape[1:])
            # The first record is measured before the first update: the init itself.
            # The layer's norm includes its bias, which is small next to the weight.
            weight_rms = early(signal.param_norm, 1) / math.sqrt(max(signal.numel, 1))
            return weight_rms * math.sqrt(fan_in)
    return math.nan


def recent(series: Tensor, window: int = DEFAULT_WINDOW) -> float:
    """Median of the last ``window`` finite values (NaN if none): a run that turned
    non-finite is judged on its last finite records."""
    finite = series[torch.isfinite(series)]
    return _finite_median(finite[-window:])


def early(series: Tensor, window: int = DEFAULT_WINDOW) -> float:
    """Median of the first ``window`` finite values (NaN if none)."""
    return _finite_median(series[:window])


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
    losses = history.losses()
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


#: The count each activation column is a fraction of.
_DENOMINATOR = {"zeros": "zero_sampled", "saturated": "sampled"}


def activation_fraction(history: History, column: str, window: int = DEFAULT_WINDOW) -> dict:
    """Per module: ``column`` (zeros, saturated) as a fraction of the entries it was counted
    on, over the last ``window`` records in which it was measured."""
    values = history.act_series(column)
    sampled = history.act_series(_DENOMINATOR[column])
    measured = torch.nonzero((sampled > 0).any(dim=1) & torch.isfinite(values).any(dim=1))
    rows = measured.flatten()[-window:]
    values, sampled = values[rows], sampled[rows]
    out = {}
    for j, name in enumerate(history.module_names):
        ran = sampled[:, j] > 0
        ok = ran & torch.isfinite(values[:, j])
        if bool(ok.any()):
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
