"""Judging: recorded statistics in, findings with suggestions out.

``Scope.report()``, ``diagnose()`` and ``gradscope report RUN.json --set key=value`` all
call :func:`judge`, so a saved run can be judged again with other thresholds.

A diagnostic tool must never say "healthy" when it did not look: every check that could
not run (no detector loaded, a detector that raised, a statistic a detector needs that was
never measured) is named in :attr:`Judgement.not_judged`, and a report carrying any of
them is not ``ok``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from gradscope.findings import Finding, Suggestion, sort_findings
from gradscope.history import History
from gradscope.modelinfo import ModelInfo
from gradscope.plugins import PluginRunner, detector_plugins, get_plugin_manager
from gradscope.report import Report
from gradscope.signals import shared_signals
from gradscope.statistics import DETAIL, EVERY_STEP, FULL_ONLY, STATISTICS, table_of

#: Module attribute with which a detector plugin names the statistics it reads.
NEEDS_ATTRIBUTE = "NEEDS"


@dataclass
class Judgement:
    """What judging a history produced."""

    findings: list[Finding] = field(default_factory=list)
    plugin_errors: list[dict[str, str]] = field(default_factory=list)
    not_judged: list[str] = field(default_factory=list)


def judge(
    history: History,
    model_info: ModelInfo,
    config: Mapping[str, Any] | None = None,
    runner: PluginRunner | None = None,
) -> Judgement:
    """Run every loaded detector on ``history``, then attach each finding's suggestions.

    ``runner`` keeps plugin isolation across calls (a plugin that raised stays disabled);
    a fresh one is made when omitted.
    """
    config = dict(config or {})
    validate_config(config)
    runner = runner or PluginRunner()
    judgement = Judgement()
    detectors = detector_plugins(runner.pm)
    if not detectors:
        judgement.not_judged.append(
            "no detector plugin is loaded, so nothing was checked (is GRADSCOPE_PLUGINS "
            "filtering them all out?)"
        )
    if not history.records:
        judgement.not_judged.append(
            "no training step was recorded, so nothing was judged (with an optimizer, "
            "call optimizer.step(); without one, scope.step(loss=loss) after backward)"
        )
        return _finish(judgement, runner)
    history.settle()
    _know_shapes(history, model_info)
    skipped = _unmeasured(history, detectors)
    judgement.not_judged.extend(skipped.values())
    runner.disabled.update(skipped)
    try:
        with shared_signals():
            results = runner.call(
                "gradscope_detect", history=history, model_info=model_info, config=config
            )
    finally:
        runner.disabled.difference_update(skipped)
    for result in results:
        judgement.findings.extend(result)
    failures = {error["plugin"]: error for error in runner.errors}
    for name in detectors:
        if name in runner.disabled and name in failures:
            error = failures[name]
            judgement.not_judged.append(
                f"detector {name} raised in {error['hook']} and did not judge this run "
                f"({error['error']})"
            )
    for finding in judgement.findings:
        finding.suggestions = suggestions_for(finding, model_info, runner)
    judgement.findings = sort_findings(judgement.findings)
    return _finish(judgement, runner)


def _finish(judgement: Judgement, runner: PluginRunner) -> Judgement:
    judgement.plugin_errors = list(runner.errors)
    return judgement


def suggestions_for(
    finding: Finding, model_info: ModelInfo, runner: PluginRunner
) -> list[Suggestion]:
    """The fixes every plugin proposes for ``finding``, best first, one per kind."""
    chosen: list[Suggestion] = []
    kinds: set[str] = set()
    for result in runner.call("gradscope_suggest", finding=finding, model_info=model_info):
        for suggestion in result:
            if suggestion.kind not in kinds:
                kinds.add(suggestion.kind)
                chosen.append(suggestion)
    return chosen


def _know_shapes(history: History, model_info: ModelInfo) -> None:
    """Fill the parameters' dimensions from ``model_info`` when the history lacks them (a
    run saved before histories kept them), so weight matrices are told from biases."""
    if len(history.param_ndims) == len(history.param_names):
        return
    shapes = model_info.param_shapes
    if all(name in shapes for name in history.param_names):
        history.param_ndims = [len(shapes[name]) for name in history.param_names]


def _unmeasured(history: History, detectors: dict[str, Any]) -> dict[str, str]:
    """Detector name -> why it cannot judge: a statistic it needs was never measured."""
    skipped = {}
    for name, plugin in detectors.items():
        needs = tuple(getattr(plugin, NEEDS_ATTRIBUTE, ()))
        unknown = [s for s in needs if s not in STATISTICS]
        if unknown:
            skipped[name] = (
                f"detector {name} needs {', '.join(unknown)}, which gradscope does not measure"
            )
            continue
        missing = [s for s in needs if not _measured(history, s)]
        if missing:
            why = {
                DETAIL: "no recorded step measured the detail statistics",
                FULL_ONLY: "it is measured with full=True only",
            }
            reasons = "; ".join(
                f"{s} was never measured ({why.get(STATISTICS[s].cadence, 'nothing recorded')})"
                for s in missing
            )
            skipped[name] = f"detector {name} did not run: {reasons}"
    return skipped


def _measured(history: History, statistic: str) -> bool:
    """Whether any kept record is of a kind that measures ``statistic`` (its cadence).

    A column that is NaN because the model has nothing to measure (no ReLU for the dead
    unit counts) was still looked at: that detector ran and found nothing to judge.
    """
    cadence = STATISTICS[statistic].cadence
    if cadence == EVERY_STEP:
        return bool(history.records)
    if cadence == DETAIL:
        return any(record.detail for record in history.records)
    column = STATISTICS[statistic].column
    table = table_of(STATISTICS[statistic])
    return any(
        any(not math.isnan(v) for v in getattr(record, table).get(column, ()))
        for record in history.records
    )


def known_thresholds() -> dict[str, dict[str, Any]]:
    """Plugin name -> its threshold defaults, for every loaded plugin that has thresholds."""
    pm = get_plugin_manager()
    known = {}
    for name, plugin in pm.list_name_plugin():
        defaults = getattr(plugin, "DEFAULTS", None)
        if isinstance(defaults, Mapping):
            known[getattr(plugin, "NAME", name)] = dict(defaults)
    return known


def validate_config(config: Mapping[str, Any] | None) -> None:
    """Raise a one-sentence ValueError for an unknown plugin or threshold name in ``config``.

    Called before training starts (by ``watch``) and before judging, so a typo never
    silently leaves a detector off or a default in force.
    """
    if not config:
        return
    known = known_thresholds()
    for plugin, overrides in config.items():
        if plugin not in known:
            raise ValueError(
                f"Unknown plugin {plugin!r} in the threshold overrides; plugins with "
                f"thresholds: {', '.join(sorted(known)) or '(none loaded)'}."
            )
        unknown = sorted(set(overrides or {}) - set(known[plugin]))
        if unknown:
            raise ValueError(
                f"Unknown threshold(s) {', '.join(unknown)} for plugin {plugin!r}; "
                f"it knows {', '.join(sorted(known[plugin]))}."
            )


def effective_thresholds(config: Mapping[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """Plugin name -> the thresholds in force: each loaded plugin's defaults with the
    overrides of ``config`` applied (what plots draw their guide lines from)."""
    merged = known_thresholds()
    for plugin, overrides in (config or {}).items():
        merged.setdefault(plugin, {}).update(overrides or {})
    return merged


def rejudge(report: Report, config: Mapping[str, Any]) -> Report:
    """Judge a (saved) report's statistics again with ``config`` laid over its overrides."""
    if report.history is None or report.model_info is None:
        raise ValueError(
            "This report was saved without the statistics and model description needed to "
            "judge it again; save it with report.to_json() from this gradscope version."
        )
    merged = {plugin: dict(values) for plugin, values in report.config.items()}
    for plugin, values in config.items():
        merged.setdefault(plugin, {}).update(values)
    judgement = judge(report.history, report.model_info, merged)
    return replace(
        report,
        findings=judgement.findings,
        plugin_errors=judgement.plugin_errors,
        not_judged=judgement.not_judged,
        config=merged,
    )
