"""benchmarks/tuning.py: a recorded tuning run judged again says what the live run said."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "tuning.py"


@pytest.fixture(scope="module")
def tuning():
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import tuning as module
    finally:
        sys.path.remove(str(SCRIPT.parent))
    return module


def test_collect_then_judge_prints_the_tables(tmp_path: Path) -> None:
    run = [sys.executable, str(SCRIPT)]
    collected = subprocess.run(
        [*run, "collect", "--dir", str(tmp_path), "--limit", "2"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "recorded 2 runs" in collected.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "run_000000.json.gz",
        "run_000005.json.gz",
    ]
    again = subprocess.run(
        [*run, "collect", "--dir", str(tmp_path), "--limit", "2"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "recorded 0 runs" in again.stdout  # resumable: nothing is recorded twice
    judged = subprocess.run(
        [*run, "judge", "--dir", str(tmp_path), "--show"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "2 recorded tuning runs" in judged.stdout
    assert "cadence `watch`: 2 runs" in judged.stdout
    assert "misses and false alarms (diagnose):" in judged.stdout


def test_judge_on_an_empty_folder_says_what_to_run(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "judge", "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"No recorded runs in {tmp_path}: run `tuning.py collect --dir {tmp_path}` first."
    )


def test_a_recorded_run_judged_again_matches_the_live_run(tuning, tmp_path: Path) -> None:
    from gradscope_scenarios.generated.score import evaluate

    seed = 7  # a loop RNN with a deep squash fault: vanishing findings in both cadences
    tuning._collect_one((seed, str(tmp_path)))
    path = tmp_path / "run_000007.json.gz"
    live = evaluate(seed)
    again = tuning.judged(path, {})
    assert again["label"] == live["label"]
    for cadence in ("watch", "diagnose"):
        assert again[cadence] == live[cadence]
    assert any(f["kind"] == "vanishing_gradient" for f in again["watch"])
