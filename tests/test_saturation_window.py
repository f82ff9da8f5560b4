"""Saturation is judged on the end of the run, not on the warm-up's detail steps."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import gradscope


def test_inputs_that_start_saturating_mid_run_are_judged_on_the_runs_second_half():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 3)
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with gradscope.watch(model, optimizer=opt) as scope:  # detail steps 0-4, 10, 20, 30
        for step in range(31):
            g = torch.Generator().manual_seed(step % 8)
            x = torch.randn(32, 8, generator=g)
            y = (x[:, 0] > 0).long()
            if step >= 8:
                x = x * 1000.0  # unscaled inputs from here on: the first tanh saturates
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            scope.log_loss(loss)
            loss.backward()
            opt.step()
    found = {f.layer: f for f in scope.report().findings if f.kind == "saturated_activation"}
    assert "1" in found, scope.report()
    # Steps 20 and 30 only (the run's second half): nearly every output at an asymptote.
    assert found["1"].evidence["saturated_fraction"] > 0.9
    assert found["1"].severity == "error"


def test_a_run_that_turned_non_finite_is_judged_on_its_last_finite_records():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 3)
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with gradscope.watch(model, optimizer=opt) as scope:  # detail steps 0-4, 10, 20, 30
        for step in range(41):
            g = torch.Generator().manual_seed(step % 8)
            x = torch.randn(32, 8, generator=g) * 1000.0  # the first tanh saturates
            if step == 25:
                x[0, 0] = float("nan")  # one bad batch: every weight is NaN from here on
            y = (x[:, 1] > 0).long()
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            scope.log_loss(loss)
            loss.backward()
            opt.step()
    found = {f.layer: f for f in scope.report().findings if f.kind == "saturated_activation"}
    # The NaN outputs of steps 30 and 40 say nothing about saturation: step 20 speaks.
    assert "1" in found, scope.report()
    assert found["1"].evidence["saturated_fraction"] > 0.9
