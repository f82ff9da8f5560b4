"""exploding_gradient: updates too large for the weights, gradients growing, loss diverging.

Healthy training moves each weight matrix by about 1e-3 of its size per step.
This plugin flags a layer whose update is a large fraction of the weights
(``update_ratio``), gradient norms that grow by ``growth`` over the run, and a
loss that climbs far above where it started.  Gradients are read after
GradScaler unscaling, so loss scaling never looks like an explosion.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from gradscope import Finding, Suggestion, hookimpl
from gradscope.config import thresholds
from gradscope.history import History
from gradscope.modelinfo import ModelInfo
from gradscope.signals import early, init_scale, loss_trend, recent
from gradscope_plugins import fix_builders as fix
from gradscope_plugins.judgement import depth_layers, first_step_where, fmt, over

NAME = "exploding"
#: The statistics this detector reads (see gradscope.statistics); without them it cannot judge.
NEEDS = ("grad_l2", "param_norm")
#: A loss that fell by at least this fraction over the run is training, whatever the steps.
STALL = 0.05
DEFAULTS = {
    # One step moving a layer's weights by more than this fraction of their norm.
    "update_ratio": 0.5,
    # Gradient norm at the end over the start of the run.
    "growth": 1e3,
    # Loss at the end over the loss at the start.
    "loss_rise": 10.0,
    # Records at the start and end of the run that are compared.
    "window": 5,
}


def _finite_max(series: torch.Tensor) -> float:
    finite = series[torch.isfinite(series)]
    return float(finite.max()) if finite.numel() else math.nan


@hookimpl
def gradscope_detect(
    history: History, model_info: ModelInfo, config: dict[str, Any]
) -> list[Finding]:
    """Find the layer whose gradients or updates have blown up."""
    t = thresholds(config, NAME, DEFAULTS)
    window = int(t["window"])
    layers = depth_layers(history, model_info)
    if not layers:
        return []
    trend = loss_trend(history, window)
    losses = history.losses()
    loss_went_nonfinite = bool(((~torch.isfinite(losses)) & ~torch.isnan(losses)).any()) or (
        history.first_nonfinite_loss is not None
    )
    loss_rise = trend.last / trend.first if trend.known and trend.first > 0 else math.nan
    diverged = (math.isfinite(loss_rise) and loss_rise > t["loss_rise"]) or loss_went_nonfinite

    # Each layer's worst sustained update (median of three consecutive records).  A layer
    # that starts at zero (a zero-initialised head) has no size to compare updates with.
    update_peaks = {
        layer.name: _sustained_peak(layer.update_ratio)
        for layer in layers
        if float(layer.param_norm[0]) > 0
    }
    growth = {
        layer.name: recent(layer.grad_norm, window) / max(early(layer.grad_norm, window), 1e-30)
        for layer in layers
    }
    big_update = {
        n: r for n, r in update_peaks.items() if math.isfinite(r) and r > t["update_ratio"]
    }
    grown = {n: g for n, g in growth.items() if math.isfinite(g) and g > t["growth"]}
    if not (big_update or grown or (diverged and _grads_rising(layers, window))):
        return []
    improving = trend.known and trend.improvement >= STALL and not diverged
    if improving:
        # Large steps while the loss falls steadily: a small layer (a freshly initialised
        # head) moving fast, not an explosion.
        return []
    depth = {layer.name: i for i, layer in enumerate(layers)}
    if big_update:
        # The input-most layer over the line: where the blow-up can start (an RNN's recurrence,
        # the first badly initialised layer), not the head that inherits it.
        culprit = min(big_update, key=depth.get)
        what = (
            f"one optimizer step moves {culprit}'s weights by {fmt(big_update[culprit])} of their "
            "size (healthy training moves them by about 0.001)"
        )
    elif grown:
        culprit = min(grown, key=depth.get)
        what = f"the gradient of {culprit} grew {fmt(grown[culprit])}x during the run"
    else:
        culprit = max(growth, key=lambda n: growth[n] if math.isfinite(growth[n]) else -1)
        what = "the gradients kept rising while the loss climbed"
    layer = next(s for s in layers if s.name == culprit)
    scales = {s.name: init_scale(s, model_info) for s in layers}
    step = first_step_where(history, over(layer.update_ratio, t["update_ratio"]))
    message = _message(what, trend, loss_rise, loss_went_nonfinite)
    return [
        Finding(
            kind="exploding_gradient",
            layer=culprit,
            severity="error" if diverged else "warning",
            step=step,
            message=message,
            evidence={
                "update_ratio_peak": update_peaks,
                "grad_growth": growth,
                "grad_norm_peak": _finite_max(layer.grad_norm),
                "init_scale": scales,
                "loss_first": trend.first,
                "loss_last": trend.last,
                "loss_nonfinite": loss_went_nonfinite,
                "lr": model_info.lr,
                "threshold_update_ratio": t["update_ratio"],
            },
        )
    ]


def _message(what: str, trend: Any, loss_rise: float, loss_nonfinite: bool) -> str:
    return (
        f"Gradients explode: {what}. Steps this large throw the weights around instead of "
        "descending the loss"
        + (
            f"; the loss rose from {fmt(trend.first)} to {fmt(trend.last)}"
            if math.isfinite(loss_rise) and loss_rise > 1
            else ""
        )
        + ("; the loss became non-finite" if loss_nonfinite else "")
        + ". Clip the gradient norm, lower the learning rate, or fix the initialisation "
        "if the weights start too large."
    )


def _sustained_peak(series: torch.Tensor) -> float:
    """Largest median of three consecutive finite values (a single spike does not count)."""
    finite = series[torch.isfinite(series)]
    if finite.numel() == 0:
        return math.nan
    if finite.numel() < 3:
        return float(finite.min())
    return float(finite.unfold(0, 3, 1).median(dim=1).values.max())


def _grads_rising(layers: list, window: int) -> bool:
    return any(
        _finite_max(s.grad_norm) > 10 * max(early(s.grad_norm, window), 1e-30) for s in layers
    )



def plan(finding: Finding, info: ModelInfo) -> list[fix.Builder]:
    """Fixes for an exploding gradient, best first, chosen by its evidence."""
    roles = info.roles()
    layer = info.layer(finding.layer)
    if layer is not None and layer.role in ("vanilla_rnn", "gated_rnn"):
        # The recurrence multiplies by the same matrix every step: make it norm-preserving.
        return [fix.orthogonal_init, fix.clip_grad_norm, fix.lower_lr]
    too_big = [v for v in fix.scales(finding) if v > 3.0]
    sigmoid_like = roles & {"sigmoid", "tanh"} and "relu" not in roles
    init = fix.xavier_init if sigmoid_like else fix.kaiming_init
    if too_big:
        return [init, fix.clip_grad_norm, fix.lower_lr]
    peaks = finding.evidence.get("update_ratio_peak") or {}
    giant = [v for v in peaks.values() if isinstance(v, float) and v > 1.0]
    if giant:
        # Normal weights, steps larger than the weights themselves: the learning rate.
        return [fix.lower_lr, fix.clip_grad_norm, init]
    return [fix.clip_grad_norm, fix.lower_lr, init]


@hookimpl
def gradscope_suggest(finding: Finding, model_info: ModelInfo) -> list[Suggestion]:
    """Suggestions for ``exploding_gradient`` findings, best first (see :func:`plan`)."""
    return fix.suggest(finding, model_info, "exploding_gradient", plan)
