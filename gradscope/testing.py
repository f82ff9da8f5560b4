"""Assertions for a model's test suite: gradient health in one line, with a useful failure."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from gradscope import testing_state
from gradscope.diagnosis import diagnose
from gradscope.findings import Finding
from gradscope.report import Report
from gradscope.signals import layer_signals, recent


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
    report = diagnose(model, batch, loss_fn, steps=steps, **kw)
    testing_state.remember(report)
    return report


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


#: Where gradient profiles are kept, next to the test file.
SNAPSHOT_DIR = "__gradscope_snapshots__"


def gradient_profile(report: Report) -> dict[str, float]:
    """log10 of each layer's recent median gradient norm, in forward order."""
    import math

    profile = {}
    for signal in layer_signals(report.history) if report.history is not None else []:
        value = recent(signal.grad_norm, 10)
        profile[signal.name] = math.log10(value) if value > 0 else float("-inf")
    return profile


def _snapshot_path(snapshot: str, directory: str | Path | None) -> Path:
    import os
    import re

    if directory is not None:
        base = Path(directory)
    else:
        current = os.environ.get("PYTEST_CURRENT_TEST", "").split("::")[0]
        root = testing_state.rootpath() or Path.cwd()
        base = (root / current).parent if current else Path.cwd()
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", snapshot):
        raise ValueError(f"snapshot name {snapshot!r} may hold only letters, digits, _ . -")
    return base / SNAPSHOT_DIR / f"{snapshot}.json"


def assert_gradient_profile(
    model: torch.nn.Module,
    batch: Any,
    loss_fn: Callable,
    *,
    snapshot: str,
    steps: int = 5,
    tolerance: float = 0.5,
    directory: str | Path | None = None,
    **diagnose_options: Any,
) -> dict[str, float]:
    """Compare the per-layer gradient-norm profile with a stored snapshot.

    The first run (or ``pytest --gradscope-update-snapshots``) stores the profile in
    ``__gradscope_snapshots__/<snapshot>.json`` next to the test file.  Later runs fail
    when a layer's gradient norm moved by more than ``tolerance`` decades (0.5 = 3.2x),
    naming the layers that moved: a refactor that silently broke gradient flow.
    Seed torch before building the model so the profile is repeatable.
    """
    import json
    import math

    __tracebackhide__ = True
    report = _run(model, batch, loss_fn, steps, **diagnose_options)
    profile = gradient_profile(report)
    path = _snapshot_path(snapshot, directory)
    if testing_state.update_snapshots() or not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        stored = {"layers": list(profile), "log10_grad_norm": list(profile.values())}
        path.write_text(json.dumps(stored, indent=2) + "\n")
        return profile
    stored = json.loads(path.read_text())
    before = dict(zip(stored["layers"], stored["log10_grad_norm"], strict=True))
    if list(before) != list(profile):
        raise AssertionError(
            f"gradient profile {snapshot!r}: the layers changed "
            f"(stored {list(before)}, now {list(profile)}); if intended, run pytest with "
            "--gradscope-update-snapshots"
        )
    moved = []
    for name, now in profile.items():
        then = before[name]
        gap = abs(now - then) if math.isfinite(now) and math.isfinite(then) else math.inf
        if gap > tolerance:
            moved.append(f"  {name}: 10^{then:.2f} -> 10^{now:.2f} ({gap:.2f} decades)")
    if moved:
        raise AssertionError(
            f"gradient profile {snapshot!r} moved beyond {tolerance} decades in "
            f"{len(moved)} layer(s):\n" + "\n".join(moved) + "\nif intended, run pytest with "
            "--gradscope-update-snapshots"
        )
    return profile
