"""Run generated scenarios through gradscope and score what it says against the oracle.

Two cadences: ``watch`` (``gradscope.watch(model, optimizer=..., scaler=...)`` with default
settings around the scenario's own loop, ``scope.log_loss(loss)`` every step; one scope per
optimizer in the two-optimizer GAN loop) and ``diagnose`` (``gradscope.diagnose`` with the
scenario's model, batches, loss and optimizer, where that signature fits).  A predicted
kind is a finding of severity warning or error.
"""

from __future__ import annotations

import math
import time
import warnings
from typing import Any

import torch

from gradscope_scenarios.generated.oracle import KINDS, label
from gradscope_scenarios.generated.space import Config, build, draw, layer_name

CADENCES = ("watch", "diagnose")
PREDICTED = ("warning", "error")


def _findings(report: Any, part: str) -> list[dict[str, Any]]:
    return [
        {
            "kind": f.kind,
            "layer": layer_name(part, f.layer or ""),
            "severity": f.severity,
            "step": f.step,
            "message": f.message,
        }
        for f in report.findings
        if f.severity in PREDICTED
    ]


def watch_reports(config: Config) -> dict[str, Any]:
    """Part -> the ``watch()`` report of that part, around the scenario's own loop."""
    import gradscope

    sc = build(config)
    scopes = {
        part: gradscope.watch(model, optimizer=sc.optimizers[part], scaler=sc.scaler)
        for part, model in sc.parts.items()
    }
    try:
        for step in range(config.steps):
            sc.train_step(step, lambda part, loss: scopes[part].log_loss(loss))
    finally:
        for scope in scopes.values():
            scope.detach()
    return {part: scope.report() for part, scope in scopes.items()}


def diagnose_report(config: Config) -> Any | None:
    """The ``diagnose()`` report of the scenario, or None where its signature does not fit."""
    import gradscope

    sc = build(config)
    args = sc.diagnose_args()
    if args is None:
        return None
    model, batches, loss_fn, optimizer = args
    return gradscope.diagnose(model, batches, loss_fn, optimizer=optimizer, steps=config.steps)


def watch_findings(reports: dict[str, Any]) -> list[dict[str, Any]]:
    """The warning/error findings of every part's report, layers named as the oracle names them."""
    out: list[dict[str, Any]] = []
    for part, report in reports.items():
        out += _findings(report, part)
    return out


def run_watch(config: Config) -> list[dict[str, Any]]:
    """The warning/error findings of ``watch()`` around the scenario's own loop."""
    return watch_findings(watch_reports(config))


def run_diagnose(config: Config) -> list[dict[str, Any]] | None:
    """The warning/error findings of ``diagnose()``, or None where it does not fit."""
    report = diagnose_report(config)
    return None if report is None else _findings(report, "model")


def evaluate(seed: int, cadences: tuple[str, ...] = CADENCES) -> dict[str, Any]:
    """Label run ``seed`` with the oracle and run it through gradscope."""
    torch.set_num_threads(1)
    config = draw(seed)
    times: dict[str, float] = {}
    t = time.perf_counter()
    lab = label(config)
    times["oracle"] = time.perf_counter() - t
    result: dict[str, Any] = {
        "seed": seed,
        "config": config.to_dict(),
        "short": config.short(),
        "label": lab.to_dict(),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for cadence in cadences:
            t = time.perf_counter()
            try:
                found = run_watch(config) if cadence == "watch" else run_diagnose(config)
                result[cadence] = found
            except Exception as exc:  # a crash in gradscope is a result too
                result[cadence] = None
                result[f"{cadence}_error"] = f"{type(exc).__name__}: {exc}"
            times[cadence] = time.perf_counter() - t
    result["seconds"] = {k: round(v, 3) for k, v in times.items()}
    return result


def _components(name: str) -> list[str]:
    return [c for c in name.split(".") if c]


def same_place(predicted: str, truth: str) -> bool:
    """Loose layer match: one module name is a dotted prefix of the other."""
    p, t = _components(predicted), _components(truth)
    n = min(len(p), len(t))
    return n > 0 and p[:n] == t[:n]


def same_part(predicted: str, truth: str) -> bool:
    """Loosest match: the same top-level module (or GAN player)."""
    p, t = _components(predicted), _components(truth)
    if p[:1] in (["G"], ["D"]) or t[:1] in (["G"], ["D"]):
        return p[:2] == t[:2] if len(p) > 1 and len(t) > 1 else p[:1] == t[:1]
    return bool(p) and bool(t) and p[0] == t[0]


def predicted_kinds(findings: list[dict[str, Any]]) -> dict[str, list[str]]:
    """kind -> layers gradscope named."""
    out: dict[str, list[str]] = {}
    for f in findings:
        out.setdefault(f["kind"], []).append(f["layer"])
    return out


def _ratio(a: int, b: int) -> float:
    return a / b if b else math.nan


def score(results: list[dict[str, Any]], cadence: str) -> dict[str, Any]:
    """Per-kind precision/recall, healthy runs with alarms, NaN culprits, micro P/R."""
    rows = [r for r in results if r.get(cadence) is not None]
    table: dict[str, dict[str, Any]] = {}
    for kind in KINDS:
        tp = fp = fn = place = part = 0
        for r in rows:
            truth = r["label"]["kinds"]
            pred = predicted_kinds(r[cadence])
            if kind in truth:
                if kind in pred:
                    tp += 1
                    place += any(same_place(p, t) for p in pred[kind] for t in truth[kind])
                    part += any(same_part(p, t) for p in pred[kind] for t in truth[kind])
                else:
                    fn += 1
            elif kind in pred and kind not in r["label"]["allow"]:
                fp += 1
        table[kind] = {
            "tp": tp,
            "fp": fp,
            "fn": fn,
            "precision": _ratio(tp, tp + fp),
            "recall": _ratio(tp, tp + fn),
            "layer_right": _ratio(place, tp),
            "part_right": _ratio(part, tp),
        }
    healthy = [r for r in rows if not r["label"]["kinds"]]
    alarms = [r for r in healthy if set(predicted_kinds(r[cadence])) - set(r["label"]["allow"])]
    culprit_runs = [
        r
        for r in rows
        if r["label"]["culprit"] and "nonfinite_gradient" in predicted_kinds(r[cadence])
    ]
    culprit_right = sum(
        any(
            same_place(layer, r["label"]["culprit"])
            for layer in predicted_kinds(r[cadence])["nonfinite_gradient"]
        )
        for r in culprit_runs
    )
    tp = sum(v["tp"] for v in table.values())
    fp = sum(v["fp"] for v in table.values())
    fn = sum(v["fn"] for v in table.values())
    return {
        "cadence": cadence,
        "runs": len(rows),
        "kinds": table,
        "healthy": len(healthy),
        "healthy_with_alarms": len(alarms),
        "nan_culprit_right": culprit_right,
        "nan_culprit_runs": len(culprit_runs),
        "micro_precision": _ratio(tp, tp + fp),
        "micro_recall": _ratio(tp, tp + fn),
        "crashes": sum(1 for r in results if f"{cadence}_error" in r),
    }


def errors(result: dict[str, Any], cadence: str) -> list[tuple[str, str]]:
    """(``miss``|``false alarm``, kind) of one run under ``cadence``."""
    found = result.get(cadence)
    if found is None:
        return []
    truth, allow = result["label"]["kinds"], set(result["label"]["allow"])
    pred = predicted_kinds(found)
    out = [("miss", k) for k in truth if k not in pred]
    out += [("false alarm", k) for k in pred if k not in truth and k not in allow]
    return out
