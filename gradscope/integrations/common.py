"""What the framework callbacks share: finding the optimizer, the closure, saving, failing.

Nothing here imports a training framework; ``lightning.py`` and ``transformers.py``
call these helpers from their callbacks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from gradscope.errors import GradscopeError
from gradscope.findings import SEVERITIES, Finding
from gradscope.report import Report

#: Sub-directory of the run's output directory that the reports go to.
REPORT_SUBDIR = "gradscope"


def check_fail_on(fail_on: str | None) -> str | None:
    """Validate a ``fail_on`` severity (``None`` never fails)."""
    if fail_on is not None and fail_on not in SEVERITIES:
        raise ValueError(f"fail_on must be one of {SEVERITIES} or None, got {fail_on!r}.")
    return fail_on


def unwrap_optimizer(optimizer: Any) -> torch.optim.Optimizer | None:
    """The ``torch.optim.Optimizer`` inside framework wrappers (accelerate, Lightning).

    Wrappers keep the real optimizer in ``.optimizer`` (accelerate's ``AcceleratedOptimizer``,
    Lightning's ``LightningOptimizer``) or ``._optimizer``; the step hooks must go on it,
    because that is the object whose ``step()`` finally runs.
    """
    for _ in range(8):  # wrappers nest a few deep at most
        inner = getattr(optimizer, "optimizer", None) or getattr(optimizer, "_optimizer", None)
        if inner is None or inner is optimizer:
            break
        optimizer = inner
    return optimizer if isinstance(optimizer, torch.optim.Optimizer) else None


def module_for(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[str, Any]:
    """The smallest sub-module of ``model`` holding every parameter ``optimizer`` trains.

    Returns ``(qualified name, module)``; ``""`` and ``model`` itself when no smaller
    module holds them all (a GAN's generator optimizer gets ``"generator"``).
    """
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    inside = {id(p) for p in model.parameters()} & held
    best: tuple[int, str, Any] = (sum(p.numel() for p in model.parameters()), "", model)
    if not inside:
        return "", model
    for name, module in model.named_modules():
        ids = {id(p) for p in module.parameters()}
        if inside <= ids:
            size = sum(p.numel() for p in module.parameters())
            if size < best[0]:
                best = (size, name, module)
    return best[1], best[2]


def steps_with_torch_closure(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer.step`` is a ``torch.optim`` one: it calls the closure first.

    Only then may the closure be run ahead of the step (see :func:`closure_first_hook`).
    """
    step = getattr(type(optimizer), "step", None)
    return str(getattr(step, "__module__", "")).startswith("torch.optim")


def closure_first_hook(optimizer: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
    """An optimizer step pre-hook that runs ``step(closure)``'s closure before the step.

    Lightning calls ``optimizer.step(closure=...)`` with forward and backward inside
    the closure, and torch runs step pre-hooks *before* the step calls it: at that
    moment the gradients are last step's.  This hook, registered ahead of gradscope's,
    calls the closure (forward, backward, Lightning's ``on_before_optimizer_step`` and
    gradient clipping) and hands the step a closure that returns that result on its
    first call and evaluates the real closure on later calls (LBFGS).  Every
    ``torch.optim`` optimizer calls its closure first, so the step computes the same.
    """
    args = tuple(args)
    if "closure" in kwargs and kwargs["closure"] is not None:
        closure = kwargs["closure"]
    elif len(args) > 1 and callable(args[1]):
        closure = args[1]
    else:
        return None
    with torch.enable_grad():
        result = closure()
    replay = _FirstCallCached(closure, result)
    if "closure" in kwargs:
        return args, {**kwargs, "closure": replay}
    return (args[0], replay, *args[2:]), kwargs


class _FirstCallCached:
    """A closure whose first call returns a result computed already; later calls run it."""

    def __init__(self, closure: Callable[[], Any], result: Any) -> None:
        self.closure = closure
        self.result = result
        self.used = False

    def __call__(self) -> Any:
        if not self.used:
            self.used = True
            return self.result
        return self.closure()


def finding_line(finding: Finding) -> str:
    """One line a person can act on: severity, kind, layer, step, message and the top fix."""
    where = f" in {finding.layer}" if finding.layer else ""
    at = f" (from step {finding.step})" if finding.step is not None else ""
    fix = f" Fix: {finding.suggestions[0].title}" if finding.suggestions else ""
    return f"gradscope: [{finding.severity}] {finding.kind}{where}{at}: {finding.message}{fix}"


def metrics(report: Report) -> dict[str, float]:
    """Scalars for a framework's metric logger: findings per severity and ``ok``."""
    counts = {
        f"gradscope/{s}s": float(sum(f.severity == s for f in report.findings)) for s in SEVERITIES
    }
    counts["gradscope/ok"] = 1.0 if report.ok else 0.0
    return counts


def save_report(report: Report, outdir: str | Path, plot: bool = True) -> list[Path]:
    """Write ``report.json`` and, with ``plot``, every rendered view (``dashboard.png``,
    ``report.html``, ...) into ``outdir``."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    path = outdir / "report.json"
    path.write_text(report.to_json(), encoding="utf-8")
    return [path, *(report.plot(outdir) if plot else [])]


def report_dirs(base: str | Path, names: Iterable[str]) -> list[Path]:
    """``base`` itself for one scope; ``base/<name>`` for each of several."""
    names = list(names)
    if len(names) == 1:
        return [Path(base)]
    return [Path(base) / (name or "model") for name in names]


def failing(reports: Iterable[Report], fail_on: str | None) -> list[Finding]:
    """Findings at or above ``fail_on`` across ``reports`` (none when ``fail_on`` is None)."""
    if fail_on is None:
        return []
    return [f for report in reports for f in report.at_least(fail_on)]


def failure(findings: list[Finding], fail_on: str, where: Iterable[Path]) -> GradscopeError:
    """The error a callback raises when findings reach ``fail_on``."""
    lines = "\n".join(f"  {finding_line(f)}" for f in findings)
    saved = ", ".join(str(p) for p in where)
    return GradscopeError(
        f"gradscope found {len(findings)} problem(s) at or above {fail_on!r}:\n{lines}\n"
        f"Reports: {saved}"
    )
