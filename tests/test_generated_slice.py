"""A fixed slice of the generated scenarios: oracle independence, determinism, the split,
and gradscope's current score on the slice (expectations the lead will tighten).

Run: python -m pytest -q -m generated tests/test_generated_slice.py (the marker is
registered in pyproject.toml and deselected by default).
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from gradscope_scenarios.generated import split
from gradscope_scenarios.generated.oracle import KINDS, label
from gradscope_scenarios.generated.score import evaluate, score
from gradscope_scenarios.generated.space import draw

pytestmark = pytest.mark.generated

#: 13 tuning and 17 held-out runs: every finding kind, healthy runs of most families,
#: current hits, misses and false alarms (cheap runs: about 30 s of work in all).
SLICE = (
    21, 31, 32, 37, 143, 152, 179, 283, 292, 352, 354, 358, 371, 382, 384,
    396, 399, 424, 440, 478, 492, 502, 525, 526, 567, 578, 586, 595, 609, 632,
)  # fmt: skip

#: What the oracle labels on the slice (pins the oracle: a change shows up here).
SLICE_LABELS: dict[int, list[str]] = {
    21: [], 31: ["symmetric_weights"], 32: [], 37: [],
    143: ["nonfinite_gradient"], 152: ["vanishing_gradient"], 179: [], 283: [],
    292: ["exploding_gradient", "nonfinite_gradient"], 352: [], 354: [], 358: [], 371: [],
    382: ["exploding_gradient", "vanishing_gradient"], 384: [], 396: [], 399: ["dead_relu"],
    424: ["symmetric_weights"], 440: [],
    478: ["exploding_gradient", "nonfinite_gradient", "vanishing_gradient"],
    492: ["saturated_activation"], 502: [], 525: ["no_gradient"], 526: ["vanishing_gradient"],
    567: ["saturated_activation", "vanishing_gradient"], 578: [],
    586: ["saturated_activation", "vanishing_gradient"], 595: ["exploding_gradient"],
    609: ["vanishing_gradient"], 632: ["dead_relu", "vanishing_gradient"],
}  # fmt: skip

#: Labels that differ between CPUs: run 292 (a GradScaler, the loss times 1e4, non-finite
#: from step ~36 on: a chaotic run) is labelled vanishing too on an AMD EPYC with AVX-512
#: (whose float32 kernels sum in another order) and not on the CPU the pin was written
#: on; the rest of its label holds on both.
CPU_DEPENDENT: dict[int, set[str]] = {292: {"vanishing_gradient"}}

_ZERO = dict.fromkeys(KINDS, 0)

#: gradscope's score on the slice as last measured (the session's final detectors), per
#: cadence: lower bounds on true positives and NaN culprits named, upper bounds on false
#: positives and on healthy runs with an alarm.  Tighten them as gradscope improves.
EXPECT: dict[str, dict[str, object]] = {
    "watch": {
        "tp": {
            "vanishing_gradient": 5,
            "exploding_gradient": 3,
            "nonfinite_gradient": 3,
            "dead_relu": 2,
            # Run 492 reads 78.6% saturated on the denser short-run cadence (was 82.6%;
            # the oracle 82.4%, line 80%): a borderline sample, traded on the tuning part
            # for run 761, which the same cadence now names.
            "saturated_activation": 2,
            "no_gradient": 1,
            "symmetric_weights": 2,
        },
        "fp": dict(_ZERO),
        "healthy_with_alarms": 0,
        "nan_culprit_right": 2,
    },
    "diagnose": {
        "tp": {
            "vanishing_gradient": 2,
            "exploding_gradient": 1,
            "nonfinite_gradient": 1,
            "dead_relu": 2,
            "saturated_activation": 1,
            "no_gradient": 0,
            "symmetric_weights": 1,
        },
        "fp": dict(_ZERO),
        "healthy_with_alarms": 0,
        "nan_culprit_right": 1,
    },
}


@pytest.fixture(scope="module")
def slice_results() -> list[dict]:
    torch.set_num_threads(1)
    return [evaluate(seed) for seed in SLICE]


def test_oracle_does_not_import_gradscope() -> None:
    code = (
        "import sys, torch\n"
        "torch.set_num_threads(1)\n"
        "from gradscope_scenarios.generated import oracle, space, split\n"
        "lab = oracle.label(space.draw(2))\n"
        "assert lab.kinds, lab\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('gradscope', 'gradscope_plugins'))\n"
        "print(bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("seed", [2, 5, 33])
def test_same_seed_same_config_and_label(seed: int) -> None:
    assert draw(seed) == draw(seed)
    first, second = label(draw(seed)).to_dict(), label(draw(seed)).to_dict()
    assert first == second


def test_split_has_no_overlap_and_heldout_cells_stay_out_of_tuning() -> None:
    tuning = split.seeds("tuning")
    heldout = split.seeds("heldout")
    assert len(tuning) >= 300 and len(heldout) >= 300
    assert not set(tuning) & set(heldout)
    tuning_cells = {split.cell(draw(s)) for s in tuning}
    heldout_only = {split.cell(draw(s)) for s in heldout if split.heldout_cell(split.cell(draw(s)))}
    assert len(heldout_only) >= 20
    assert not tuning_cells & heldout_only


def test_oracle_labels_on_the_slice(slice_results: list[dict]) -> None:
    got = {
        r["seed"]: sorted(set(r["label"]["kinds"]) - CPU_DEPENDENT.get(r["seed"], set()))
        for r in slice_results
    }
    assert got == SLICE_LABELS
    assert {k for r in slice_results for k in r["label"]["kinds"]} == set(KINDS)


@pytest.mark.parametrize("cadence", ["watch", "diagnose"])
def test_gradscope_score_on_the_slice(slice_results: list[dict], cadence: str) -> None:
    s = score(slice_results, cadence)
    expect = EXPECT[cadence]
    print(s)
    assert s["crashes"] == 0
    for kind in KINDS:
        assert s["kinds"][kind]["tp"] >= expect["tp"][kind], (kind, s["kinds"][kind])
        assert s["kinds"][kind]["fp"] <= expect["fp"][kind], (kind, s["kinds"][kind])
    assert s["healthy_with_alarms"] <= expect["healthy_with_alarms"]
    assert s["nan_culprit_right"] >= expect["nan_culprit_right"]


def test_the_oracle_does_not_call_huge_distinct_rows_copies() -> None:
    """Finite float32 weights near 1e37 (a run about to blow up) have row norms that
    overflow float32: an infinite tolerance once made every row a copy of every other."""
    from gradscope_scenarios.generated.oracle import _identical_rows

    rows = torch.tensor([[1e37, -2e37], [3e37, 1e37], [-1e37, 2e37]])
    assert _identical_rows(rows) == 0.0
    assert _identical_rows(torch.zeros(4, 3)) == 1.0


def test_oracle_allows_nonfinite_when_a_scaler_skipped_a_quarter_of_the_steps() -> None:
    """Held-out run 40641 (spent draw 20720): a GradScaler skipped 23-24 of 50 steps, every
    one from step 26 on.  Below the bound (half the steps) but above half of it: like every
    fraction between half a bound and the bound, reporting it is not a false alarm."""
    torch.set_num_threads(1)
    lab = label(draw(40641))
    assert 50 / 4 <= lab.numbers["skipped_steps"] < 50 / 2
    assert "nonfinite_gradient" not in lab.kinds
    assert "nonfinite_gradient" in lab.allow
