"""nonfinite_gradient: NaN/Inf in an output, the loss or a gradient, traced to where it began.

No ``torch.autograd.detect_anomaly`` is needed: the output sums gradscope takes
(on detail steps, or by replaying the first bad step's forward; see
``gradscope.replay``) turn non-finite exactly when an output does, so the first
module (in forward order) with a non-finite output at the first bad step is
where the forward pass broke.  When every output and the loss are finite but
gradients are not, the backward pass broke; backward runs from the loss toward
the input, so the layer nearest the output with a non-finite gradient is where
it started.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

from gradscope import Finding, Suggestion, hookimpl
from gradscope.config import thresholds
from gradscope.history import History
from gradscope.modelinfo import ModelInfo
from gradscope.signals import init_scale
from gradscope_plugins import fix_builders as fix
from gradscope_plugins.judgement import (
    copied_at_start,
    copy_lines,
    depth_layers,
    fmt,
    growth_before_nonfinite,
    loss_multiplier,
    loss_rise_before_nonfinite,
)

NAME = "nonfinite"
#: The statistics this detector reads (see gradscope.statistics); without them it cannot judge.
NEEDS = ("grad_l2",)
DEFAULTS = {
    # Gradients that grew this many times over the steps before the NaN: the learning rate
    # drove the values out of range, so lowering it comes before fixing the formula.
    "lr_growth": 100.0,
}


@hookimpl
def gradscope_detect(
    history: History, model_info: ModelInfo, config: dict[str, Any]
) -> list[Finding]:
    """Find the first step with a non-finite value and the module where it began."""
    t = thresholds(config, NAME, DEFAULTS)
    history.losses()  # resolves losses logged after their step
    act_steps = [s for s in history.first_nonfinite_act if s is not None]
    grad_steps = [s for s in history.first_nonfinite_grad if s is not None]
    loss_step = history.first_nonfinite_loss
    candidates = act_steps + grad_steps + ([loss_step] if loss_step is not None else [])
    if not candidates:
        return []
    step = min(candidates)
    bad_outputs, bad_grads = _nonfinite_at(history, step)
    inside = model_info.extra.get("nonfinite_inside")
    culprit, where, detail = _explain(history, step, bad_outputs, bad_grads, inside)
    layers = depth_layers(history, model_info)
    grew, rose = _growth_before(history, layers)
    # An output that held NaN/Inf while the loss and every gradient stayed finite was
    # absorbed downstream (ELU maps -inf to -1, a mask or max drops it): not the
    # definitions' non-finite gradient, but a sign that values reach the format's edge.
    poisoned = bool(grad_steps) or loss_step is not None
    # The model's last layer feeds the loss, with nothing after it to absorb the NaN/Inf:
    # a loss on an infinite logit is infinite (or 0) and its gradient saturated, whether
    # or not that loss is the one logged (a GAN's discriminator loss in one model).
    at_the_loss = not poisoned and where == "forward" and culprit == _last_layer(model_info)
    began = model_info.extra.get("overflow_from")
    skipped = (
        f" The GradScaler skipped every step from step {began} on for overflow (its steps "
        f"are judged once that persists), so it began at step {began}."
        if isinstance(began, int) and began < step
        else ""
    )
    # On the first recorded step, before any update: the weights as initialised (or
    # loaded) and the batch made it, so no step-size fix can help.
    first = where == "forward" and bool(history.steps) and step == history.steps[0]
    copies = _copies(history, model_info, config, culprit) if first else []
    message = _message(detail, skipped, poisoned, at_the_loss) + _rise(rose, t)
    message += _first_step_text(copies) if first and poisoned else ""
    return [
        Finding(
            kind="nonfinite_gradient",
            layer=culprit,
            severity="error" if poisoned else "warning" if at_the_loss else "info",
            step=began if skipped else step,
            message=message,
            evidence={
                "culprit": culprit or "loss",
                "where": where,
                # An operation between two modules: the one whose output was still finite.
                "made_after": _made_after(history, culprit, where, bad_outputs, step),
                "nonfinite_outputs": bad_outputs,
                "nonfinite_gradients": bad_grads,
                "loss_nonfinite_step": loss_step,
                "backward_candidates": (
                    _parameterless_after(history, bad_grads[-1]) if where == "backward" else []
                ),
                "grad_growth_before": grew,
                "loss_rise_before": rose,
                "init_scale": {layer.name: init_scale(layer, model_info) for layer in layers},
                "grew_before": any(x is not None and x >= t["lr_growth"] for x in (grew, rose)),
                "before_any_update": first,
                "copied_at_start": copies,
                "threshold_lr_growth": t["lr_growth"],
                "loss_multiplier": loss_multiplier(history),
            },
        )
    ]


def _nonfinite_at(history: History, step: int) -> tuple[list[str], list[str]]:
    """The modules whose outputs, and those whose gradients, first held NaN/Inf at
    ``step``: outputs by the call that went wrong first (forward order where the replay
    did not say), gradients in forward order."""
    rank = history.depth_rank()
    order = _replay_order(history, step)
    outputs = zip(history.module_names, history.first_nonfinite_act, strict=True)
    bad_outputs = sorted(
        (name for name, s in outputs if s == step),
        key=lambda name: (order.get(name, math.inf), rank.get(name, len(rank))),
    )
    grads = zip(history.param_modules, history.first_nonfinite_grad, strict=True)
    bad_grads = sorted(
        {module for module, s in grads if s == step}, key=lambda name: rank.get(name, len(rank))
    )
    return bad_outputs, bad_grads


def _copies(
    history: History, model_info: ModelInfo, config: dict[str, Any], culprit: str | None
) -> list[str]:
    """The weight matrices inside the culprit or before it in forward order whose rows
    were copies at the start (all zero: a normalisation of their zero output divides 0 by
    0), [] when that was not measured."""
    rank = history.depth_rank()
    limit = rank.get(culprit or "", math.inf)  # the whole model's own forward: every module
    modules = {
        module
        for module in history.param_modules
        if rank.get(module, math.inf) < limit
        or module == culprit
        or module.startswith(f"{culprit}.")
    }
    try:
        return copied_at_start(history, model_info, copy_lines(config), modules)
    except KeyError:  # a report saved before the row statistics existed
        return []


def _first_step_text(copies: list[str]) -> str:
    """The sentence for a NaN/Inf made in the forward pass of the first recorded step."""
    text = (
        " It appeared on the first recorded step, before any update: the weights as they "
        "were initialised or loaded, with this batch, make it, so clipping or a lower "
        "learning rate cannot help."
    )
    if copies:
        names = ", ".join(copies[:3]) + (f" and {len(copies) - 3} more" if len(copies) > 3 else "")
        text += (
            f" {len(copies)} weight matrices ({names}) started with identical rows (zero or "
            "constant initialisation): their outputs are alike for every unit, and a "
            "normalisation of an all-zero vector divides 0 by 0."
        )
    return text


def _growth_before(history: History, layers: list) -> tuple[float | None, float | None]:
    """How many times the gradient norm grew, and the loss rose, before the NaN/Inf."""
    growth = growth_before_nonfinite(history, layers)
    grew = float(growth.max()) if growth is not None else None
    return grew, loss_rise_before_nonfinite(history)


def _rise(rose: float | None, t: dict) -> str:
    """The sentence for a loss that rose ``lr_growth`` times before the NaN/Inf, or ""."""
    if rose is None or rose < t["lr_growth"]:
        return ""
    return (
        f" Before that the loss rose {fmt(rose)}x from its start: the values grew out of "
        "range (steps too large: a learning rate too high), the formula only overflowed."
    )


def _message(detail: str, skipped: str, poisoned: bool, at_the_loss: bool) -> str:
    """The finding's text: NaN/Inf that reached the loss or a gradient, one made by the
    model's last layer, or one a later operation absorbed."""
    if poisoned:
        return (
            f"NaN/Inf appeared during training: {detail}.{skipped} Once a weight is NaN every "
            "later step is NaN too, so fix the first source."
        )
    if at_the_loss:
        return (
            f"The model's last layer output NaN/Inf: {detail}. No layer after it can absorb "
            "it, so a loss computed on it is infinite or 0 and its gradient saturated, though "
            "the logged loss and every gradient stayed finite (the loss on it may not be the "
            "logged one: a discriminator's in a GAN trained in one model); fix the first "
            "source."
        )
    return (
        f"An output held NaN/Inf: {detail}. The loss and every gradient stayed finite "
        "(a later operation absorbed it: ELU maps -inf to -1, a mask or a max drops it), so "
        "training went on, but values reach the edge of their number format: check the "
        "scale of the inputs and the growth of the weights."
    )


def _last_layer(model_info: ModelInfo) -> str | None:
    """The last module with parameters in forward order: the one whose output the loss
    reads."""
    owners = [layer.name for layer in model_info.layers if layer.params]
    return owners[-1] if owners else None


def _made_after(
    history: History, culprit: str | None, where: str, bad_outputs: list[str], step: int
) -> str | None:
    """The module whose output was the last finite one before an operation made the NaN:
    before the culprit (between two modules), or before the first bad module's input
    (inside a container's own forward)."""
    if where == "between":
        return _last_finite_before(history, culprit, step)
    if where == "inside":
        return _last_finite_before(history, bad_outputs[0], step)
    return None


def _explain(
    history: History,
    step: int,
    bad_outputs: list[str],
    bad_grads: list[str],
    inside: dict | None = None,
) -> tuple[str | None, str, str]:
    """(culprit module, where it broke: forward/backward/loss/unknown, a sentence why)."""
    loss_step = history.first_nonfinite_loss
    weights = _nonfinite_weights(history)
    if weights:
        return weights[0], "weights", (
            f"the weights of {', '.join(weights[:3])} were already NaN/Inf at the first "
            "recorded step, before training could make them so: the model was loaded or "
            "initialised with non-finite values"
        )
    if bad_outputs and _input_was_bad(history, bad_outputs[0], step):
        return _before_module(history, bad_outputs[0], step, inside)
    if bad_outputs:
        culprit, where = bad_outputs[0], "forward"
        detail = (
            f"the output of {culprit} is the first non-finite value in forward order at step "
            f"{step}; everything computed before it was finite, so the NaN/Inf is made inside "
            f"{culprit} (log or sqrt of a value <= 0, division by zero, exp overflow) or by "
            "weights that were already non-finite"
        )
    elif history.nonfinite_outputs_checked is False:
        culprit, where = None, "unknown"
        first = f" (first in {bad_grads[0]})" if bad_grads else ""
        detail = (
            f"gradients{first} or the loss turned non-finite at step {step}, and the module "
            "outputs were not checked on that step (watch(..., nan_origin=False), or the "
            "step's forward could not be replayed), so where it began is unknown; run with "
            "nan_origin=True (the default) or `gradscope check` to name the module"
        )
    elif loss_step == step:
        culprit, where = None, "loss"
        detail = (
            f"every module's output was finite at step {step} but the loss was not: the loss "
            "function makes it (log of 0, division by zero, or probabilities outside [0, 1]), "
            "or the batch's targets hold NaN/Inf (check torch.isfinite(y).all(): an Inf in a "
            "regression target makes an Inf loss from finite predictions)"
        )
    else:
        last_bad = bad_grads[-1]
        between = _parameterless_after(history, last_bad)
        culprit, where = (between[-1] if between else last_bad), "backward"
        detail = (
            f"at step {step} every module's output and the loss were finite but gradients "
            f"were not; backward runs from the loss to the input and {last_bad} is the layer "
            "nearest the output with a non-finite gradient, so the NaN/Inf is made in the "
            "backward of "
            + (
                f"{culprit}, the operation right after it, or of a function forward() applies "
                "to its output (sqrt or log at 0, a division by a tiny number)"
                if between
                else f"{last_bad} or of an operation right after it (sqrt or log at 0, "
                "a division by a tiny number)"
            )
        )
    return culprit, where, detail


def _nonfinite_weights(history: History) -> list[str]:
    """Modules whose parameters were non-finite at the first recorded step."""
    if not history.records:
        return []
    norms = history.records[0].grads["param_norm"]
    bad = [
        module
        for module, norm in zip(history.param_modules, norms, strict=True)
        if norm == norm and norm in (float("inf"), float("-inf"))
        or norm != norm and history.records[0].detail
    ]
    return list(dict.fromkeys(bad))


def _input_was_bad(history: History, module: str, step: int) -> bool:
    j = history.module_names.index(module)
    return history.first_nonfinite_input[j] == step if history.first_nonfinite_input else False


def _replay_order(history: History, step: int) -> dict[str, float]:
    """Module -> when (counted in calls) the replay of ``step`` saw its output go non-finite,
    or its last finite call before any did; empty when that step was not replayed."""
    record = next((r for r in history.records if r.step == step), None)
    column = record.acts.get("nonfinite_order") if record is not None else None
    if not column:
        return {}
    pairs = zip(history.module_names, column, strict=True)
    return {name: value for name, value in pairs if value == value}


def _last_finite_before(history: History, module: str, step: int) -> str | None:
    """The last module that ran before ``module`` with a finite output at ``step``: in the
    order the replay's calls completed when it was replayed (a module called twice is
    placed at each call), else in forward order."""
    replayed = _replay_order(history, step)
    if module in replayed:
        earlier = [
            name
            for name, k in replayed.items()
            if k < replayed[module]
            and history.first_nonfinite_act[history.module_names.index(name)] != step
        ]
        return max(earlier, key=replayed.__getitem__) if earlier else None
    order = [history.module_names[j] for j in history.module_order if history.calls_total[j]]
    earlier = order[: order.index(module)] if module in order else []
    finite_before = [
        name
        for name in earlier
        if history.first_nonfinite_act[history.module_names.index(name)] != step
    ]
    return finite_before[-1] if finite_before else None


def _before_module(
    history: History, module: str, step: int, inside: dict | None = None
) -> tuple[str | None, str, str]:
    """The culprit's input was already non-finite: the batch, or an operation between two
    modules (a functional call no hook sees): inside a container's own forward() when the
    replay saw that container take finite inputs and return a non-finite output after the
    last finite module, one of its own (``inside``: the scope's ``nonfinite_inside``)."""
    previous = _last_finite_before(history, module, step)
    holder = (inside or {}).get("module") if (inside or {}).get("step") == step else None
    # The holder returned before ``module`` ran: one that holds both (the whole model,
    # replayed on weights a detail step's NaN gradients already reached) says less than
    # "between" does.
    closed = bool(holder) and not module.startswith(f"{holder}.")
    if previous is not None and closed and previous.startswith(f"{holder}."):
        return holder, "inside", (
            f"the output of {previous} was finite but the output of {holder}, which holds "
            f"it, was not at step {step}: the NaN/Inf is made inside {holder}'s forward() "
            f"after {previous} (a functional call such as torch.log, torch.sqrt, a division "
            "or exp, which no module hook sees)"
        )
    if previous is None:
        return None, "input", (
            f"the input batch of step {step} already contained NaN/Inf before any module ran "
            f"(the first module, {module}, received it): check the data, not the model"
        )
    return module, "between", (
        f"the output of {previous} was finite but the input of {module} was not at step "
        f"{step}: the NaN/Inf is made by an operation between {previous} and {module} "
        "(a functional call such as torch.log, torch.sqrt, a division or exp in forward(), "
        "which no module hook sees)"
    )


def _parameterless_after(history: History, module: str) -> list[str]:
    """Modules without trainable parameters that ran between ``module`` and the next layer
    that has them, in forward order."""
    owners = set(history.param_modules)
    order = [history.module_names[j] for j in history.module_order if history.calls_total[j]]
    if module not in order:
        return []
    between = []
    for name in order[order.index(module) + 1 :]:
        if name in owners:
            break
        between.append(name)
    return between


def plan(finding: Finding, info: ModelInfo) -> list[fix.Builder]:
    """Fixes for a NaN/Inf, best first, chosen by where it began."""
    layer = info.layer(finding.layer)
    where = finding.evidence.get("where")
    if where == "input":
        return [fix.check_inputs, fix.fix_loss_numerics]
    if where == "weights":
        return [fix.random_init, fix.check_inputs]
    weighted = where == "forward" and layer is not None and layer.params
    if weighted and fix.started_too_large(finding):
        # A layer with weights overflowing, the weights several times Kaiming's size at the
        # start (evidence ``init_scale``, x 1/sqrt(fan_in)): the init ranks first.
        return [fix.init_for(info), fix.lower_lr, fix.clip_grad_norm]
    if where == "forward" and finding.evidence.get("before_any_update"):
        # Made before any update: the initialisation (identical rows) or the formula.
        copies = [fix.random_init] if finding.evidence.get("copied_at_start") else []
        return [*copies, fix.fix_loss_numerics, fix.check_inputs]
    if finding.evidence.get("grew_before"):
        # The values grew for many steps before they overflowed: the step size is the cause.
        return [fix.lower_lr, fix.clip_grad_norm, fix.fix_loss_numerics]
    if weighted:
        # A layer with weights overflowing: the values grew too large, not a bad formula.
        return [fix.clip_grad_norm, fix.lower_lr, fix.fix_loss_numerics]
    if where == "loss":
        # Finite outputs, an infinite loss: the loss's arithmetic, or the targets.
        return [fix.fix_loss_numerics, fix.check_targets, fix.clip_grad_norm, fix.lower_lr]
    return [fix.fix_loss_numerics, fix.clip_grad_norm, fix.lower_lr]


@hookimpl
def gradscope_suggest(finding: Finding, model_info: ModelInfo) -> list[Suggestion]:
    """Suggestions for ``nonfinite_gradient`` findings, best first (see :func:`plan`); the
    first says what evidence put it there when that was the gradient's growth or the
    loss's rise before the NaN/Inf."""
    suggestions = fix.suggest(finding, model_info, "nonfinite_gradient", plan)
    grew = finding.evidence.get("grad_growth_before")
    rose = finding.evidence.get("loss_rise_before")
    if suggestions and finding.evidence.get("grew_before") and (grew, rose) != (None, None):
        what = (
            f"the gradient grew {fmt(grew)}x"
            if grew is not None
            and grew >= finding.evidence.get("threshold_lr_growth", DEFAULTS["lr_growth"])
            else f"the loss rose {fmt(rose)}x"
        )
        reason = (
            f"First because {what} over the steps before the NaN: "
            "the learning rate drove the values out of range, the formula only overflowed. "
        )
        suggestions[0] = replace(suggestions[0], why=reason + suggestions[0].why)
    return suggestions
