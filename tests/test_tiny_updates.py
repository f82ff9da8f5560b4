"""A learning rate far too small is named (tiny_updates) with a larger rate as the fix,
which trial shows helps; a healthy rate, and a gradient that is itself tiny, are not."""

from __future__ import annotations

import warnings

import pytest
import torch
from helpers import five_class_batches
from torch import nn

import gradscope
from gradscope_plugins import fix_builders as fix

F = nn.functional


def _run(make_optimizer, steps: int = 60, scale: float = 1.0):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 5)
    )
    opt = make_optimizer(model.parameters())
    batches = five_class_batches()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with gradscope.watch(model, optimizer=opt) as scope:
            for step in range(steps):
                x, y = batches[step % len(batches)]
                opt.zero_grad()
                loss = scale * F.cross_entropy(model(x), y)
                scope.log_loss(loss)
                loss.backward()
                opt.step()
    return model, batches, scope.report()


def _tiny(report):
    return [f for f in report.findings if f.kind == "tiny_updates"]


def test_sgd_at_a_rate_far_too_small_is_told_to_raise_it_and_trial_agrees():
    model, batches, report = _run(lambda p: torch.optim.SGD(p, lr=1e-5, momentum=0.9))
    (finding,) = _tiny(report)
    assert (finding.layer, finding.severity) == ("4", "warning")
    assert finding.message.startswith("The weights barely move")
    first = finding.suggestions[0]
    assert first.kind == "raise_lr"
    assert first.settings["lr_factor"] == pytest.approx(1000.0)
    assert 'group["lr"] = 0.01' in first.code
    tried = gradscope.trial(model, batches, F.cross_entropy, report, steps=50)
    assert [(r.kind, r.verdict) for r in tried.results] == [("raise_lr", "helps")]


def test_adam_at_a_rate_far_too_small_is_named_too():
    _, _, report = _run(lambda p: torch.optim.Adam(p, lr=1e-6))
    (finding,) = _tiny(report)
    assert finding.suggestions[0].kind == "raise_lr"


def test_a_healthy_rate_stays_silent():
    _, _, report = _run(lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9))
    assert report.findings == []


def test_a_gradient_that_is_itself_tiny_is_not_blamed_on_the_rate():
    # A loss scaled by 1e-8 under SGD: the gradient is what is small, not the rate.
    _, _, report = _run(lambda p: torch.optim.SGD(p, lr=0.05), scale=1e-8)
    assert _tiny(report) == []


@pytest.mark.parametrize(
    ("optimizer", "lr", "ratio", "factor"),
    [
        ("SGD", 1e-5, 2.77e-6, 1000.0),  # up to SGD's typical 0.01
        ("Adam", 1e-6, 1e-8, 1000.0),  # up to Adam's default 1e-3
        ("Adam", 6e-4, 1e-7, 2.0),  # less than 2x below its default: 2x
        ("LBFGS", 1e-5, 2.77e-6, 200.0),  # no typical rate: 1e-3 / ratio, rounded down
    ],
)
def test_the_factor_goes_to_the_typical_rate_or_aims_at_a_thousandth(
    optimizer, lr, ratio, factor
):
    assert fix.raise_lr_factor(optimizer, lr, ratio) == pytest.approx(factor)


def test_tiny_steps_at_a_normal_rate_are_left_to_the_gradient_detectors():
    # A stranger session's case: 20 tanh layers at init std 0.01 under SGD lr 0.05; every
    # update is tiny because the gradient vanished, and the rate is a usual one.
    torch.manual_seed(4)
    layers: list[nn.Module] = []
    for fan_in in [16] + [32] * 19:
        linear = nn.Linear(fan_in, 32)
        nn.init.normal_(linear.weight, 0, 0.01)
        nn.init.zeros_(linear.bias)
        layers += [linear, nn.Tanh()]
    model = nn.Sequential(*layers, nn.Linear(32, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with gradscope.watch(model, optimizer=opt) as scope:
            for _ in range(40):
                x = torch.randn(64, 16, generator=g)
                opt.zero_grad()
                loss = F.cross_entropy(model(x), (x[:, :4]).argmax(1))
                scope.log_loss(loss)
                loss.backward()
                opt.step()
    kinds = [f.kind for f in scope.report().findings]
    assert "vanishing_gradient" in kinds and "tiny_updates" not in kinds
