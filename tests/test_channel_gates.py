"""Squeeze-excitation channel gates (MobileNetV3, EfficientNet, RegNet): their layers get a
small gradient by design and their sigmoid must stay a sigmoid, so gradscope judges them as
gates (a stranger session's healthy RegNet got a vanishing error on its gate convolutions,
with "replace the sigmoids by ReLU" as the fix)."""

from __future__ import annotations

import torch
from helpers import watch_loop
from torch import nn

import gradscope


class SqueezeExcitation(nn.Module):
    """x times a per-channel gate computed from x's spatial mean."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(channels, channels // 4, 1)
        self.act = nn.ReLU()
        self.expand = nn.Conv2d(channels // 4, channels, 1)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.expand(self.act(self.reduce(self.pool(x)))))


def _se_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        SqueezeExcitation(16),
        nn.Conv2d(16, 16, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 4),
    )


def _train(model: nn.Module, steps: int = 12) -> gradscope.Report:
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(32, 3, 8, 8, generator=g), torch.randint(0, 4, (32,), generator=g)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    return watch_loop(model, opt, lambda k: (x, y), steps)


def test_the_layers_from_the_squeeze_to_the_sigmoid_are_a_gate_and_the_main_path_is_not():
    report = _train(_se_net(), steps=2)
    gate = {"2.pool", "2.reduce", "2.act", "2.expand", "2.gate"}
    assert report.model_info.gate_layers() == gate
    assert "sigmoid" not in report.model_info.hidden_roles()


def test_dead_units_inside_a_gate_are_info_the_main_path_still_learns():
    model = _se_net()
    with torch.no_grad():
        model[2].reduce.bias.fill_(-20.0)  # every squeeze unit below zero for every image
    report = _train(model)
    (dead,) = [f for f in report.findings if f.kind == "dead_relu"]
    assert (dead.layer, dead.severity) == ("2.act", "info")
    assert "inside a channel gate (squeeze-excitation)" in dead.message
    assert not report.at_least("warning")
