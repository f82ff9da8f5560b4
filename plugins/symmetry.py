"""symmetric_weights: weight matrices whose rows stay identical, so units learn the same thing.

Zero or constant initialisation gives every unit of a layer the same weights,
the same output and the same gradient: they stay copies of each other forever.
Only rows that are *still* identical after training steps count, so a final
layer initialised to zero on purpose (its rows diverge at the first step) is fine; and
only in weights that got a gradient (the others never moved: no_gradient's finding).
"""

from __future__ import annotations

from typing import Any

from gradscope import Finding, Suggestion, hookimpl
from gradscope.config import thresholds
from gradscope.history import History
from gradscope.modelinfo import ModelInfo
from gradscope_plugins import fix_builders as fix
from gradscope_plugins.judgement import ROW_COPY_LINES, identical_rows

NAME = "symmetry"
#: The statistics this detector reads (see gradscope.statistics); without them it cannot judge.
NEEDS = ("row_spread", "param_norm")
#: Row spread below ``relative_spread`` of the weight RMS counts as identical rows, and so
#: does a layer where ``twin_rows`` of the rows are copies of another row.
DEFAULTS = {**ROW_COPY_LINES}


@hookimpl
def gradscope_detect(
    history: History, model_info: ModelInfo, config: dict[str, Any]
) -> list[Finding]:
    """One finding per layer whose weight rows were identical after the first update."""
    t = thresholds(config, NAME, DEFAULTS)
    first_step = history.steps[0] if history.steps else 0
    findings = []
    # Weights that never got a gradient keep their initial rows whatever they are (LoRA's
    # zero B behind a detached adapter): no_gradient names the cause.
    seen = zip(history.param_names, history.grad_seen, strict=True)
    ungraded = {name for name, count in seen if not count}
    for name, rows_of in identical_rows(history, model_info, t).items():
        if name in ungraded:
            continue
        module, step, spread, rms, twins, every = rows_of
        shape = model_info.param_shapes.get(name, [])
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


def plan(finding: Finding, info: ModelInfo) -> list[fix.Builder]:
    """Identical rows can only be told apart by a random initialisation."""
    return [fix.random_init]


@hookimpl
def gradscope_suggest(finding: Finding, model_info: ModelInfo) -> list[Suggestion]:
    """Suggestions for ``symmetric_weights`` findings, best first (see :func:`plan`)."""
    return fix.suggest(finding, model_info, "symmetric_weights", plan)
