"""Does a gradscope report say what a recipe expects?  One rule, shared by tests and benchmark."""

from __future__ import annotations

from typing import Any

from realarch_recipes import Expect

#: A finding of one of these kinds contradicts an expected finding of the other.
OPPOSITE = {"vanishing_gradient": "exploding_gradient", "exploding_gradient": "vanishing_gradient"}


class WrongVerdict(AssertionError):
    """gradscope said something other than the expected verdict (what xfail marks expect)."""


def on_part(layer: str | None, prefix: str) -> bool:
    """Whether module ``layer`` is ``prefix`` or inside it (prefix "" matches any layer)."""
    if not prefix:
        return True
    return layer is not None and (layer == prefix or layer.startswith(prefix + "."))


def describe(finding: Any) -> str:
    """kind on layer (severity), first fix: one finding in one line."""
    fix = finding.suggestions[0].kind if finding.suggestions else None
    return f"{finding.kind} on {finding.layer} ({finding.severity}), first fix {fix}"


def judge(report: Any, expect: Expect) -> tuple[bool, str]:
    """(passed, what gradscope said) for ``report`` against ``expect``.

    A plugin that raised (``report.plugin_errors``) fails every recipe: it judged nothing.
    Healthy (``expect.kind`` None): no warning or error at all.  Broken: a warning or error
    of ``expect.kind`` on a layer under ``expect.prefix`` whose first suggestion is one of
    ``expect.fixes``, and no finding of the opposite kind (vanishing vs exploding) that
    points at another cure: a diverged run whose grown weights also starve the early
    layers' relative gradient is both by the definitions, and reads as one story only when
    both findings' first fix is one the recipe expects (a lower learning rate).
    """
    alarms = report.at_least("warning")
    crashed = [f"{e['plugin']} plugin raised {e['error']}" for e in report.plugin_errors]
    said = "; ".join([describe(f) for f in alarms] + crashed) or "nothing"
    if crashed:
        return False, said
    if expect.kind is None:
        return not alarms, said
    of_kind = [f for f in alarms if f.kind == expect.kind]
    if not of_kind:
        return False, said
    finding = of_kind[0]
    fix = finding.suggestions[0].kind if finding.suggestions else None
    contradicted = any(
        f.kind == OPPOSITE.get(expect.kind)
        and (not f.suggestions or f.suggestions[0].kind not in expect.fixes)
        for f in alarms
    )
    passed = on_part(finding.layer, expect.prefix) and fix in expect.fixes and not contradicted
    return passed, said


def check(report: Any, expect: Expect) -> None:
    """Raise :class:`WrongVerdict` naming what gradscope said when it is not ``expect``."""
    passed, said = judge(report, expect)
    if not passed:
        wanted = (
            "no warning or error"
            if expect.kind is None
            else f"{expect.kind} under {expect.prefix or 'any layer'!r}, first fix in "
            f"{sorted(expect.fixes)} ({expect.why})"
        )
        raise WrongVerdict(f"expected {wanted}; gradscope said: {said}")
