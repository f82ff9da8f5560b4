"""The plugin system: entry points, in-process plugins, isolation of a failing plugin."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import batch, mlp

import gradscope
from gradscope import Finding, hookimpl, plugins
from gradscope.hookspecs import HOOK_NAMES

README = Path(__file__).resolve().parents[1] / "README.md"
BUILTINS = {"vanishing", "exploding", "fixes", "plots", "reference_models"}


class FlagEverything:
    @hookimpl
    def gradscope_detect(self, history, model_info, config):
        return [
            Finding(
                kind="custom_kind",
                layer=model_info.layers[0].name,
                severity="warning",
                step=history.steps[0],
                message="seen by a throwaway plugin",
                evidence={"layers": len(model_info.layers)},
            )
        ]


class Broken:
    @hookimpl
    def gradscope_detect(self, history, model_info, config):
        raise ZeroDivisionError("plugin bug")

    @hookimpl
    def gradscope_on_step(self, record, scope):
        raise RuntimeError("live plugin bug")


def _diagnose():
    return gradscope.diagnose(mlp(), batch(), torch.nn.functional.cross_entropy, steps=3)


def test_builtin_plugins_load_through_entry_points():
    loaded = {info.name: info for info in plugins.list_plugins()}
    assert set(loaded) >= BUILTINS
    assert loaded["vanishing"].source.startswith("gradscope ")
    assert loaded["vanishing"].hooks == ["gradscope_detect"]


def test_a_registered_plugin_object_adds_its_finding():
    with plugins.registered(FlagEverything(), name="throwaway"):
        report = _diagnose()
    custom = [f for f in report.findings if f.kind == "custom_kind"]
    assert len(custom) == 1
    assert custom[0].layer == "0"
    assert custom[0].message == "seen by a throwaway plugin"
    assert "custom_kind" not in _diagnose().kinds()


def test_a_plugin_that_raises_is_named_disabled_and_training_goes_on():
    with plugins.registered(Broken(), name="broken"):
        report = _diagnose()
    assert report.history.recorded == 3
    assert report.plugin_errors[0] == {
        "plugin": "broken",
        "hook": "gradscope_on_step",
        "error": "RuntimeError: live plugin bug",
    }
    # disabled after its first failure: its detect hook never ran
    assert len(report.plugin_errors) == 1
    assert "plugin broken failed in gradscope_on_step and was disabled" in str(report)


def test_stop_training_from_a_live_plugin_is_not_swallowed():
    class Stopper:
        @hookimpl
        def gradscope_on_step(self, record, scope):
            raise gradscope.StopTraining("loss is NaN")

    with plugins.registered(Stopper()), pytest.raises(gradscope.StopTraining):
        _diagnose()


@pytest.mark.parametrize(
    ("value", "expected"), [("", set()), ("vanishing,plots", {"vanishing", "plots"})]
)
def test_env_var_limits_which_plugins_load(monkeypatch, value, expected):
    monkeypatch.setenv("GRADSCOPE_PLUGINS", value)
    plugins.reset_plugin_manager()
    assert {info.name for info in plugins.list_plugins()} == expected


def test_plugins_command_lists_what_is_loaded_in_a_real_process():
    result = subprocess.run(
        [sys.executable, "-m", "gradscope.cli", "plugins"],
        capture_output=True,
        text=True,
        check=True,
    )
    for name in BUILTINS:
        assert re.search(rf"^{name}  \[gradscope ", result.stdout, re.M)


def test_every_hookspec_is_documented_in_the_readme():
    section = README.read_text().split("## Writing a plugin", 1)[1].split("\n## ", 1)[0]
    for name in HOOK_NAMES:
        assert f"`{name}" in section, name


def test_threshold_overrides_reach_the_plugin_and_typos_are_refused():
    strict = gradscope.diagnose(
        mlp(),
        batch(),
        torch.nn.functional.cross_entropy,
        steps=3,
        config={"vanishing": {"depth_ratio": 0.999}},
    )
    assert "vanishing_gradient" in strict.kinds()
    typo = gradscope.diagnose(
        mlp(),
        batch(),
        torch.nn.functional.cross_entropy,
        steps=3,
        config={"vanishing": {"depth_ratoi": 1}},
    )
    assert typo.plugin_errors[0]["plugin"] == "vanishing"
    assert (
        "Unknown threshold(s) ['depth_ratoi'] for plugin 'vanishing'"
        in typo.plugin_errors[0]["error"]
    )
