"""no_gradient: parameters that require a gradient but never receive one.

Frozen parameters (``requires_grad=False``) are not watched, and parameters the
watched optimizer does not hold are never updated by its steps, so neither is a
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
    """One finding per part of the model whose trainable parameters never got a gradient:
    a module, or the largest part (below the model) none of whose parameters got one."""
    if history.recorded == 0:
        return []
    missing: dict[str, list[str]] = {}
    reached: set[str] = set()  # modules with at least one parameter that got a gradient
    # The optimizer's steps never update parameters it does not hold (an EMA target
    # network run under no_grad): no step "should update" them, so none is missing.
    unheld = set(model_info.extra.get("outside_optimizer") or ())
    for name, module, seen in zip(
        history.param_names, history.param_modules, history.grad_seen, strict=True
    ):
        if name in unheld:
            continue
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
    extra = model_info.extra
    # Ran with gradients off inside a call of the model, or only ever so (a loop calling
    # the model's parts: `with torch.no_grad(): h = model.encoder(x)`).
    without_grad = set(extra.get("ran_without_grad") or ()) | {
        module for module in extra.get("seen_without_grad") or () if not calls.get(module)
    }
    # Not one parameter had a gradient at any step although the modules ran: the loop's
    # order (step() before backward(), or zero_grad() between them), not a cut graph.
    loop_order = len(missing) > 1 and all(seen == 0 for seen in history.grad_seen) and all(
        calls.get(module, 0) > 0 for module in missing
    )
    library = set(extra.get("library_modules") or ())
    findings = []
    for part, members in _parts(missing, reached, model_info.model_name).items():
        params = [name for module in members for name in missing[module]]
        ran = any(calls.get(module, 0) > 0 or module in without_grad for module in members)
        situation = (
            "loop_order"
            if loop_order
            else "without_grad"
            if any(module in without_grad for module in members)
            else "unread"
            if part in reached
            else "cut_off"
            if ran
            else "never_called"
        )
        # A library's layer whose own parameter its forward() leaves unread while the rest
        # of it trains: an optional input reads it (XLNet's mask_emb, DINOv2's mask_token).
        optional = situation == "unread" and all(module in library for module in members)
        findings.append(
            Finding(
                kind="no_gradient",
                layer=part,
                severity="info" if optional else "warning",
                step=history.steps[0],
                message=_message(part, params, members, situation, history.recorded)
                + (_OPTIONAL if optional else ""),
                evidence={
                    "parameters": params,
                    "modules": members,
                    "module_called": ran,
                    "module_reached": part in reached,
                    "loop_order": loop_order,
                    "recorded_steps": history.recorded,
                },
            )
        )
    return findings


_OPTIONAL = (
    " Its class comes from an installed library, not from your code: such a parameter is "
    "typically read only with an optional input (a mask token for masked inputs, a segment "
    "bias for token types), so nothing is wrong unless you meant to pass that input."
)


def _parts(missing: dict[str, list[str]], reached: set[str], root: str) -> dict[str, list[str]]:
    """The modules of ``missing`` grouped under the largest part of the model (its name's
    shortest prefix, below the model itself) that holds no module with a gradient: an
    encoder run under ``torch.no_grad()`` is one finding, not one per layer."""
    groups: dict[str, list[str]] = {}
    for module in missing:
        part = module
        if module != root and module not in reached:
            pieces = module.split(".")
            for k in range(1, len(pieces)):
                prefix = ".".join(pieces[:k])
                if not any(m == prefix or m.startswith(prefix + ".") for m in reached):
                    part = prefix
                    break
        groups.setdefault(part, []).append(module)
    return groups


def _message(
    part: str, params: list[str], members: list[str], situation: str, recorded: int
) -> str:
    """What is missing, for how long, why (``situation``), and what to do if intended."""
    shown = ", ".join(params[:4]) + (f" and {len(params) - 4} more" if len(params) > 4 else "")
    where = part if len(members) == 1 else f"{part} ({len(members)} modules)"
    why = {
        "loop_order": "No parameter of the model had a gradient when optimizer.step() ran, "
        "although every layer ran in forward(): call loss.backward() before "
        "optimizer.step(), and optimizer.zero_grad() before backward(), not between it and "
        "step()",
        "without_grad": f"{where} runs in forward() with gradients off (inside "
        "torch.no_grad() or torch.set_grad_enabled(False)), so autograd records nothing for "
        "it: call it outside that block",
        "unread": f"{part}'s output reaches the loss (its other parameters, or its "
        f"submodules', get gradients), so {'this one is' if len(params) == 1 else 'these are'} "
        "never read in its forward(), or only through .detach() or .data (or only an "
        "optional input reads it: a mask token used with masked inputs only)",
        "cut_off": f"{where} runs in forward(), so its output is cut off from the loss: look "
        "for .detach(), .data, torch.no_grad() or a tensor rebuilt with torch.tensor(...) "
        "between it and the loss",
        "never_called": f"{where} is never called in forward(): an unused layer, or one "
        "that a branch always skips",
    }[situation]
    one = len(params) == 1
    return (
        f"{shown} require{'s' if one else ''} a gradient but never got one in {recorded} "
        f"recorded steps, so {'it does' if one else 'they do'} not learn. {why}."
        + ("" if situation == "loop_order" else " If that is intended, freeze them with "
           "requires_grad_(False).")
    )  # fmt: skip


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
