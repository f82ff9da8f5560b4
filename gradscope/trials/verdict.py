"""Judge a variant against the baseline: helps, no effect, hurts.

"Clearly below" has a stated margin: a variant's final loss (the median of its last
:data:`TAIL` losses) must be below the baseline's by more than
``max(NOISE_SIGMAS x the standard deviation of the baseline's last NOISE_WINDOW losses,
RELATIVE x the baseline's final loss)`` (a robust standard deviation, from the median
absolute deviation, as the final losses are medians: see :func:`noise`), or below every
one of the baseline's last NOISE_WINDOW losses by RELATIVE x its final loss (a baseline
that swings wildly, such as a loop that never resets its gradients, swings by more than
its median), or, step by step against the baseline (every run sees the same batches in
the same order, so the batch-to-batch swing both runs share cancels), below the baseline
on at least PAIRED_SHARE of the last NOISE_WINDOW steps by a median of more than
RELATIVE x its final loss; and the finding it addresses must be gone.  "Clearly above"
mirrors it.  For a finding the loss cannot show (a parameter with no gradient: its fix
freezes or connects it) the finding gone without a clearly higher loss is enough.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from gradscope.findings import Finding

TAIL = 5
NOISE_WINDOW = 10
NOISE_SIGMAS = 2.0
RELATIVE = 0.02
#: Share of the last NOISE_WINDOW steps on which a variant must be below (above) the
#: baseline's loss on the same batch for the paired test.
PAIRED_SHARE = 0.8
VERDICTS = ("helps", "no effect", "hurts", "not applicable")
#: Finding kinds whose fix removes the finding without having to lower the loss.
LOSS_NEUTRAL = frozenset({"no_gradient"})


def final_loss(losses: list[float]) -> float:
    """Median of the last TAIL losses; inf if any loss of the run was non-finite."""
    if not losses or not all(math.isfinite(v) for v in losses):
        return math.inf
    return statistics.median(losses[-TAIL:])


#: The median absolute deviation times this is the standard deviation of normal noise.
MAD_TO_SIGMA = 1.4826


def noise(window: list[float]) -> float:
    """A standard deviation of ``window`` that one blow-up does not inflate: 1.4826 x the
    median absolute deviation (equal to the standard deviation for normal noise), 0 for
    fewer than two values.  A baseline that diverges in its last steps (2.1, 3.3, 44, 329,
    4e8) has a standard deviation of 1e8, which no fix could beat.  When more than half
    the window is one value (a loss sitting at exactly 0) the deviation is 0 and says
    nothing of the rest: the plain standard deviation is used then."""
    if len(window) < 2:
        return 0.0
    centre = statistics.median(window)
    robust = MAD_TO_SIGMA * statistics.median(abs(v - centre) for v in window)
    return robust if robust > 0 else statistics.pstdev(window)


def margin(baseline: list[float]) -> float:
    """How far below the baseline's final loss a variant must end to count as clearly lower."""
    window = [v for v in baseline[-NOISE_WINDOW:] if math.isfinite(v)]
    final = final_loss(baseline)
    scale = abs(final) if math.isfinite(final) else 0.0
    return max(NOISE_SIGMAS * noise(window), RELATIVE * scale)


def paired(baseline: list[float], variant: list[float]) -> list[float]:
    """Variant minus baseline on each of the last NOISE_WINDOW steps (the same batch on the
    same step in both runs); empty when the runs differ in length or a loss there is not
    finite."""
    n = min(NOISE_WINDOW, len(baseline))
    if len(variant) != len(baseline) or n < 2:
        return []
    diffs = [v - b for b, v in zip(baseline[-n:], variant[-n:], strict=True)]
    return diffs if all(math.isfinite(d) for d in diffs) else []


Key = tuple[str, "str | None"]


def finding_keys(findings: list[Finding], renames: dict[str, str]) -> set[Key]:
    """(kind, layer) of the warning/error findings, layers named as in the unchanged model
    (a finding on a layer's new norm layer is that layer's: the problem stayed where it was)."""
    back = {new: old for old, new in renames.items()}
    keys = set()
    for f in findings:
        if f.rank < 1:
            continue
        layer = f.layer
        if layer is not None:
            for new, old in back.items():
                if layer == new or layer.startswith(new + "."):
                    layer = old
                    break
        keys.add((f.kind, layer))
    return keys


@dataclass
class Judgement:
    """The verdict and the reason in words."""

    verdict: str
    reason: str


def judge(
    baseline: list[float],
    variant: list[float],
    finding_gone: bool,
    kind: str | None = None,
) -> Judgement:
    """helps / no effect / hurts for one variant (see the module docstring for "clearly")."""
    before, after = final_loss(baseline), final_loss(variant)
    if not math.isfinite(before):
        if math.isfinite(after):
            return Judgement("helps", "the baseline's loss turned non-finite, this run's did not")
        return Judgement("no effect", "the loss still turns non-finite")
    if not math.isfinite(after):
        return Judgement("hurts", "the loss turned non-finite")
    need = margin(baseline)
    window = [v for v in baseline[-NOISE_WINDOW:] if math.isfinite(v)]
    band = RELATIVE * abs(before)
    diffs = paired(baseline, variant)
    n = len(diffs)
    shift = statistics.median(diffs) if diffs else 0.0
    lower, higher = sum(d < 0 for d in diffs), sum(d > 0 for d in diffs)
    paired_below = n > 0 and shift < -band and lower >= PAIRED_SHARE * n
    paired_above = n > 0 and shift > band and higher >= PAIRED_SHARE * n
    below = after < before - need or (bool(window) and after < min(window) - band) or paired_below
    above = after > before + need or (bool(window) and after > max(window) + band) or paired_above
    if below:
        if finding_gone:
            if after < before - need:
                why = f"final loss {after:.4g} < {before:.4g} - {need:.2g}"
            elif window and after < min(window) - band:
                why = (
                    f"final loss {after:.4g} below each of the baseline's last {len(window)} "
                    f"losses (lowest {min(window):.4g})"
                )
            else:
                why = (
                    f"below the baseline on {lower} of the last {n} steps (same "
                    f"batches), by {-shift:.2g} in the median ({after:.4g} vs {before:.4g})"
                )
            return Judgement("helps", why)
        return Judgement(
            "no effect", f"the loss fell ({after:.4g} < {before:.4g}) but the finding remains"
        )
    if above:
        if after > before + need:
            why = f"final loss {after:.4g} > {before:.4g} + {need:.2g}"
        elif window and after > max(window) + band:
            why = (
                f"final loss {after:.4g} above each of the baseline's last {len(window)} "
                f"losses (highest {max(window):.4g})"
            )
        else:
            why = (
                f"above the baseline on {higher} of the last {n} steps (same "
                f"batches), by {shift:.2g} in the median ({after:.4g} vs {before:.4g})"
            )
        return Judgement("hurts", why)
    if kind in LOSS_NEUTRAL and finding_gone:
        return Judgement("helps", f"the finding is gone, loss {after:.4g} vs {before:.4g}")
    return Judgement("no effect", f"final loss {after:.4g} within {need:.2g} of {before:.4g}")
