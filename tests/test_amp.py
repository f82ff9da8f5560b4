"""Mixed precision: CPU autocast (bfloat16, float16) and torch.amp.GradScaler."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import batch
from torch import nn

import gradscope
from gradscope import amp
from gradscope.models import builtin_specs

torch.set_num_threads(1)


class Log(nn.Module):
    """log(x): -inf where x is 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(x)


class SometimesLog(nn.Module):
    """log(x) while ``on`` (-inf where x is 0), else x."""

    on = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(x) if self.on else x


def _relu_mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 3)
    )


def _train(model, steps, dtype=None, scaler=None, **options):
    """A seeded classification loop under autocast(dtype) with an optional GradScaler."""
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with gradscope.watch(model, optimizer=opt, scaler=scaler, **options) as scope:
        for k in range(steps):
            x, y = batch(seed=k)
            opt.zero_grad()
            with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                loss = nn.functional.cross_entropy(model(x), y)
            scope.log_loss(loss)
            if scaler is None:
                loss.backward()
                opt.step()
            else:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
    return scope


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_autocast_healthy_model_has_no_finding_and_fp32_norms(dtype):
    fp32 = _train(_relu_mlp(), 8)
    half = _train(_relu_mlp(), 8, dtype=dtype)
    report = half.report()
    assert report.findings == [], report
    for a, b in zip(half.history.records, fp32.history.records, strict=True):
        for x, y in zip(a.grads["grad_l2"], b.grads["grad_l2"], strict=True):
            assert math.isclose(x, y, rel_tol=0.05)  # half-precision matmuls, same gradient
        assert math.isclose(a.loss, b.loss, rel_tol=0.02)


def _vanishing_layers(dtype, scaler=None):
    """Train the deep sigmoid twin under autocast(dtype); the layers named as vanishing."""
    spec = builtin_specs()["deep_sigmoid_mlp"]
    torch.manual_seed(0)
    model = spec.factory()
    opt = spec.optimizer(model.parameters())
    with gradscope.watch(model, optimizer=opt, scaler=scaler) as scope:
        for k in range(spec.demo_steps):
            x, y = spec.batch(spec.batch_size, k)
            opt.zero_grad()
            with torch.autocast("cpu", dtype=dtype):
                loss = spec.loss_fn(model(x).float(), y)
            scope.log_loss(loss)
            if scaler is None:
                loss.backward()
                opt.step()
            else:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
    return [f.layer for f in scope.report().findings if f.kind == "vanishing_gradient"]


def test_bf16_autocast_vanishing_gradient_is_found_on_the_first_layer():
    assert _vanishing_layers(torch.bfloat16) == ["0"]


def test_fp16_autocast_with_scaler_vanishing_gradient_is_found_on_the_first_layer():
    assert _vanishing_layers(torch.float16, torch.amp.GradScaler("cpu")) == ["0"]


def test_fp16_autocast_without_scaler_names_the_underflowed_first_layer():
    # The gradients of layers 0 and 2 underflow to exactly 0 in float16: still vanishing.
    assert _vanishing_layers(torch.float16) == ["0"]


def test_grad_scaler_norms_equal_the_unscaled_run():
    plain = _train(_relu_mlp(), 6)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    scaled = _train(_relu_mlp(), 6, scaler=scaler)
    for a, b in zip(scaled.history.records, plain.history.records, strict=True):
        for x, y in zip(a.grads["grad_l2"], b.grads["grad_l2"], strict=True):
            assert math.isclose(x, y, rel_tol=1e-6)
        assert a.scale == 2.0**10
    assert scaled.report().notes == []


def test_overflow_skipped_by_the_scaler_is_a_note_not_a_finding():
    # Under float16 autocast a scale of 2**24 overflows the half-precision backward
    # (max 65504); the scaler skips those steps and halves the scale until it fits.
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**24)
    scope = _train(_relu_mlp(), 12, dtype=torch.float16, scaler=scaler)
    report = scope.report()
    assert report.findings == [], report
    skipped = scope._skips.skipped
    assert 1 <= skipped < 12
    assert scope.history.recorded == 12 - skipped
    (note,) = [n for n in report.notes if n.startswith("overflow skipped by the scaler")]
    assert f"on {skipped} of 12 steps" in note
    assert "not a model fault" in note


def test_persistent_overflow_is_judged_as_the_model_s_nan():
    # log(0) in the model: every step overflows whatever the scale, so the scaler skips
    # every step; from the skip at scale <= 1 on, gradscope records the step.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), Log(), nn.Linear(8, 3))
    scaler = torch.amp.GradScaler("cpu", init_scale=8.0)
    scope = _train(model, 6, scaler=scaler)
    report = scope.report()
    nonfinite = [f for f in report.findings if f.kind == "nonfinite_gradient"]
    assert nonfinite and nonfinite[0].layer == "2", report
    assert scope._skips.persistent_from == 3  # scales 8, 4, 2, then 1: persistent
    assert any("persisting from step 3" in n for n in report.notes)


def test_a_nan_under_a_scaler_started_high_persists_once_the_scale_backed_off():
    # log(0) in the model under a scaler started at 2**40: skip k runs at scale 2**(40-k);
    # twenty in a row persist from the first skip at 65536 (torch's default start), k=24.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), Log(), nn.Linear(8, 3))
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**40)
    scope = _train(model, 27, scaler=scaler)
    assert scope._skips.persistent_from == 24
    nonfinite = [f for f in scope.report().findings if f.kind == "nonfinite_gradient"]
    assert nonfinite and nonfinite[0].layer == "2"
    # The loss itself was NaN/Inf from the first step, which no scaling makes: that step is
    # judged at once (a stranger session's division by zero on one step was a note only).
    assert nonfinite[0].step == 0
    assert scope._skips.model_faults == 24  # every skip before the scale backed off


def test_a_nan_loss_on_one_step_under_a_scaler_is_the_model_s_fault_at_once():
    # A log(0) in forward() on step 4 only: the scaler skips that step and goes on, but
    # its loss was Inf/NaN (a scaled gradient's overflow never makes the loss so).
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), SometimesLog(), nn.Linear(8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    with gradscope.watch(model, optimizer=opt, scaler=scaler) as scope:
        for k in range(8):
            model[2].on = k == 4
            x, y = batch(seed=k)
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            scope.log_loss(loss)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
    (finding,) = [f for f in scope.report().findings if f.kind == "nonfinite_gradient"]
    assert (finding.step, finding.layer) == (4, "2")
    assert scope._skips.skipped == 1 and scope._skips.persistent_from is None


def test_a_healthy_model_under_a_scaler_started_at_2_40_backs_off_without_a_finding():
    # float16 overflows every step until the scale is small enough: 20 and more skips in
    # a row at the start, which is the scaler calibrating, not a NaN in the model.
    torch.manual_seed(0)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**40)
    scope = _train(_relu_mlp(), 40, dtype=torch.float16, scaler=scaler)
    report = scope.report()
    assert scope._skips.longest_run >= amp.PERSISTENT_SKIPS
    assert scope._skips.persistent_from is None
    assert report.kinds_at_least("warning") == set(), report
    (note,) = [n for n in report.notes if n.startswith("overflow skipped by the scaler")]
    assert "not a model fault" in note
