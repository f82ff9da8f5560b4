"""vanishing_gradient: gradients that shrink toward the input until early layers stop learning.

Each layer is judged by its *relative* gradient, ||grad|| / ||weight||, so layers of
different sizes compare fairly, and against the layers after it in forward order:
healthy nets often have last layers with 10-100x larger gradients than the first,
so only a gap of ``depth_ratio`` (1e-3 by default) or more counts.
"""

from __future__ import annotations

import math
from typing import Any

from gradscope import Finding, hookimpl
from gradscope.config import thresholds
from gradscope.history import History
from gradscope.modelinfo import ModelInfo
from gradscope.signals import depth_signals, fmt, loss_trend, recent

NAME = "vanishing"
DEFAULTS = {
    # A layer whose relative gradient is below this fraction of the largest one after it.
    "depth_ratio": 1e-3,
    # Below this fraction the problem is severe enough to be an error on its own.
    "severe_ratio": 1e-5,
    # Loss improving by less than this fraction over the run counts as stalled.
    "stall": 0.05,
    # Records at the end of the run that are judged.
    "window": 5,
}


@hookimpl
def gradscope_detect(
    history: History, model_info: ModelInfo, config: dict[str, Any]
) -> list[Finding]:
    """Find the input-most layers whose gradients have vanished relative to later layers."""
    t = thresholds(config, NAME, DEFAULTS)
    window = int(t["window"])
    layers = depth_signals(history, model_info)
    if len(layers) < 2:
        return []
    rel = [recent(layer.relative_grad, window) for layer in layers]
    affected = []
    for i, layer in enumerate(layers[:-1]):
        later = [r for r in rel[i + 1 :] if math.isfinite(r)]
        if not later or not math.isfinite(rel[i]):
            continue
        ratio = rel[i] / max(max(later), 1e-30)
        if ratio < t["depth_ratio"]:
            affected.append((layer, ratio))
    if not affected:
        return []
    worst_layer, worst_ratio = min(affected, key=lambda item: item[1])
    first_layer = affected[0][0]
    trend = loss_trend(history, window)
    stalled = trend.known and trend.improvement < t["stall"]
    severe = worst_ratio < t["severe_ratio"] or stalled
    top = max(rel)
    names = [layer.name for layer, _ in affected]
    step = _first_step_below(history, first_layer.relative_grad, layers, t["depth_ratio"])
    activations = sorted(
        {layer.role for layer in model_info.layers if layer.role in ("sigmoid", "tanh")}
    )
    cause = (
        f"Each {'/'.join(activations)} layer can only shrink the gradient on its way back "
        "(their slope is at most 0.25 for sigmoid and 1 for tanh), so it fades layer by layer."
        if activations
        else "The gradient shrinks at each layer on its way back to the input."
    )
    message = (
        f"Gradients vanish toward the input: {len(names)} of {len(layers)} layers get less "
        f"than {fmt(t['depth_ratio'])} of the gradient (relative to their weights) that later "
        f"layers get; {worst_layer.name} gets {fmt(worst_ratio)} of it. These layers barely "
        f"change, so the network cannot learn features in them. {cause}"
        + (f" The loss has stalled ({fmt(trend.first)} -> {fmt(trend.last)})." if stalled else "")
    )
    return [
        Finding(
            kind="vanishing_gradient",
            layer=first_layer.name,
            severity="error" if severe else "warning",
            step=step,
            message=message,
            evidence={
                "layers": names,
                "worst_layer": worst_layer.name,
                "ratio_to_later_layers": worst_ratio,
                "relative_grad": {layer.name: r for layer, r in zip(layers, rel, strict=True)},
                "largest_relative_grad": top,
                "loss_first": trend.first,
                "loss_last": trend.last,
                "loss_improvement": trend.improvement,
                "threshold_depth_ratio": t["depth_ratio"],
            },
        )
    ]


def _first_step_below(history: History, series: Any, layers: list, threshold: float) -> int:
    """The first recorded step at which the layer fell below ``threshold`` of the max."""
    stacked = [layer.relative_grad for layer in layers]
    for k, step in enumerate(history.steps):
        values = [float(s[k]) for s in stacked if math.isfinite(float(s[k]))]
        here = float(series[k])
        if values and math.isfinite(here) and here < threshold * max(values):
            return step
    return history.steps[0]
