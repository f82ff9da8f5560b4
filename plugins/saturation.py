"""saturated_activation: sigmoid/tanh outputs pinned near their asymptotes.

An output within 1% of 0/1 (sigmoid) or -1/1 (tanh) sits where the slope is
below 0.01, so almost no gradient passes through it.
"""

from __future__ import annotations

from typing import Any

from gradscope import Finding, hookimpl
from gradscope.config import thresholds
from gradscope.history import History
from gradscope.modelinfo import ModelInfo
from gradscope.signals import activation_fraction, fmt, init_scale, layer_signals

NAME = "saturation"
DEFAULTS = {
    # Fraction of outputs within 1% of an asymptote: a warning from here...
    "warn_fraction": 0.5,
    # ...and an error from here.
    "error_fraction": 0.9,
    # Recent records averaged.
    "window": 5,
}


@hookimpl
def gradscope_detect(
    history: History, model_info: ModelInfo, config: dict[str, Any]
) -> list[Finding]:
    """One finding per sigmoid/tanh module with most outputs at an asymptote."""
    t = thresholds(config, NAME, DEFAULTS)
    if not history.records:
        return []
    roles = {layer.name: layer.role for layer in model_info.layers}
    fractions = activation_fraction(history, "saturated", int(t["window"]))
    signals = {s.name: s for s in layer_signals(history)}
    findings = []
    for name, fraction in fractions.items():
        if roles.get(name) not in ("sigmoid", "tanh") or fraction < t["warn_fraction"]:
            continue
        kind = roles[name]
        ends = "0 or 1" if kind == "sigmoid" else "-1 or 1"
        findings.append(
            Finding(
                kind="saturated_activation",
                layer=name,
                severity="error" if fraction >= t["error_fraction"] else "warning",
                step=_first_step(history, name, t["warn_fraction"]),
                message=(
                    f"{fmt(100 * fraction)}% of {name}'s {kind} outputs sit within 1% of {ends}, "
                    "where the slope is under 0.01: almost no gradient gets through, so the "
                    "layers before it learn very slowly. The inputs to the activation are too "
                    "large: the weights or inputs are badly scaled."
                ),
                evidence={
                    "init_scale": _feeding_scale(model_info, signals, name),
                    "saturated_fraction": fraction,
                    "activation": kind,
                    "threshold_warn_fraction": t["warn_fraction"],
                },
            )
        )
    return findings


def _first_step(history: History, name: str, fraction: float) -> int:
    j = history.module_names.index(name)
    sat = history.act_series("saturated")[:, j]
    sampled = history.act_series("sampled")[:, j].clamp_min(1)
    for k, value in enumerate((sat / sampled).tolist()):
        if value >= fraction:
            return history.steps[k]
    return history.steps[-1]


def _feeding_scale(model_info: ModelInfo, signals: dict, name: str) -> float:
    """init_scale of the weight layer right before the activation ``name``."""
    names = [layer.name for layer in model_info.layers]
    if name not in names:
        return float("nan")
    for layer in reversed(model_info.layers[: names.index(name)]):
        if layer.name in signals and layer.role == "weight":
            return init_scale(signals[layer.name], model_info)
    return float("nan")
