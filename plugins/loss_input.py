"""wrong_loss_input: the loss function is given the wrong kind of input.

Cross-entropy on probabilities (a softmax already applied), binary cross-entropy with
logits on a sigmoid's output, NLL on scores that are not log-probabilities, and MSE on
shapes that broadcast to every pair of prediction and target: the model trains slowly,
or learns only the mean,, and no gradient statistic says why.  The core reads
the logged loss's autograd graph on detail steps (``loss_input_fault``,
gradscope/loss_input.py); this detector names the mistake when most checks saw it.
"""

from __future__ import annotations

import math
from typing import Any

from gradscope import Finding, Suggestion, hookimpl
from gradscope.history import History
from gradscope.loss_input import (
    BROADCAST_IN_MSE,
    NLL_WITHOUT_LOG_SOFTMAX,
    SIGMOID_INTO_BCE_WITH_LOGITS,
    SOFTMAX_INTO_CROSS_ENTROPY,
)
from gradscope.modelinfo import ModelInfo
from gradscope_plugins import fix_builders as fix

#: The statistics this detector reads (see gradscope.statistics); without them it cannot judge.
NEEDS = ("loss_input_fault",)

#: Per mistake: severity and what it does to training.
_MISTAKES = {
    SOFTMAX_INTO_CROSS_ENTROPY: (
        "warning",
        "cross_entropy is given probabilities: the model's output already went through "
        "softmax, and cross_entropy applies log_softmax itself. The scores it sees then lie "
        "in [0, 1], so the model can never be confident (with 10 classes the right class "
        "gets at most ~0.23) and its gradients are squashed: training is slow and stops "
        "short. Pass the raw scores (logits) to cross_entropy.",
    ),
    SIGMOID_INTO_BCE_WITH_LOGITS: (
        "warning",
        "binary_cross_entropy_with_logits is given a sigmoid's output: it applies the "
        "sigmoid itself, so the 'logits' lie in (0, 1) and the predicted probability stays "
        "between 0.5 and 0.73 whatever the model learns. Pass the raw scores, or keep the "
        "sigmoid and use binary_cross_entropy.",
    ),
    NLL_WITHOUT_LOG_SOFTMAX: (
        "error",
        "nll_loss is given scores that are not log-probabilities (log_softmax is missing): "
        "NLL only reads the score of the right class, so the loss falls without bound as "
        "that score grows, and nothing keeps the others in check. Apply log_softmax "
        "first, or use cross_entropy on the raw scores.",
    ),
    BROADCAST_IN_MSE: (
        "error",
        "mse_loss is given a prediction and a target of different shapes (such as (N, 1) "
        "and (N,)): both are broadcast to (N, N), so every prediction is compared with "
        "every target, and the best the model can do is predict their mean for every "
        "sample. Make the shapes equal (squeeze the prediction or unsqueeze the target).",
    ),
}


@hookimpl
def gradscope_detect(
    history: History, model_info: ModelInfo, config: dict[str, Any]
) -> list[Finding]:
    """One finding when at least half of the checked detail steps saw the same mistake."""
    series = history.act_series("loss_input_fault")
    checks = [
        (history.steps[t], j, float(series[t, j]))
        for t in range(series.shape[0])
        for j in range(series.shape[1])
        if not math.isnan(float(series[t, j]))
    ]
    if not checks:
        return []
    # A step saw a mistake when one of its loss's terms did (a term per row: the module
    # whose output that term was given).
    per_step: dict[int, float] = {}
    for step, _, code in checks:
        per_step[step] = code if code in _MISTAKES else per_step.get(step, code)
    codes = list(per_step.values())
    mistake = max(set(codes), key=codes.count)
    if mistake not in _MISTAKES or codes.count(mistake) * 2 < len(codes):
        return []
    step, j, _ = next(c for c in checks if c[2] == mistake)
    severity, why = _MISTAKES[mistake]
    return [
        Finding(
            kind="wrong_loss_input",
            layer=history.module_names[j],
            severity=severity,
            step=step,
            message=f"The loss function gets the wrong input: {why}",
            evidence={"mistake": mistake, "checks": len(codes), "seen": codes.count(mistake)},
        )
    ]


def plan(finding: Finding, info: ModelInfo) -> list[fix.Builder]:
    """The loss call is the cause: give it the input it expects."""
    return [fix.fix_loss_input]


@hookimpl
def gradscope_suggest(finding: Finding, model_info: ModelInfo) -> list[Suggestion]:
    """Suggestions for ``wrong_loss_input`` findings (see :func:`plan`)."""
    return fix.suggest(finding, model_info, "wrong_loss_input", plan)
