"""stale_gradient: gradients that are not reset between optimizer steps.

``backward()`` adds into ``param.grad``.  A loop that never calls ``zero_grad()`` (or
calls it once, before the loop) applies at every step the sum of all the gradients so
far: old directions keep pushing, and the step grows like a learning rate that rises
every step.  The core follows one parameter's gradient from a detail step to the next
step (``grad_carried``, gradscope/carryover.py): 0 when it was reset, the share of it left
from the step before when it was not.
"""

from __future__ import annotations

import math
from typing import Any

from gradscope import Finding, Suggestion, hookimpl
from gradscope.config import thresholds
from gradscope.history import History
from gradscope.modelinfo import ModelInfo
from gradscope_plugins import fix_builders as fix

NAME = "stale_gradient"
#: The statistics this detector reads (see gradscope.statistics); without them it cannot judge.
NEEDS = ("grad_carried",)
DEFAULTS = {
    # A check counts as "not reset" when at least this share of the gradient's norm was
    # the previous step's (a GradScaler's unscaling shrinks an old gradient by the scale
    # at every step: harmless, and below this).
    "carried_share": 0.05,
}


def _checks(history: History) -> list[tuple[int, int, float]]:
    """(step, parameter index, carried share) of every check that could tell."""
    found = []
    for record in history.records:
        for index, share in enumerate(record.grads.get("grad_carried", ())):
            if not math.isnan(share):
                found.append((record.step, index, share))
    return found


@hookimpl
def gradscope_detect(
    history: History, model_info: ModelInfo, config: dict[str, Any]
) -> list[Finding]:
    """One finding when at least as many checks saw an old gradient left as saw it reset."""
    t = thresholds(config, NAME, DEFAULTS)
    checks = _checks(history)
    carried = [c for c in checks if c[2] >= t["carried_share"]]
    if not carried or len(carried) < len(checks) - len(carried):
        return []
    step, index, share = carried[0]
    name, module = history.param_names[index], history.param_modules[index]
    largest = max(c[2] for c in carried)
    opt = model_info.optimizer_var
    return [
        Finding(
            kind="stale_gradient",
            layer=module,
            severity="error",
            step=step,
            message=(
                f"The gradients are not reset between optimizer steps: at step {step}, "
                f"{share:.0%} of {name}'s gradient was still the previous step's "
                f"(up to {largest:.0%} in {len(carried)} of {len(checks)} checks). "
                "backward() adds into .grad, so every step applies the sum of all the "
                "gradients so far, and the step grows as if the learning rate rose every "
                f"step. Call {opt}.zero_grad() once per step, before loss.backward(); "
                "this affects every layer, not only the one checked."
            ),
            evidence={
                "parameter": name,
                "carried_share": share,
                "largest_share": largest,
                "steps_carried": [c[0] for c in carried],
                "checks": len(checks),
                "thresholds": dict(t),
            },
        )
    ]


def plan(finding: Finding, info: ModelInfo) -> list[fix.Builder]:
    """The loop is the cause: reset the gradients every step."""
    return [fix.reset_gradients]


@hookimpl
def gradscope_suggest(finding: Finding, model_info: ModelInfo) -> list[Suggestion]:
    """Suggestions for ``stale_gradient`` findings (see :func:`plan`)."""
    return fix.suggest(finding, model_info, "stale_gradient", plan)
