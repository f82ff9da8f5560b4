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
BUILTINS = {"vanishing", "exploding", "plots", "reference_models"}


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


def test_builtin_plugins_load_from_the_default_list():
    loaded = {info.name: info for info in plugins.list_plugins()}
    assert set(loaded) >= BUILTINS
    assert loaded["vanishing"].source == (
        f"gradscope {gradscope.__version__} (built-in: gradscope_plugins.vanishing)"
    )
    assert loaded["vanishing"].hooks == ["gradscope_detect", "gradscope_suggest"]


def test_builtin_detectors_load_with_the_entry_points_hidden(monkeypatch):
    """A checkout on PYTHONPATH or stale metadata has no entry points: still not "healthy"."""
    from importlib import metadata

    real = metadata.entry_points

    def hidden(**params):
        if params.get("group") == "gradscope":
            return metadata.EntryPoints(())
        return real(**params)

    monkeypatch.setattr(metadata, "entry_points", hidden)
    plugins.reset_plugin_manager()
    layers = []
    for _ in range(8):
        layers += [torch.nn.Linear(16, 16), torch.nn.Sigmoid()]
    model = torch.nn.Sequential(*layers, torch.nn.Linear(16, 3))
    report = gradscope.diagnose(model, batch_16(), torch.nn.functional.cross_entropy, steps=20)
    assert "vanishing_gradient" in report.kinds()


def test_with_every_detector_filtered_out_the_report_is_not_ok(monkeypatch):
    monkeypatch.setenv("GRADSCOPE_PLUGINS", "plots,html_report")
    plugins.reset_plugin_manager()
    report = _diagnose()
    assert not report.ok
    assert report.not_judged == [
        "no detector plugin is loaded, so nothing was checked (is GRADSCOPE_PLUGINS "
        "filtering them all out?)"
    ]
    assert "NOT JUDGED" in str(report)


def test_a_detector_that_raises_makes_the_report_not_ok():
    class Raises:
        @hookimpl
        def gradscope_detect(self, history, model_info, config):
            raise ZeroDivisionError("detector bug")

    with plugins.registered(Raises(), name="raises"):
        report = _diagnose()
    assert not report.ok
    assert report.not_judged == [
        "detector raises raised in gradscope_detect and did not judge this run "
        "(ZeroDivisionError: detector bug)"
    ]


def batch_16():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 16, generator=g)
    return x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long()


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
    # A typo is refused before any training step, naming the valid keys.
    with pytest.raises(ValueError) as typo:
        gradscope.diagnose(
            mlp(),
            batch(),
            torch.nn.functional.cross_entropy,
            steps=3,
            config={"vanishing": {"depth_ratoi": 1}},
        )
    assert str(typo.value) == (
        "Unknown threshold(s) depth_ratoi for plugin 'vanishing'; it knows constant_loss, "
        "constant_output, depth_ratio, depth_severe, grown_weights, guessing_discriminator, "
        "learned, model_time_ratio, plateau, severe_ratio, stall, starved_score, stuck_ratio, "
        "through_time, time_ratio, time_stall, window."
    )
    with pytest.raises(ValueError, match="Unknown plugin 'vanishng' in the threshold overrides"):
        gradscope.watch(mlp(), config={"vanishng": {"depth_ratio": 1e-4}})


def test_a_detector_whose_statistic_was_never_measured_is_named_not_judged():
    class NeedsMaxGrad:
        NEEDS = ("grad_max",)  # measured with full=True only

        @hookimpl
        def gradscope_detect(self, history, model_info, config):
            return []

    with plugins.registered(NeedsMaxGrad(), name="needs_max"):
        default = _diagnose()
        model = mlp()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        with gradscope.watch(model, optimizer=opt, full=True) as scope:
            for _ in range(3):
                opt.zero_grad()
                x, y = batch()
                torch.nn.functional.cross_entropy(model(x), y).backward()
                opt.step()
        full = scope.report()
    assert not default.ok
    assert default.not_judged == [
        "detector needs_max did not run: grad_max was never measured (it is measured with "
        "full=True only)"
    ]
    assert full.not_judged == []
