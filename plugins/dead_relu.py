"""dead_relu: ReLU units that output zero for every sample, step after step.

Judged per unit (a feature or a channel), not per element: a healthy ReLU layer
outputs zero for about half of its entries, but each unit is on for some
samples.  A dead unit is off for every sample of ``unit_window`` recorded steps
in a row (a watch() option, 5 by default); its weights get no gradient, so it
never comes back.
"""

from __future__ import annotations

from typing import Any

import torch

from gradscope import Finding, Suggestion, hookimpl
from gradscope.config import thresholds
from gradscope.history import History
from gradscope.modelinfo import ModelInfo
from gradscope.signals import loss_trend
from gradscope_plugins import fix_builders as fix
from gradscope_plugins.judgement import (
    HARM_DEFAULTS,
    first_step_where,
    fmt,
    functional_activations,
    harm_severity,
    layer_before,
    learned_nothing,
    over,
)

NAME = "dead_relu"
#: The statistics this detector reads (see gradscope.statistics); without them it cannot judge.
NEEDS = ("dead_units", "silent_units", "units")
DEFAULTS = {
    # Fraction of a layer's units dead for the whole window: a warning from here when the
    # loss has stalled (half the layer's width is gone for good)...
    "warn_fraction": 0.5,
    # ...and an error from here whatever the loss does (the layer has collapsed).
    "error_fraction": 0.8,
    # The harm test's thresholds: stall, plateau, constant_output.
    **HARM_DEFAULTS,
}


@hookimpl
def gradscope_detect(
    history: History, model_info: ModelInfo, config: dict[str, Any]
) -> list[Finding]:
    """One finding per ReLU module with many units silent over the recent window."""
    t = thresholds(config, NAME, DEFAULTS)
    if not history.records:
        return []
    trend = loss_trend(history)
    # Without a logged loss the harm cannot be seen: the share of broken units decides.
    stalled = learned_nothing(history, trend, t)
    dead = history.act_series("dead_units")
    silent = history.act_series("silent_units")
    units = history.act_series("units")
    functional = functional_activations(history)
    gates = model_info.gate_layers()
    findings = []
    for j, name in enumerate(history.module_names):
        measured = torch.isfinite(dead[:, j])
        if not bool(measured.any()):
            continue
        finite = _finite_outputs(history, j)
        usable = measured & finite if bool((measured & finite).any()) else measured
        k = int(torch.nonzero(usable)[-1])
        n_units = float(units[k, j])
        if n_units <= 0:
            continue
        fraction = float(dead[k, j]) / n_units
        if fraction < t["warn_fraction"]:
            continue
        first = first_step_where(
            history, over(_fraction(history, "dead_units", "units", j), t["warn_fraction"] - 1e-9),
            default="last",
        )
        # A ReLU called as a function on a layer's output: the layer feeds it.
        applied = name in functional
        before = None if applied else layer_before(model_info, name, ("weight", "norm"))
        feeding = name if applied else before.name if before is not None else None
        what = f"the ReLU applied to {name}'s output (F.relu, a function)" if applied else name
        frozen = _frozen_before(history, name) if fraction >= 1.0 else []
        findings.append(
            Finding(
                kind="dead_relu",
                layer=name,
                # Units of a channel gate: the block's main path carries the gradient past
                # them, so the layers before it still learn.
                severity="info" if name in gates else harm_severity(fraction, t, stalled),
                step=first,
                message=(
                    f"{int(dead[k, j])} of {int(n_units)} units of {what} ({fmt(100 * fraction)}%) "
                    f"output zero for every sample over {_when(finite, k)}: they are dead. "
                    "A dead ReLU passes no gradient back, so the weights feeding it"
                    + (f" ({feeding})" if feeding else "")
                    + " stop learning and the unit never recovers. "
                    + _frozen_text(frozen)
                    + (_GATE_TEXT if name in gates else "")
                    + "Usual causes: a learning rate so large that one step pushed the biases "
                    "far negative, or an initialisation with negative biases."
                ),
                evidence={
                    "dead_from_start": _first_measured(silent[:, j])
                    >= t["warn_fraction"] * n_units,
                    "dead_units": int(dead[k, j]),
                    "units": int(n_units),
                    "dead_fraction": fraction,
                    "feeding_layer": feeding,
                    # It trains nothing (frozen): BatchNorm after it is the fix, not an init.
                    "frozen_feeding_layer": _frozen_layer(model_info, feeding),
                    "functional": applied,
                    "frozen_before": frozen,
                    "threshold_warn_fraction": t["warn_fraction"],
                },
            )
        )
    return findings


#: What dead units inside a channel gate (squeeze-excitation) mean for training.
_GATE_TEXT = (
    "They are inside a channel gate (squeeze-excitation): the block's main path carries the "
    "gradient past the gate, so the layers before it still learn, and the gate only scales "
    "its channels by a fixed amount. "
)


def _when(finite_outputs: torch.Tensor, k: int) -> str:
    """The records a unit count of record ``k`` covers, in words (``finite_outputs``: the
    module's outputs were finite on each record)."""
    if not bool(finite_outputs[k + 1 :].all()):
        return "the recorded steps before its outputs turned non-finite"
    return "the last recorded steps"


def _finite_outputs(history: History, j: int) -> torch.Tensor:
    """Per record: whether module ``j``'s outputs had no NaN/Inf (unmeasured counts as
    finite).  Units are judged on the last such record where they were counted: a NaN is
    neither silent nor active, so the records after it would count units that were all
    dead as alive (a Transformer whose biases started at -5, every unit silent, then a
    learning rate that overflowed)."""
    flags = history.act_series("nonfinite")
    if flags.numel() == 0:
        return torch.ones(len(history.records), dtype=torch.bool)
    return ~(flags[:, j] > 0)


def _first_measured(series: torch.Tensor) -> float:
    """The first finite value (a ReLU applied as a function is measured from the second
    detail step on: the first one's loss graph shows it); NaN if none."""
    finite = series[torch.isfinite(series)]
    return float(finite[0]) if finite.numel() else float("nan")


def _frozen_before(history: History, module: str) -> list[str]:
    """The modules before ``module`` in forward order when every parameter of every one of
    them got a gradient of exactly zero on the last record (empty otherwise): a ReLU layer
    dead to the last unit on the only path back lets nothing through, so everything
    before it stops, not only the layer feeding it (a dead branch beside a residual path,
    as in a Transformer's FFN, leaves the rest learning: not this)."""
    norms = history.grad_series("grad_l2")
    if norms.numel() == 0:
        return []
    last = norms[-1]
    rank = history.depth_rank()
    limit = rank.get(module, -1)
    zero: dict[str, bool] = {}
    for owner, value in zip(history.param_modules, last.tolist(), strict=True):
        if rank.get(owner, limit) < limit:
            zero[owner] = zero.get(owner, True) and value == 0.0
    if not zero or not all(zero.values()):
        return []
    return sorted(zero, key=rank.__getitem__)


def _frozen_text(frozen: list[str]) -> str:
    """The sentence for the layers a fully dead ReLU cuts off (empty for one or none)."""
    if len(frozen) < 2:
        return ""
    shown = ", ".join(frozen[:4]) + (f" and {len(frozen) - 4} more" if len(frozen) > 4 else "")
    return (
        f"Nothing gets past it at all: {shown} get exactly zero gradient, so every layer "
        "before it is frozen and the network cannot learn. "
    )


def _fraction(history: History, part: str, whole: str, j: int) -> torch.Tensor:
    """``part / whole`` of module ``j`` per kept record (0 where not measured)."""
    ratio = history.act_series(part)[:, j] / history.act_series(whole)[:, j].clamp_min(1)
    return torch.nan_to_num(ratio, nan=0.0)


def plan(finding: Finding, info: ModelInfo) -> list[fix.Builder]:
    """Fixes for dead ReLUs, best first: the init when they were dead from the start,
    BatchNorm when the layer feeding them is frozen (no init or step can change it)."""
    if finding.evidence.get("frozen_feeding_layer"):
        # Its weights and biases are not trained (a frozen, perhaps pretrained layer): a
        # new initialisation of the trained layers leaves its outputs negative, and the
        # user froze it for a reason.  A norm after it re-centres them.
        return [fix.add_batchnorm, fix.kaiming_init, fix.lower_lr]
    if finding.evidence.get("dead_from_start"):
        # Dead before training could kill them: the initialisation (negative biases) did.
        return [fix.kaiming_init, fix.add_batchnorm, fix.lower_lr]
    return [fix.lower_lr, fix.kaiming_init, fix.add_batchnorm]


def _frozen_layer(info: ModelInfo, name: str | None) -> str | None:
    """``name`` when it is a layer none of whose parameters is trained, else None."""
    layer = info.layer(name)
    if layer is None or layer.params or not layer.frozen:
        return None
    return layer.name


@hookimpl
def gradscope_suggest(finding: Finding, model_info: ModelInfo) -> list[Suggestion]:
    """Suggestions for ``dead_relu`` findings, best first (see :func:`plan`)."""
    suggestions = fix.suggest(finding, model_info, "dead_relu", plan)
    frozen = finding.evidence.get("frozen_feeding_layer")
    reason = (
        f"First because {frozen}, which feeds these units, is frozen (its parameters are "
        "not trained): no initialisation of the trained layers or smaller step revives "
        "units whose inputs it keeps negative. "
        if frozen
        else ""
    )
    return fix.explain_first(suggestions, "add_batchnorm", reason)
