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
    # ...and so does a layer where this share of the rows are copies of another row
    # (docs/definitions.md: half of them).
    "twin_rows": 0.5,
}


@hookimpl
def gradscope_detect(
    history: History, model_info: ModelInfo, config: dict[str, Any]
) -> list[Finding]:
    """One finding per layer whose weight rows were identical after the first update."""
    t = thresholds(config, NAME, DEFAULTS)
    measured = _last_finite(history)
    at_start = _first_twins(history)
    numel = dict(zip(history.param_names, history.grad_series("numel")[0].tolist(), strict=True))
    first_step = history.steps[0] if history.steps else 0
    findings = []
    for name, module in zip(history.param_names, history.param_modules, strict=True):
        if name not in measured:
            continue  # never measured on finite weights: NaN is nonfinite_gradient's
        step, spread, norm, twins = measured[name]
        if step <= first_step:
            continue  # not yet trained: a zero-initialised layer may be fine
        shape = model_info.param_shapes.get(name, [])
        if len(shape) < 2 or shape[0] < 2:
            continue
        rms = norm / math.sqrt(max(numel.get(name, 1), 1))
        every = spread <= t["relative_spread"] * rms + 1e-12
        # Copies count when the initialisation made them (a step that blew the weights up
        # leaves the rows it missed tiny, and alike, next to the rest: the blow-up's).
        copied = twins >= t["twin_rows"] and at_start.get(name, 0.0) >= t["twin_rows"]
        if not every and not copied:  # NaN (not measured): not copies
            continue
        rows = (
            f"All {shape[0]} rows of {name} are identical "
            + ("(all zero) " if rms == 0 else "")
            if every
            else f"{twins:.0%} of the {shape[0]} rows of {name} are copies of another row "
        )
        findings.append(
            Finding(
                kind="symmetric_weights",
                layer=module,
                severity="error",
                step=first_step,
                message=(
                    f"{rows}after {step} training steps: units with the same weights "
                    f"compute the same thing and get the same gradient in {module}, so they "
                    "can never become different. "
                    "Zero or constant initialisation causes this; initialise weights randomly "
                    "(Kaiming or Xavier) to break the symmetry."
                ),
                evidence={
                    "parameter": name,
                    "rows": shape[0],
                    "row_spread": spread,
                    "twin_share": twins,
                    "weight_rms": rms,
                    "measured_at_step": step,
                    "threshold_twin_rows": t["twin_rows"],
                },
            )
        )
    return findings


def _last_finite(history: History) -> dict[str, tuple[int, float, float, float]]:
    """Per parameter: (step, row spread, weight norm, share of copied rows; NaN when not
    measured) of the latest record where spread and norm were both measured finite: a run
    that blew up later is judged on its last finite weights (rows a constant
    initialisation made identical stay identical up to the blow-up)."""
    spreads = history.grad_series("row_spread")
    norms = history.grad_series("param_norm")
    twins = history.grad_series("row_twins")
    both = torch.isfinite(spreads) & torch.isfinite(norms)
    out = {}
    for i, name in enumerate(history.param_names):
        rows = torch.nonzero(both[:, i]).flatten()
        if rows.numel():
            k = int(rows[-1])
            values = (float(spreads[k, i]), float(norms[k, i]), float(twins[k, i]))
            out[name] = (history.steps[k], *values)
    return out


def _first_twins(history: History) -> dict[str, float]:
    """Per parameter: the share of copied rows on the first record that measured it."""
    twins = history.grad_series("row_twins")
    out = {}
    for i, name in enumerate(history.param_names):
        rows = torch.nonzero(torch.isfinite(twins[:, i])).flatten()
        if rows.numel():
            out[name] = float(twins[int(rows[0]), i])
    return out


def plan(finding: Finding, info: ModelInfo) -> list[fix.Builder]:
    """Identical rows can only be told apart by a random initialisation."""
    return [fix.random_init]


@hookimpl
def gradscope_suggest(finding: Finding, model_info: ModelInfo) -> list[Suggestion]:
    """Suggestions for ``symmetric_weights`` findings, best first (see :func:`plan`)."""
    return fix.suggest(finding, model_info, "symmetric_weights", plan)
