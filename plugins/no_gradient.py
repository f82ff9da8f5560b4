"""no_gradient: parameters that require a gradient but never receive one.

Frozen parameters (``requires_grad=False``) are not watched, so they are never a
finding.  A parameter whose gradient is zero is not a finding either: it took
part in the graph (an embedding row no batch used, for example).
"""

from __future__ import annotations

from typing import Any

from gradscope import Finding, Suggestion, hookimpl
from gradscope.history import History
from gradscope.modelinfo import ModelInfo
from gradscope_plugins import fix_builders as fix

#: The statistics this detector reads (see gradscope.statistics); without them it cannot judge.
NEEDS = ("has_grad",)


@hookimpl
def gradscope_detect(
    history: History, model_info: ModelInfo, config: dict[str, Any]
) -> list[Finding]:
    """One finding per module whose trainable parameters never got a gradient."""
    if history.recorded == 0:
        return []
    missing: dict[str, list[str]] = {}
    reached: set[str] = set()  # modules with at least one parameter that got a gradient
    for name, module, seen in zip(
        history.param_names, history.param_modules, history.grad_seen, strict=True
    ):
        if seen == 0:
            missing.setdefault(module, []).append(name)
        else:
            reached.add(module)
    # A module's output reaches the loss when one of its own or its children's parameters
    # got a gradient (the model itself whenever any did).
    reached |= {
        module
        for module in missing
        if module == model_info.model_name and reached
        or any(other.startswith(module + ".") for other in reached)
    }
    calls = dict(zip(history.module_names, history.calls_total, strict=True))
    without_grad = set(model_info.extra.get("ran_without_grad") or ())
    # Not one parameter had a gradient at any step although the modules ran: the loop's
    # order (step() before backward(), or zero_grad() between them), not a cut graph.
    loop_order = len(missing) > 1 and all(seen == 0 for seen in history.grad_seen) and all(
        calls.get(module, 0) > 0 for module in missing
    )
    findings = []
    for module, params in missing.items():
        ran = calls.get(module, 0) > 0 or module in without_grad
        why = (
            "No parameter of the model had a gradient when optimizer.step() ran, although "
            "every layer ran in forward(): call loss.backward() before optimizer.step(), "
            "and optimizer.zero_grad() before backward(), not between it and step()"
            if loop_order
            else f"{module} runs in forward() with gradients off (inside torch.no_grad() or "
            "torch.set_grad_enabled(False)), so autograd records nothing for it: call it "
            "outside that block"
            if module in without_grad
            else f"{module}'s output reaches the loss (its other parameters, or its "
            f"submodules', get gradients), so {'this one is' if len(params) == 1 else 'these are'} "
            "never read in its forward(), or only through .detach() or .data"
            if module in reached
            else f"{module} runs in forward(), so its output is cut off from the loss: look "
            "for .detach(), .data, torch.no_grad() or a tensor rebuilt with torch.tensor(...) "
            "between it and the loss"
            if ran
            else f"{module} is never called in forward(): an unused layer, or one that a "
            "branch always skips"
        )
        findings.append(
            Finding(
                kind="no_gradient",
                layer=module,
                severity="warning",
                step=history.steps[0],
                message=(
                    f"{', '.join(params)} require{'s' if len(params) == 1 else ''} a gradient "
                    f"but never got one in {history.recorded} recorded steps, so "
                    f"{'it does' if len(params) == 1 else 'they do'} not learn. {why}."
                    + (
                        ""
                        if loop_order
                        else " If that is intended, freeze them with requires_grad_(False)."
                    )
                ),
                evidence={
                    "parameters": params,
                    "module_called": ran,
                    "module_reached": module in reached,
                    "loop_order": loop_order,
                    "recorded_steps": history.recorded,
                },
            )
        )
    return findings


def plan(finding: Finding, info: ModelInfo) -> list[fix.Builder]:
    """A missing gradient is a graph problem: show how to find where it is cut; a module
    that never runs can be frozen (or deleted) first."""
    if fix.never_called(finding, info):
        return [fix.freeze_unused, fix.check_graph]
    return [fix.check_graph]


@hookimpl
def gradscope_suggest(finding: Finding, model_info: ModelInfo) -> list[Suggestion]:
    """Suggestions for ``no_gradient`` findings, best first (see :func:`plan`)."""
    return fix.suggest(finding, model_info, "no_gradient", plan)
