"""symmetric_weights: weight matrices whose rows stay identical, so units learn the same thing.

Zero or constant initialisation gives every unit of a layer the same weights,
the same output and the same gradient: they stay copies of each other forever.
Only rows that are *still* identical after training steps count, so a final
layer initialised to zero on purpose (its rows diverge at the first step) is fine.
"""

from __future__ import annotations

from typing import Any

from gradscope import Finding, Suggestion, hookimpl
from gradscope.config import thresholds
from gradscope.history import History
from gradscope.modelinfo import ModelInfo
from gradscope.signals import LossTrend, loss_trend
from gradscope_plugins import fix_builders as fix
from gradscope_plugins.judgement import (
    HARM_DEFAULTS,
    ROW_COPY_LINES,
    fmt,
    identical_rows,
    learned_nothing,
)

NAME = "symmetry"
#: The statistics this detector reads (see gradscope.statistics); without them it cannot judge.
NEEDS = ("row_spread", "param_norm")
#: Row spread below ``relative_spread`` of the weight RMS counts as identical rows, and so
#: does a layer where ``twin_rows`` of the rows are copies of another row.  A layer where
#: only some rows are copies is judged by harm (HARM_DEFAULTS: the loss stalled, or the
#: model predicts a constant): rows kept equal by design (a pruning mask, the rows of
#: classes absent from the data, a zero-initialised readout over a large vocabulary) while
#: the rest learn are ``info``.
DEFAULTS = {**ROW_COPY_LINES, **HARM_DEFAULTS}


@hookimpl
def gradscope_detect(
    history: History, model_info: ModelInfo, config: dict[str, Any]
) -> list[Finding]:
    """One finding per layer whose weight rows were identical after the first update."""
    t = thresholds(config, NAME, DEFAULTS)
    first_step = history.steps[0] if history.steps else 0
    trend = loss_trend(history)
    harmed = learned_nothing(history, trend, t)
    findings = []
    for name, rows_of in identical_rows(history, model_info, t).items():
        module, step, spread, rms, twins, every = rows_of
        shape = model_info.param_shapes.get(name, [])
        rows = (
            f"All {shape[0]} rows of {name} are identical "
            + ("(all zero) " if rms == 0 else "")
            if every
            else f"{twins:.0%} of the {shape[0]} rows of {name} are copies of another row "
        )
        harmless = not every and not harmed
        findings.append(
            Finding(
                kind="symmetric_weights",
                layer=module,
                severity="info" if harmless else "error",
                step=first_step,
                message=_message(rows, step, module, trend if harmless else None),
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


def _message(rows: str, step: int, module: str, unharmed: LossTrend | None) -> str:
    """The finding's text; ``unharmed`` is the loss trend of a run that learned regardless."""
    same = (
        f"{rows}after {step} training steps: units with the same weights compute the same "
        f"thing and get the same gradient in {module}, so they can never become different. "
    )
    if unharmed is not None:
        return same + (
            f"The loss went {fmt(unharmed.first)} -> {fmt(unharmed.last)} regardless, so "
            "nothing needs to change if the rows are equal on purpose (a pruning mask, the "
            "rows of classes the data never shows); if a constant initialisation made them, "
            "initialise weights randomly (Kaiming or Xavier)."
        )
    return same + (
        "Zero or constant initialisation causes this; initialise weights randomly "
        "(Kaiming or Xavier) to break the symmetry."
    )


def plan(finding: Finding, info: ModelInfo) -> list[fix.Builder]:
    """Identical rows can only be told apart by a random initialisation."""
    return [fix.random_init]


@hookimpl
def gradscope_suggest(finding: Finding, model_info: ModelInfo) -> list[Suggestion]:
    """Suggestions for ``symmetric_weights`` findings, best first (see :func:`plan`)."""
    return fix.suggest(finding, model_info, "symmetric_weights", plan)
