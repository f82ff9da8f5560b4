"""Gradient accumulation: several backward passes per optimizer step, measured once."""

from __future__ import annotations

import math

import torch
from helpers import batch, mlp
from torch import nn

import gradscope

torch.set_num_threads(1)

MICRO = 4


def _run(accumulate: bool, steps: int = 6, every: int = 1):
    torch.manual_seed(0)
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    micro_losses: list[list[float]] = []
    with gradscope.watch(model, optimizer=opt, every=every) as scope:
        for k in range(steps):
            x, y = batch(n=32, seed=k)
            opt.zero_grad()
            if accumulate:
                losses = []
                for xs, ys in zip(x.chunk(MICRO), y.chunk(MICRO), strict=True):
                    loss = nn.functional.cross_entropy(model(xs), ys)
                    scope.log_loss(loss)
                    (loss / MICRO).backward()
                    losses.append(loss.item())
                micro_losses.append(losses)
            else:
                loss = nn.functional.cross_entropy(model(x), y)
                scope.log_loss(loss)
                loss.backward()
            opt.step()
    return scope, micro_losses


def test_accumulated_step_is_measured_once_on_the_accumulated_gradient():
    whole, _ = _run(accumulate=False)
    accumulated, micro = _run(accumulate=True)
    assert accumulated.history.recorded == whole.history.recorded == 6
    for a, b in zip(accumulated.history.records, whole.history.records, strict=True):
        for x, y in zip(a.grads["grad_l2"], b.grads["grad_l2"], strict=True):
            assert math.isclose(x, y, rel_tol=1e-5)
    assert accumulated.report().findings == []


def test_logged_loss_is_the_mean_of_the_step_s_micro_batch_losses():
    accumulated, micro = _run(accumulate=True)
    for record, losses in zip(accumulated.history.records, micro, strict=True):
        assert math.isclose(record.loss, sum(losses) / MICRO, rel_tol=1e-6)
    whole, _ = _run(accumulate=False)
    for a, b in zip(accumulated.history.records, whole.history.records, strict=True):
        assert math.isclose(a.loss, b.loss, rel_tol=1e-5)  # equal micro-batches: the same mean


def test_unrecorded_steps_do_not_leak_their_losses_into_recorded_ones():
    accumulated, micro = _run(accumulate=True, steps=6, every=2)
    assert [r.step for r in accumulated.history.records] == [0, 2, 4]
    for record in accumulated.history.records:
        assert math.isclose(record.loss, sum(micro[record.step]) / MICRO, rel_tol=1e-6)
