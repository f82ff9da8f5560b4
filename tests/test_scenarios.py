"""Detection quality on the labeled scenario suite: precision, recall, culprits, fixes.

Targets (issue "Detectors and fix suggestions"): precision and recall >= 0.95 for every
built-in kind, no warning or error on any healthy scenario, the nonfinite culprit named
in every case, and a first suggestion that truly helps in >= 90% of faulty scenarios.
"""

from __future__ import annotations

import pytest

from gradscope_scenarios.handwritten import KINDS, SCEN, fix_helps, plain, suite, watched


@pytest.fixture(scope="module")
def results():
    return {sc.name: watched(sc) for sc in suite()}


def test_the_suite_is_big_and_broad_enough():
    scenarios = suite()
    assert len(scenarios) >= 30
    assert sum(sc.healthy for sc in scenarios) >= 12
    assert {"mlp", "cnn", "rnn", "lstm", "transformer", "gan"} <= {sc.arch for sc in scenarios}
    for kind in KINDS:
        assert sum(kind in sc.expect for sc in scenarios) >= 2, kind


@pytest.mark.parametrize("name", sorted(SCEN))
def test_ground_truth_holds_without_gradscope(name):
    scenario = SCEN[name]
    assert scenario.truth is not None and scenario.truth(plain(scenario)), name


def test_precision_and_recall_per_kind(results):
    table = {kind: {"tp": 0, "fp": 0, "fn": 0} for kind in KINDS}
    for sc in suite():
        found = results[sc.name].report.kinds_at_least("warning")
        for kind in KINDS:
            if kind in sc.expect:
                table[kind]["tp" if kind in found else "fn"] += 1
            elif kind in found and kind not in sc.allow:
                table[kind]["fp"] += 1
    for kind, c in table.items():
        precision = c["tp"] / max(c["tp"] + c["fp"], 1)
        recall = c["tp"] / max(c["tp"] + c["fn"], 1)
        assert precision >= 0.95 and recall >= 0.95, (kind, c)


def test_no_warning_on_any_healthy_scenario(results):
    noisy = {
        sc.name: sorted(results[sc.name].report.kinds_at_least("warning"))
        for sc in suite()
        if sc.healthy
    }
    assert {k: v for k, v in noisy.items() if v} == {}


def test_findings_name_the_right_layer(results):
    for sc in suite():
        if sc.layer is None:
            continue
        layers = {
            f.layer for f in results[sc.name].report.at_least("warning") if f.kind in sc.expect
        }
        assert sc.layer in layers, (sc.name, layers)


def test_the_nonfinite_culprit_is_named_in_every_case(results):
    cases = [sc for sc in suite() if "nonfinite_gradient" in sc.expect]
    assert len(cases) >= 3
    for sc in cases:
        finding = next(
            f for f in results[sc.name].report.findings if f.kind == "nonfinite_gradient"
        )
        assert finding.layer == sc.layer, sc.name


def test_the_first_suggestion_truly_helps_in_90_percent(results):
    outcomes = {sc.name: fix_helps(sc, results[sc.name].report) for sc in suite() if not sc.healthy}
    helped = [name for name, (_, ok) in outcomes.items() if ok]
    assert len(helped) >= 0.9 * len(outcomes), {n: o for n, o in outcomes.items() if not o[1]}


def test_the_cheap_default_cadence_still_catches_every_kind():
    """watch()'s default (costlier statistics on 1 step in 10, paced by their cost after
    100 recorded steps) is not bought with blindness."""
    missed, alarms, culprits = [], [], {}
    for sc in suite():
        report = watched(sc, detail_every=None).report
        found = report.kinds_at_least("warning")
        missed += [(sc.name, kind) for kind in sc.expect - found]
        if sc.healthy and found - sc.allow:
            alarms.append((sc.name, sorted(found)))
        for f in report.findings:
            if f.kind == "nonfinite_gradient" and f.kind in sc.expect:
                culprits[sc.name] = (f.layer, sc.layer, f.step)
    assert missed == [] and alarms == []
    # The NaN origin too, found by replaying the step when it falls between detail steps.
    assert len(culprits) >= 3
    assert all(got == want for got, want, _ in culprits.values()), culprits
