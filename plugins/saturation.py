"""saturated_activation: sigmoid/tanh outputs pinned near their asymptotes.

An output within 1% of 0/1 (sigmoid) or -1/1 (tanh) sits where the slope is
below 0.01, so almost no gradient passes through it.
"""

from __future__ import annotations

from typing import Any

import torch

from gradscope import Finding, Suggestion, hookimpl
from gradscope.config import thresholds
from gradscope.history import History
from gradscope.modelinfo import ModelInfo
from gradscope.signals import (
    LossTrend,
    activation_fraction,
    init_scale,
    layer_signals,
    loss_trend,
)
from gradscope_plugins import fix_builders as fix
from gradscope_plugins.judgement import (
    HARM_DEFAULTS,
    RIVAL_CERTAIN_LOSS,
    data_evidence,
    first_step_where,
    fmt,
    functional_activations,
    harm_severity,
    layer_before,
    learned_nothing,
    linked_gan_role,
    looped_layers,
    loss_multiplier,
    over,
)

#: Roles whose outputs can saturate, and the function they saturate like (a recurrent
#: layer's hidden state passes through tanh).
SATURATING_ROLES = {
    "sigmoid": "sigmoid",
    "tanh": "tanh",
    "vanilla_rnn": "tanh",
    "gated_rnn": "tanh",
}

NAME = "saturation"
#: The statistics this detector reads (see gradscope.statistics); without them it cannot judge.
NEEDS = ("saturated", "sampled")
DEFAULTS = {
    # Fraction of outputs within 1% of an asymptote: a warning from here when the loss
    # has stalled...
    "warn_fraction": 0.5,
    # ...and an error from here whatever the loss does.
    "error_fraction": 0.8,
    # The harm test's thresholds: stall, plateau, constant_output.
    **HARM_DEFAULTS,
    # Recent records averaged.
    "window": 5,
    # A discriminator watched alone whose loss ends above this has its output activation
    # saturated on the wrong side: judged like any other layer.
    "guessing_discriminator": RIVAL_CERTAIN_LOSS,
}


def _is_output(model_info: ModelInfo, name: str) -> bool:
    """An activation the model returns, or one after the last layer with weights, is the
    model's output: outputs near 0 or 1 that match binary targets are the goal, not a
    fault (a multi-label head beside a class head need not run last)."""
    if name in model_info.extra.get("model_outputs", ()):
        return True
    names = [layer.name for layer in model_info.layers]
    if name not in names:
        return False
    return not any(layer.params for layer in model_info.layers[names.index(name) + 1 :])


def _confidently_wrong(
    history: History, model_info: ModelInfo, trend: LossTrend, t: dict
) -> bool:
    """Whether a discriminator watched alone sits at its output's asymptotes on the wrong
    side: its loss ends above ``guessing_discriminator`` (its two-term loss is 1.39 when it
    scores every sample alike; 50 when binary cross-entropy clamps its log at -100 on every
    sample).  Then the output activation's saturation is the fault, not the goal.  Other
    models' outputs stay unjudged, as the definitions exclude them (an autoencoder far
    above a constant prediction's loss is exploding's or vanishing's to explain)."""
    return (
        linked_gan_role(model_info) == "discriminator"
        and trend.known
        and trend.last > t["guessing_discriminator"]
    )


@hookimpl
def gradscope_detect(
    history: History, model_info: ModelInfo, config: dict[str, Any]
) -> list[Finding]:
    """One finding per sigmoid/tanh module with most outputs at an asymptote."""
    t = thresholds(config, NAME, DEFAULTS)
    if not history.records:
        return []
    roles = {layer.name: layer.role for layer in model_info.layers}
    trend = loss_trend(history)
    # Without a logged loss the harm cannot be seen: the share of broken units decides.
    stalled = learned_nothing(history, trend, t)
    fractions = activation_fraction(history, "saturated", int(t["window"]))
    signals = {s.name: s for s in layer_signals(history)}
    looped = set(looped_layers(history, list(history.module_names)))
    wrong = _confidently_wrong(history, model_info, trend, t)
    functional = functional_activations(history)
    findings = []
    for name, fraction in fractions.items():
        # A sigmoid or tanh called as a function on a layer's output is measured there.
        kind = functional.get(name) or SATURATING_ROLES.get(roles.get(name, ""))
        if kind is None or fraction < t["warn_fraction"]:
            continue
        output = _is_output(model_info, name)
        if output and not wrong:
            continue
        ends = "0 or 1" if kind == "sigmoid" else "-1 or 1"
        findings.append(
            Finding(
                kind="saturated_activation",
                layer=name,
                severity=harm_severity(fraction, t, stalled),
                step=first_step_where(
                    history, over(_saturated_fraction(history, name), t["warn_fraction"] - 1e-9),
                    default="last",
                ),
                message=(
                    f"{fmt(100 * fraction)}% of {_whose(name, kind, functional)} outputs sit "
                    f"within 1% of {ends}, "
                    "where the slope is under 0.01: almost no gradient gets through, so the "
                    "layers before it learn very slowly. The inputs to the activation are too "
                    "large: the weights or inputs are badly scaled."
                ),
                evidence={
                    "init_scale": _feeding_scale(model_info, signals, name),
                    "saturated_fraction": fraction,
                    "activation": kind,
                    "threshold_warn_fraction": t["warn_fraction"],
                    **data_evidence(history, model_info),
                    # Run once per time step (a recurrence written as a loop): ranks fixes.
                    "looped_layers": [name] if name in looped else [],
                    "saturated_at_start": _at_start(history, name) >= t["warn_fraction"],
                    "model_output": output,
                    "functional": name in functional,
                    "loss_multiplier": loss_multiplier(history),
                },
            )
        )
    return findings


def _whose(name: str, kind: str, functional: dict[str, str]) -> str:
    """Whose outputs saturate: the module's, or those of the function applied to its output."""
    if name in functional:
        return f"the {kind} applied to {name}'s output (torch.{kind}, a function)"
    return f"{name}'s {kind}"


def _saturated_fraction(history: History, name: str) -> torch.Tensor:
    """Saturated share of the sampled outputs of module ``name`` per kept record."""
    j = history.module_names.index(name)
    sampled = history.act_series("sampled")[:, j].clamp_min(1)
    return torch.nan_to_num(history.act_series("saturated")[:, j] / sampled, nan=0.0)


def _at_start(history: History, name: str) -> float:
    """Saturated share at the first record that measured module ``name``'s saturation (not
    the first record: under ``every=`` it may have measured nothing, and a function applied
    to the output is found on the first detail step); 0 if none did."""
    j = history.module_names.index(name)
    counted = torch.isfinite(history.act_series("saturated")[:, j])
    measured = torch.nonzero((history.act_series("sampled")[:, j] > 0) & counted).flatten()
    if not measured.numel():
        return 0.0
    return float(_saturated_fraction(history, name)[int(measured[0])])


def _feeding_scale(model_info: ModelInfo, signals: dict, name: str) -> float:
    """init_scale of the weight layer right before the activation ``name``."""
    before = layer_before(model_info, name, ("weight",))
    if before is None or before.name not in signals:
        return float("nan")
    return init_scale(signals[before.name], model_info)


def plan(finding: Finding, info: ModelInfo) -> list[fix.Builder]:
    """Fixes for a saturated activation, best first, chosen by its evidence; never another
    activation for the model's output (its sigmoid/tanh is what the loss expects) or for a
    channel gate (:meth:`ModelInfo.gate_layers`: its sigmoid makes the gate)."""
    gate = finding.layer in info.gate_layers()  # squeeze-excitation: a gate must stay one
    if finding.evidence.get("model_output") or gate:
        # Outputs pinned on the wrong side: weights that started too large, else steps.
        first = fix.xavier_init if fix.started_too_large(finding) else fix.lower_lr
        rest = [b for b in (fix.lower_lr, fix.xavier_init) if b is not first]
        return [first, *rest, fix.add_batchnorm] if gate else [first, *rest]
    if finding.evidence.get("functional"):
        # A function in forward() is no module to swap: use_relu would change nothing.
        return [b for b in _plan(finding, info) if b is not fix.use_relu]
    return _plan(finding, info)


def _plan(finding: Finding, info: ModelInfo) -> list[fix.Builder]:
    if fix.inputs_unscaled(finding):
        # Unscaled data saturates the first units whatever the weights: scale the data.
        return [fix.normalize_inputs, fix.add_batchnorm, fix.xavier_init, fix.use_relu]
    grew_in_training = finding.evidence.get("saturated_at_start") is False
    if grew_in_training and fix.lr_far_above_usual(info, finding.evidence.get("loss_multiplier")):
        # Not saturated at the start, and a rate several times the optimizer's usual largest
        # one (or a loss multiplied under SGD): the steps pushed the weights out.
        return [fix.lower_lr, fix.add_batchnorm, fix.xavier_init, fix.use_relu]
    if fix.looped(finding):
        # A recurrence written as a loop: ReLU is unbounded there (as for vanishing).
        return [fix.add_batchnorm, fix.xavier_init, fix.use_relu]
    if finding.evidence.get("activation") == "sigmoid":
        # A sigmoid in a hidden layer is the problem itself: ReLU cannot saturate.
        return [fix.use_relu, fix.add_batchnorm, fix.xavier_init]
    if fix.started_too_large(finding):
        # Weights several times too large push the inputs to the asymptotes: rescale them.
        return [fix.xavier_init, fix.add_batchnorm, fix.use_relu]
    return [fix.add_batchnorm, fix.xavier_init, fix.use_relu]


@hookimpl
def gradscope_suggest(finding: Finding, model_info: ModelInfo) -> list[Suggestion]:
    """Suggestions for ``saturated_activation`` findings, best first (see :func:`plan`)."""
    suggestions = fix.suggest(finding, model_info, "saturated_activation", plan)
    reason = fix.loop_reason(fix.looped(finding)) if fix.looped(finding) else ""
    suggestions = fix.explain_first(suggestions, "add_batchnorm", reason)
    return fix.explain_first(suggestions, "lower_lr", _GREW_REASON)


#: Why the learning rate comes first for a saturation that training made.
_GREW_REASON = (
    "The outputs were not saturated at the first recorded step: training pushed the "
    "weights out to the asymptotes, with a rate far above the usual. "
)
