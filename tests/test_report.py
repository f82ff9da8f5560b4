"""Report, Finding and Suggestion: ordering, verdict and the JSON round trip."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import batch, mlp
from torch import nn

import gradscope
from gradscope import Finding, Report, Suggestion
from gradscope.findings import sort_findings
from gradscope.report import SCHEMA_VERSION


def _finding(kind: str, severity: str, step: int) -> Finding:
    return Finding(
        kind=kind,
        layer="fc",
        severity=severity,
        step=step,
        message="m",
        evidence={"x": float("inf")},
        suggestions=[Suggestion("lower_lr", "t", "w", "code()")],
    )


def test_findings_are_sorted_most_severe_first_then_earliest():
    found = sort_findings(
        [
            _finding("a", "info", 0),
            _finding("b", "error", 9),
            _finding("c", "warning", 1),
            _finding("d", "error", 2),
        ]
    )
    assert [f.kind for f in found] == ["d", "b", "c", "a"]


def test_ok_is_false_only_with_an_error():
    assert Report(findings=[_finding("a", "warning", 0)]).ok
    assert not Report(findings=[_finding("a", "error", 0)]).ok


def test_bad_severity_is_refused_with_the_allowed_values():
    with pytest.raises(ValueError, match=r"one of \('info', 'warning', 'error'\)"):
        Finding(kind="k", layer=None, severity="fatal", step=0, message="m")


def test_json_round_trip_keeps_findings_history_and_schema_version():
    report = gradscope.diagnose(mlp(), batch(), torch.nn.functional.cross_entropy, steps=4)
    report.findings.append(_finding("custom", "warning", 1))
    text = report.to_json()
    data = json.loads(text)
    assert data["schema_version"] == SCHEMA_VERSION
    loaded = Report.from_json(text)
    assert loaded.to_dict() == report.to_dict()
    assert loaded.findings[-1].evidence["x"] == "inf"
    assert loaded.history.steps == report.history.steps
    assert torch.equal(loaded.history.grad_series("grad_l2"), report.history.grad_series("grad_l2"))


def test_from_json_refuses_what_is_not_a_report():
    with pytest.raises(
        ValueError, match="This is not a gradscope report: it has no schema_version."
    ):
        Report.from_json("{}")
    with pytest.raises(ValueError, match="newer than this gradscope understands"):
        Report.from_json(json.dumps({"schema_version": SCHEMA_VERSION + 1}))


def test_summary_names_the_layer_and_the_top_fix():
    report = Report(findings=[_finding("exploding_gradient", "error", 3)], model_name="Net")
    text = str(report)
    assert text.splitlines()[0] == "gradscope report for Net: 1 error"
    assert "[ERROR] exploding_gradient in fc (from step 3)" in text
    assert "fix (lower_lr): t" in text


def test_a_report_with_no_recorded_step_says_why():
    model = mlp()
    with gradscope.watch(model) as scope:
        pass
    report = scope.report()
    assert report.findings == []
    assert not report.ok  # it did not look: never "healthy"
    assert report.not_judged[0].startswith("no training step was recorded, so nothing")
    assert "NOT JUDGED" in str(report)


def test_a_fix_printed_for_several_layers_shows_its_code_once():
    """Constant initialisation makes every layer a finding with the same random_init code:
    the summary prints it once and points back to it."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU())
    model.append(nn.Linear(16, 3))
    for p in model.parameters():
        nn.init.constant_(p, 0.05)
    x, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
    report = gradscope.diagnose(model, (x, y), nn.functional.cross_entropy, steps=12)
    symmetric = [f for f in report.findings if f.kind == "symmetric_weights"]
    assert [f.layer for f in symmetric][:2] == ["0", "2"]
    text = report.summary()
    assert text.count("for module in model.modules():") == 1
    assert "(the same code as for 0 above)" in text


def test_diagnose_says_when_its_own_optimizer_judged_the_model():
    """Without optimizer=, diagnose trains a copy with plain SGD: a Transformer that barely
    moves under it in 30 steps looked broken to a stranger session (learns under AdamW).
    A report with a warning says which optimizer made it; the user's own recipe is not
    second-guessed, and a clean report carries no such note."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    for p in model.parameters():
        nn.init.constant_(p, 0.05)  # symmetric rows: a warning
    x, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
    own = gradscope.diagnose(model, (x, y), nn.functional.cross_entropy, steps=12)
    assert own.at_least("warning")
    assert own.notes[-1] == (
        "trained with diagnose's own SGD(lr=0.01) for 12 steps, as no optimizer was given: a "
        "loss that does not fall here may be that optimizer's doing (a Transformer barely "
        "moves under plain SGD in so few steps); pass optimizer= to judge your own recipe"
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    given = gradscope.diagnose(model, (x, y), nn.functional.cross_entropy, steps=12, optimizer=opt)
    assert not any("diagnose's own SGD" in note for note in given.notes)
    clean = gradscope.diagnose(mlp(), batch(), torch.nn.functional.cross_entropy, steps=4)
    assert not any("diagnose's own SGD" in note for note in clean.notes)
