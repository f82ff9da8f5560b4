"""Every example runs (so they never rot), as Cockpit does with runpy."""

from __future__ import annotations

import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SCRIPTS = sorted(p.name for p in EXAMPLES.glob("*.py") if not p.name.startswith("test_"))


def test_the_examples_are_all_there():
    expected = {
        "train_loop.py",
        "fix_a_problem.py",
        "custom_plugin.py",
        "test_gradients.py",
        "checkpoint_cli.sh",
    }
    assert expected <= {p.name for p in EXAMPLES.iterdir()}


@pytest.mark.parametrize("script", SCRIPTS)
def test_example_script_runs(script, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [script, "--out", str(tmp_path / "out")])
    runpy.run_path(str(EXAMPLES / script), run_name="__main__")
    assert "gradscope report for" in capsys.readouterr().out


def test_example_test_file_passes_under_pytest(pytester):
    pytester.makepyfile(test_gradients=(EXAMPLES / "test_gradients.py").read_text())
    pytester.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=4)


def test_checkpoint_cli_example_runs(tmp_path):
    bash = shutil.which("bash")
    result = subprocess.run(
        [bash, str(EXAMPLES / "checkpoint_cli.sh"), str(tmp_path)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "report for cnn: healthy" in result.stdout
    assert (tmp_path / "cnn.html").exists()
    assert (tmp_path / "plots" / "dashboard.png").exists()
