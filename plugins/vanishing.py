"""vanishing_gradient: gradients that shrink toward the input until early layers stop learning.

Each layer is judged by its *relative* gradient, ||grad|| / ||weight||, so layers of
different sizes compare fairly, and against the layers after it in forward order:
healthy nets often have last layers with 10-100x larger gradients than the first,
so only a gap of ``depth_ratio`` (1e-3 by default) or more counts.
"""

from __future__ import annotations

import math
from typing import Any

from gradscope import Finding, Suggestion, hookimpl
from gradscope.config import thresholds
from gradscope.history import History
from gradscope.modelinfo import ModelInfo
from gradscope.signals import early, init_scale, loss_trend, recent
from gradscope_plugins import fix_builders as fix
from gradscope_plugins.judgement import depth_layers, first_step_where, fmt, gan_roles, under

NAME = "vanishing"
#: The statistics this detector reads (see gradscope.statistics); without them it cannot judge.
NEEDS = ("grad_l2", "param_norm")
DEFAULTS = {
    # A layer whose relative gradient is below this fraction of the largest one after it.
    "depth_ratio": 1e-3,
    # Below this fraction the problem is severe enough to be an error on its own.
    "severe_ratio": 1e-5,
    # Loss improving by less than this fraction over the run counts as stalled.
    "stall": 0.05,
    # Records at the end of the run that are judged.
    "window": 5,
    # A layer whose relative gradient fell below this fraction of its own start...
    "time_ratio": 0.1,
    # A vanilla RNN over at least this many steps, with a stalled loss, fades through time.
    "rnn_steps": 50,
}


@hookimpl
def gradscope_detect(
    history: History, model_info: ModelInfo, config: dict[str, Any]
) -> list[Finding]:
    """Find the input-most layers whose gradients have vanished relative to later layers."""
    t = thresholds(config, NAME, DEFAULTS)
    window = int(t["window"])
    layers = depth_layers(history, model_info)
    if len(layers) < 2:
        return []
    rel = [recent(layer.relative_grad, window) for layer in layers]
    affected = []
    for i, layer in enumerate(layers[:-1]):
        later = [r for r in rel[i + 1 :] if math.isfinite(r)]
        if not later or not math.isfinite(rel[i]) or rel[i] == 0:
            # Exactly zero is a blocked path (dead units, a cut graph), not a fading one.
            continue
        ratio = rel[i] / max(max(later), 1e-30)
        if ratio < t["depth_ratio"]:
            affected.append((layer, ratio))
    trend = loss_trend(history, window)
    stalled = trend.known and trend.improvement < t["stall"]
    if not affected:
        # A plateau: no better over the second half of the run, and not much better overall.
        plateau = trend.known and trend.late_improvement < t["stall"] and trend.improvement < 0.5
        return _faded_through_time(history, model_info, trend, plateau, t) or _faded_over_time(
            history, model_info, layers, rel, trend, stalled, t
        )
    worst_layer, worst_ratio = min(affected, key=lambda item: item[1])
    first_layer = affected[0][0]
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
                "init_scale": {layer.name: init_scale(layer, model_info) for layer in layers},
            },
        )
    ]


def _first_step_below(history: History, series: Any, layers: list, threshold: float) -> int:
    """The first recorded step at which the layer fell below ``threshold`` of the max."""
    stacked = [layer.relative_grad for layer in layers]

    def holds(k: int) -> bool:
        values = [float(s[k]) for s in stacked if math.isfinite(float(s[k]))]
        here = float(series[k])
        return bool(values) and math.isfinite(here) and here < threshold * max(values)

    return first_step_where(history, holds)


def _faded_over_time(
    history: History,
    model_info: ModelInfo,
    layers: list,
    rel: list[float],
    trend: Any,
    stalled: bool,
    t: dict,
) -> list[Finding]:
    """...while the loss got no better: the gradient faded over time, not over depth.

    A gradient that shrinks while the loss falls is convergence; one that shrinks while
    the loss stalls or rises is a layer that stopped learning (a GAN generator facing a
    confident discriminator with the saturating loss, a saturating activation).
    """
    window = int(t["window"])
    if not stalled or len(history) < 2 * window:
        return []
    faded = []
    roles = gan_roles(history, model_info)
    for layer, now in zip(layers, rel, strict=True):
        if roles.get(layer.name) == "discriminator":
            # A GAN's logged loss is the generator's: a discriminator whose gradient fades
            # is winning its own game, which the generator's finding covers.
            continue
        start = early(layer.relative_grad, window)
        measured = math.isfinite(now) and math.isfinite(start) and start > 0 and now > 0
        if measured and now / start < t["time_ratio"]:
            faded.append((layer, now / start))
    if not faded:
        return []
    layer, ratio = faded[0]
    return [
        Finding(
            kind="vanishing_gradient",
            layer=layer.name,
            severity="warning",
            step=first_step_where(
                history,
                under(layer.relative_grad, t["time_ratio"] * early(layer.relative_grad, window)),
                default="last",
            ),
            message=(
                f"The gradient of {layer.name} faded to {fmt(ratio)} of its size at the start "
                f"of training while the loss did not improve ({fmt(trend.first)} -> "
                f"{fmt(trend.last)}): the layer has stopped learning, not converged. Something "
                "downstream stopped passing gradient back: a saturated output (sigmoid near 0 "
                "or 1), or a loss that flattens where the model now is (the saturating GAN "
                "generator loss log(1 - D(G(z))) once the discriminator wins)."
            ),
            evidence={
                "layers": [f.name for f, _ in faded],
                "ratio_to_start": ratio,
                "relative_grad_start": early(layer.relative_grad, window),
                "relative_grad_now": recent(layer.relative_grad, window),
                "loss_first": trend.first,
                "loss_last": trend.last,
                "loss_improvement": trend.improvement,
                "threshold_time_ratio": t["time_ratio"],
                "over": "time",
                **_gan_evidence(roles, layer.name),
            },
        )
    ]


def _gan_evidence(roles: dict[str, str], layer: str) -> dict[str, Any]:
    """For a GAN's generator: its role and the module names of both parts (for the fix)."""
    if roles.get(layer) != "generator":
        return {}
    tops = {role: name.split(".")[0] for name, role in reversed(list(roles.items()))}
    return {"gan_role": "generator", "part": tops["generator"], "other_part": tops["discriminator"]}


def _faded_through_time(
    history: History, model_info: ModelInfo, trend: Any, stalled: bool, t: dict
) -> list[Finding]:
    """A vanilla RNN over a long sequence whose loss stalls: the gradient fades through time.

    The fading happens inside the RNN's own loop, where no per-layer statistic can see
    it, so this is judged from the architecture and the symptom together.
    """
    if not stalled:
        return []
    for layer in model_info.layers:
        steps = model_info.sequence_length(layer.name)
        if layer.role != "vanilla_rnn" or steps is None or steps < t["rnn_steps"]:
            continue
        return [
            Finding(
                kind="vanishing_gradient",
                layer=layer.name,
                severity="warning",
                step=history.steps[0],
                message=(
                    f"{layer.name} is a vanilla RNN run over {steps} time steps and the loss "
                    f"does not improve ({fmt(trend.first)} -> {fmt(trend.last)}). Backpropagation "
                    "through time multiplies the gradient by the recurrent matrix and the tanh "
                    f"slope once per step, so after {steps} steps almost nothing of what the "
                    "early inputs contributed reaches the weights: the network cannot learn "
                    "long-range dependencies."
                ),
                evidence={
                    "sequence_length": steps,
                    "loss_first": trend.first,
                    "loss_last": trend.last,
                    "loss_improvement": trend.improvement,
                    "threshold_rnn_steps": t["rnn_steps"],
                    "over": "time steps",
                },
            )
        ]
    return []


def plan(finding: Finding, info: ModelInfo) -> list[fix.Builder]:
    """Fixes for a vanishing gradient, best first, chosen by its evidence."""
    roles = info.roles()
    if finding.evidence.get("gan_role") == "generator":
        return [fix.use_nonsaturating_loss, fix.lower_lr, fix.add_batchnorm]
    if "vanilla_rnn" in roles:
        return [fix.use_lstm_or_gru, fix.orthogonal_init, fix.clip_grad_norm]
    if roles & {"sigmoid", "tanh"}:
        tiny = [v for v in fix.scales(finding) if v < 0.1]
        if tiny and "tanh" in roles:
            return [fix.xavier_init, fix.use_relu, fix.add_batchnorm]
        return [fix.use_relu, fix.kaiming_init, fix.add_batchnorm]
    return [fix.add_batchnorm, fix.kaiming_init, fix.add_residual]


@hookimpl
def gradscope_suggest(finding: Finding, model_info: ModelInfo) -> list[Suggestion]:
    """Suggestions for ``vanishing_gradient`` findings, best first (see :func:`plan`)."""
    return fix.suggest(finding, model_info, "vanishing_gradient", plan)
