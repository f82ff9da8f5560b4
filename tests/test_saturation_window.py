"""Saturation is judged on the end of the run, not on the warm-up's detail steps."""

from __future__ import annotations

import torch
from helpers import watch_loop
from torch import nn


def _tanh_mlp() -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 3)
    )
    return model, torch.optim.SGD(model.parameters(), lr=0.01)


def test_inputs_that_start_saturating_mid_run_are_judged_on_the_runs_second_half():
    model, opt = _tanh_mlp()

    def data(step):
        g = torch.Generator().manual_seed(step % 8)
        x = torch.randn(32, 8, generator=g)
        y = (x[:, 0] > 0).long()
        if step >= 8:
            x = x * 1000.0  # unscaled inputs from here on: the first tanh saturates
        return x, y

    report = watch_loop(model, opt, data, steps=31)  # detail steps 0-4, 10, 20, 30
    found = {f.layer: f for f in report.findings if f.kind == "saturated_activation"}
    assert "1" in found, report
    # Steps 20 and 30 only (the run's second half): nearly every output at an asymptote.
    assert found["1"].evidence["saturated_fraction"] > 0.9
    assert found["1"].severity == "error"


def test_a_run_that_turned_non_finite_is_judged_on_its_last_finite_records():
    model, opt = _tanh_mlp()

    def data(step):
        g = torch.Generator().manual_seed(step % 8)
        x = torch.randn(32, 8, generator=g) * 1000.0  # the first tanh saturates
        if step == 25:
            x[0, 0] = float("nan")  # one bad batch: every weight is NaN from here on
        return x, (x[:, 1] > 0).long()

    report = watch_loop(model, opt, data, steps=41)  # detail steps 0-4, 10, 20, 30, 40
    found = {f.layer: f for f in report.findings if f.kind == "saturated_activation"}
    # The NaN outputs of steps 30 and 40 say nothing about saturation: step 20 speaks.
    assert "1" in found, report
    assert found["1"].evidence["saturated_fraction"] > 0.9
