"""Assertions for a model's test suite: gradient health in one line, with a useful failure."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from gradscope.diagnose import diagnose
from gradscope.report import Finding, Report


def _format_failure(headline: str, findings: list[Finding]) -> str:
    lines = [headline]
    for f in findings:
        lines.append(f"  [{f.severity}] {f.kind} in {f.layer or '-'} (step {f.step})")
        lines.append(f"    {f.message}")
        numbers = {
            k: v
            for k, v in f.evidence.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        if numbers:
            shown = ", ".join(f"{k}={v:.3g}" for k, v in list(numbers.items())[:4])
            lines.append(f"    evidence: {shown}")
        if f.suggestions:
            s = f.suggestions[0]
            lines.append(f"    top fix ({s.kind}): {s.title}")
            lines.extend(f"        {line}" for line in s.code.splitlines())
    return "\n".join(lines)


def check_report(
    report: Report,
    *,
    kinds: Iterable[str] | None = None,
    ignore: Iterable[str] = (),
    fail_on: str = "warning",
    what: str = "gradients are not healthy",
) -> None:
    """Raise AssertionError listing the findings of ``kinds`` at or above ``fail_on``."""
    __tracebackhide__ = True  # pytest shows the findings, not this frame
    wanted = set(kinds) if kinds is not None else None
    skipped = set(ignore)
    bad = [
        f
        for f in report.at_least(fail_on)
        if (wanted is None or f.kind in wanted) and f.kind not in skipped and f.layer not in skipped
    ]
    if bad:
        raise AssertionError(_format_failure(f"{report.model_name}: {what}", bad))


def _run(model: torch.nn.Module, batch: Any, loss_fn: Callable, steps: int, **kw: Any) -> Report:
    return diagnose(model, batch, loss_fn, steps=steps, **kw)


def assert_healthy_gradients(
    model: torch.nn.Module,
    batch: Any,
    loss_fn: Callable,
    *,
    steps: int = 5,
    ignore: Iterable[str] = (),
    fail_on: str = "warning",
    **diagnose_options: Any,
) -> Report:
    """Train a copy of ``model`` for ``steps`` steps and fail on any finding.

    ``ignore`` takes finding kinds or layer names.  Returns the report when healthy.
    """
    __tracebackhide__ = True
    report = _run(model, batch, loss_fn, steps, **diagnose_options)
    check_report(report, ignore=ignore, fail_on=fail_on)
    return report


def _single_kind(kind: str, what: str) -> Callable[..., Report]:
    def check(
        model: torch.nn.Module,
        batch: Any,
        loss_fn: Callable,
        *,
        steps: int = 5,
        fail_on: str = "warning",
        **diagnose_options: Any,
    ) -> Report:
        __tracebackhide__ = True
        report = _run(model, batch, loss_fn, steps, **diagnose_options)
        check_report(report, kinds={kind}, fail_on=fail_on, what=what)
        return report

    check.__name__ = f"assert_no_{kind}"
    check.__doc__ = f"Train a copy of ``model`` for ``steps`` steps and fail if {what}."
    return check


assert_no_vanishing = _single_kind("vanishing_gradient", "gradients vanish")
assert_no_exploding = _single_kind("exploding_gradient", "gradients explode")
assert_finite_gradients = _single_kind("nonfinite_gradient", "gradients are not finite")
assert_all_parameters_get_gradients = _single_kind(
    "no_gradient", "some parameters never get a gradient"
)
