"""symmetric_weights: weight matrices whose rows stay identical, so units learn the same thing.

Zero or constant initialisation gives every unit of a layer the same weights,
the same output and the same gradient: they stay copies of each other forever.
Only rows that are *still* identical after training steps count, so a final
layer initialised to zero on purpose (its rows diverge at the first step) is fine.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from gradscope import Finding, Suggestion, hookimpl
from gradscope.config import thresholds
from gradscope.history import History
from gradscope.modelinfo import ModelInfo
from gradscope_plugins import fix_builders as fix

NAME = "symmetry"
#: The statistics this detector reads (see gradscope.statistics); without them it cannot judge.
NEEDS = ("row_spread", "param_norm")
DEFAULTS = {
    # Row spread below this fraction of the weight RMS counts as identical rows.
    "relative_spread": 1e-6,
}


@hookimpl
def gradscope_detect(
    history: History, model_info: ModelInfo, config: dict[str, Any]
) -> list[Finding]:
    """One finding per layer whose weight rows were identical after the first update."""
    t = thresholds(config, NAME, DEFAULTS)
    measured = _last_finite(history)
    numel = dict(zip(history.param_names, history.grad_series("numel")[0].tolist(), strict=True))
    first_step = history.steps[0] if history.steps else 0
    findings = []
    for name, module in zip(history.param_names, history.param_modules, strict=True):
        if name not in measured:
            continue  # never measured on finite weights: NaN is nonfinite_gradient's
        step, spread, norm = measured[name]
        if step <= first_step:
            continue  # not yet trained: a zero-initialised layer may be fine
        shape = model_info.param_shapes.get(name, [])
        if len(shape) < 2 or shape[0] < 2:
            continue
        rms = norm / math.sqrt(max(numel.get(name, 1), 1))
        if spread > t["relative_spread"] * rms + 1e-12:
            continue
        findings.append(
            Finding(
                kind="symmetric_weights",
                layer=module,
                severity="error",
                step=first_step,
                message=(
                    f"All {shape[0]} rows of {name} are identical "
                    + ("(all zero) " if rms == 0 else "")
                    + f"after {step} training steps: every unit of {module} computes the same "
                    "thing and gets the same gradient, so they can never become different. "
                    "Zero or constant initialisation causes this; initialise weights randomly "
                    "(Kaiming or Xavier) to break the symmetry."
                ),
                evidence={
                    "parameter": name,
                    "rows": shape[0],
                    "row_spread": spread,
                    "weight_rms": rms,
                    "measured_at_step": step,
                },
            )
        )
    return findings


def _last_finite(history: History) -> dict[str, tuple[int, float, float]]:
    """Per parameter: (step, row spread, weight norm) of the latest record where both were
    measured finite: a run that blew up later is judged on its last finite weights (rows
    a constant initialisation made identical stay identical up to the blow-up)."""
    spreads = history.grad_series("row_spread")
    norms = history.grad_series("param_norm")
    both = torch.isfinite(spreads) & torch.isfinite(norms)
    out = {}
    for i, name in enumerate(history.param_names):
        rows = torch.nonzero(both[:, i]).flatten()
        if rows.numel():
            k = int(rows[-1])
            out[name] = (history.steps[k], float(spreads[k, i]), float(norms[k, i]))
    return out


def plan(finding: Finding, info: ModelInfo) -> list[fix.Builder]:
    """Identical rows can only be told apart by a random initialisation."""
    return [fix.random_init]


@hookimpl
def gradscope_suggest(finding: Finding, model_info: ModelInfo) -> list[Suggestion]:
    """Suggestions for ``symmetric_weights`` findings, best first (see :func:`plan`)."""
    return fix.suggest(finding, model_info, "symmetric_weights", plan)
