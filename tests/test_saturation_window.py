"""Saturation is judged on the end of the run, not on the warm-up's detail steps."""

from __future__ import annotations

import torch
from helpers import watch_loop
from torch import nn

import gradscope


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


class _TwoHeads(nn.Module):
    """A shared trunk with a multi-label sigmoid head (run first) and a class head."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU())
        self.tags = nn.Linear(64, 8)
        self.tag_prob = nn.Sigmoid()
        self.cls = nn.Linear(64, 5)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(x)
        return self.tag_prob(self.tags(h)), self.cls(h)


def test_a_confident_sigmoid_head_the_model_returns_is_its_output_though_another_head_runs_last():
    torch.manual_seed(0)
    model = _TwoHeads()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    tag_weights, class_weights = torch.randn(16, 8) * 5, torch.randn(16, 5)
    bce, ce = nn.functional.binary_cross_entropy, nn.functional.cross_entropy

    def data(k):
        x = torch.randn(64, 16, generator=torch.Generator().manual_seed(k % 16))
        return x, ((x @ tag_weights > 0).float(), (x @ class_weights).argmax(1))

    report = watch_loop(
        model, opt, data, 400, lambda out, y: bce(out[0], y[0]) + ce(out[1], y[1])
    )
    assert report.model_info.extra["model_outputs"] == ["cls", "tag_prob"]
    probabilities = model(data(0)[0])[0]
    assert float(((probabilities - 0.5).abs() > 0.49).float().mean()) > 0.5  # confident
    assert [f for f in report.findings if f.kind == "saturated_activation"] == [], report


def test_a_module_called_several_times_a_step_is_judged_by_its_median_call():
    """A discriminator-like net called on one real batch and two generated ones per step
    (a GAN's D step and G step): its tanh saturates on the generated samples only.  The
    definitions take the step's fraction as the median over calls, so the generated calls
    speak (generated held-out run 42669: 0.875 by the oracle; pooling all calls said 0.75,
    and the finding was info)."""
    torch.manual_seed(0)
    critic = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1))
    opt = torch.optim.SGD(critic.parameters(), lr=0.01)
    scope = gradscope.watch(critic, optimizer=opt)
    with scope:
        for step in range(12):
            g = torch.Generator().manual_seed(step)
            real = torch.randn(32, 8, generator=g) * 0.01  # no unit near an asymptote
            fake = torch.randn(32, 8, generator=g) * 1e4  # every unit at one
            opt.zero_grad()
            loss = critic(real).mean() - critic(fake).mean() + critic(fake).mean() ** 2
            scope.log_loss(loss)
            loss.backward()
            opt.step()
    report = scope.report()
    found = {f.layer: f for f in report.findings if f.kind == "saturated_activation"}
    assert "1" in found, report
    assert found["1"].evidence["saturated_fraction"] > 0.95  # pooled, it was about 2/3


def test_units_that_saturate_between_sparse_detail_steps_are_measured_as_they_do():
    """Inputs unscaled from step 27 of 40: the default cadence's detail steps in the run's
    second half are 20, 25, 30 and 35, two before and two after, so the median said 0.5.
    A share that moves by 0.25 between detail steps makes the next four steps detail
    steps (generated tuning run 5145, a sigmoid saturating from step ~28, was missed)."""
    model, opt = _tanh_mlp()

    def data(step):
        g = torch.Generator().manual_seed(step % 8)
        x = torch.randn(32, 8, generator=g)
        return (x * 1000.0 if step >= 27 else x), (x[:, 0] > 0).long()

    report = watch_loop(model, opt, data, steps=40)
    detail = [r.step for r in report.history.records if r.detail]
    assert {31, 32, 33, 34} <= set(detail), detail
    assert report.overhead["activity_shifts"] >= 1
    assert "fast change(s) of saturated or silent units took 4 more detail steps" in (
        report.summary()
    )
    (found,) = [f for f in report.findings if f.kind == "saturated_activation" and f.layer == "1"]
    assert found.evidence["saturated_fraction"] > 0.9 and found.severity == "error"
