"""A typo in the configuration fails before training; a verdict never judged is not "healthy"."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

import gradscope
from gradscope import plugins
from gradscope.cli import main
from gradscope.models import builtin_specs

torch.set_num_threads(1)


def mlp() -> torch.nn.Sequential:
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 6, generator=g)
    return x, (x[:, 0] > 0).long()


def invoke(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.fixture
def relu_ckpt(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "relu.pt"
    torch.save(builtin_specs()["deep_relu_mlp"].factory().state_dict(), path)
    return path


def test_a_threshold_typo_on_the_cli_is_one_sentence_naming_the_valid_keys(relu_ckpt):
    result = invoke(
        "check", str(relu_ckpt), "--model", "deep_relu_mlp", "--steps", "2",
        "--set", "vanishing.depth_ration=1e-4",
    )
    assert result.exit_code == 2
    assert result.output.startswith(
        "Error: Unknown threshold(s) depth_ration for plugin 'vanishing'; it knows "
        "constant_loss, constant_output, depth_ratio,"
    )
    assert result.output.count("\n") == 1


def test_a_plugin_name_typo_on_the_cli_is_refused(relu_ckpt):
    result = invoke(
        "check", str(relu_ckpt), "--model", "deep_relu_mlp", "--steps", "2",
        "--set", "vanishng.depth_ratio=1e-4",
    )
    assert result.exit_code == 2
    assert result.output.startswith("Error: Unknown plugin 'vanishng' in the threshold overrides;")
    assert "vanishing" in result.output


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"vanishing": {"depth_ration": 1}}, r"Unknown threshold\(s\) depth_ration"),
        ({"vanishng": {"depth_ratio": 1}}, "Unknown plugin 'vanishng'"),
    ],
)
def test_watch_and_diagnose_refuse_a_config_typo_before_training(config, message):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match=message):
        gradscope.watch(model, optimizer=opt, config=config)
    with pytest.raises(ValueError, match=message):
        gradscope.diagnose(model, batch(), torch.nn.functional.cross_entropy, steps=2,
                           config=config)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert not model._forward_hooks  # nothing left attached


class _BrokenDetector:
    @gradscope.hookimpl
    def gradscope_detect(self, history, model_info, config):
        raise RuntimeError("boom")


def test_a_detector_that_raised_makes_the_cli_exit_2(relu_ckpt):
    with plugins.registered(_BrokenDetector(), name="broken"):
        result = invoke("check", str(relu_ckpt), "--model", "deep_relu_mlp", "--steps", "2")
    assert result.exit_code == 2
    assert "Error: not judged: detector broken raised in gradscope_detect" in result.output


def test_no_detector_loaded_is_not_healthy(relu_ckpt, monkeypatch):
    monkeypatch.setenv("GRADSCOPE_PLUGINS", "fixes,reference_models")
    plugins.reset_plugin_manager()
    result = invoke("check", str(relu_ckpt), "--model", "deep_relu_mlp", "--steps", "2")
    assert result.exit_code == 2
    assert "Error: not judged: no detector plugin is loaded" in result.output
