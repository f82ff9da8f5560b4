"""tiny_updates: the weights barely move, so the loss does not either.

The most common reason a model "does not train" is a learning rate far too small: the
gradients are fine, but each step moves every weight by a millionth of its size.  The
rate is the cause when it is 100x below the optimizer's usual largest one; at a normal
rate a tiny step means a tiny gradient, which is ``vanishing_gradient``'s.  No
gradient statistic shows it (nothing vanishes, nothing explodes); the update does.
Healthy training moves a layer's weights by roughly 1e-3 of their norm per step (a rule
of thumb from practice, e.g. Karpathy's "update/weight ratio"); this detector reports a
run in which *every* layer's median update stayed below ``update_ratio`` of its weights
while the loss did not improve, and the gradient itself was not what is tiny (that is
``vanishing_gradient``'s).
"""

from __future__ import annotations

import math
import statistics
from typing import Any

import torch

from gradscope import Finding, Suggestion, hookimpl
from gradscope.config import thresholds
from gradscope.history import History
from gradscope.modelinfo import ModelInfo
from gradscope.signals import layer_signals, loss_trend, over_run
from gradscope_plugins import fix_builders as fix
from gradscope_plugins.judgement import (
    fitted,
    fmt,
    gan_roles,
    loss_multiplier,
    relative_grad,
    update_ratio,
)

NAME = "tiny_updates"
#: The statistics this detector reads (see gradscope.statistics); without them it cannot judge.
NEEDS = ("update_norm", "param_norm", "grad_l2")
DEFAULTS = {
    # Every weight layer's median update below this share of its weights...
    "update_ratio": 1e-4,
    # ...while the loss improved by less than this share of its start...
    "stall": 0.1,
    # ...and the step size is the cause: the learning rate is 100x below the optimizer's
    # usual largest (fix_builders.lr_far_below_usual), or, for an optimizer without a
    # usual rate, some layer's median ||grad||/||W|| is above this (not a tiny gradient).
    "gradient_ratio": 1e-2,
    # Updates measured on at least this many recorded steps (detail steps).
    "min_updates": 3,
}


def _layer_ratios(
    history: History, model_info: ModelInfo, least: int
) -> dict[str, tuple[float, float]]:
    """Per layer with ``least`` measured updates: the run's median update and relative
    gradient of its weight matrices (:func:`judgement.update_ratio`,
    :func:`judgement.relative_grad`)."""
    ratios = {}
    for signal in layer_signals(history):
        updates = update_ratio(signal, model_info)
        if int(torch.isfinite(updates).sum()) >= least:
            ratios[signal.name] = (
                over_run(updates),
                over_run(relative_grad(signal, model_info)),
            )
    return ratios


@hookimpl
def gradscope_detect(
    history: History, model_info: ModelInfo, config: dict[str, Any]
) -> list[Finding]:
    """One finding when every layer's updates were tiny and the loss did not improve."""
    t = thresholds(config, NAME, DEFAULTS)
    trend = loss_trend(history)
    if not trend.known or trend.logged < 10 or fitted(trend):
        return []
    if gan_roles(history, model_info):
        return []  # a GAN player's loss is a game score: it need not fall
    if not trend.improvement < t["stall"]:
        return []
    ratios = _layer_ratios(history, model_info, int(t["min_updates"]))
    if not ratios:
        return []
    largest = max(ratios, key=lambda name: ratios[name][0])
    update = ratios[largest][0]
    gradients = [g for _, g in ratios.values() if math.isfinite(g)]
    gradient = max(gradients) if gradients else math.nan
    if not update < t["update_ratio"]:
        return []
    slow = fix.lr_far_below_usual(model_info)
    if slow is False or (slow is None and not gradient >= t["gradient_ratio"]):
        return []  # a normal rate: the gradient is what is small (vanishing_gradient's)
    lr = f" (lr={model_info.lr:g})" if model_info.lr else ""
    return [
        Finding(
            kind="tiny_updates",
            layer=largest,
            severity="warning",
            step=history.steps[0] if history.steps else 0,
            message=(
                f"The weights barely move: each step changed even the most-moved layer, "
                f"{largest}, by only {fmt(update)} of its weights (healthy training takes "
                f"about {fix.HEALTHY_UPDATE_RATIO:g}), and the loss went from "
                f"{fmt(trend.first)} to {fmt(trend.last)}. The step size is the cause: "
                f"the learning rate{lr} is far below what {model_info.optimizer or 'the optimizer'}"
                " is usually run at (the gradients reach up to "
                f"{fmt(gradient)} of the weights). Raise the learning rate."
            ),
            evidence={
                "update_ratio": update,
                "median_update_ratio": statistics.median(r[0] for r in ratios.values()),
                "layer_update_ratios": {name: r[0] for name, r in ratios.items()},
                "gradient_ratio": gradient,
                "loss_first": trend.first,
                "loss_last": trend.last,
                "lr": model_info.lr,
                "loss_multiplier": loss_multiplier(history),
                "thresholds": dict(t),
            },
        )
    ]


def plan(finding: Finding, info: ModelInfo) -> list[fix.Builder]:
    """The step size is the cause: a larger learning rate."""
    return [fix.raise_lr]


@hookimpl
def gradscope_suggest(finding: Finding, model_info: ModelInfo) -> list[Suggestion]:
    """Suggestions for ``tiny_updates`` findings (see :func:`plan`)."""
    return fix.suggest(finding, model_info, "tiny_updates", plan)
