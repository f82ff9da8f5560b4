"""torch.compile with the default inductor backend: watch() leaves the compiled graph alone."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gradscope
from gradscope import compiled as compiled_notes

torch.set_num_threads(1)
dynamo = pytest.importorskip("torch._dynamo")
from torch._dynamo.utils import counters  # noqa: E402

STEPS = 8


def _deep_sigmoid() -> nn.Sequential:
    """Six Linear+Sigmoid layers, default init: the gradient vanishes toward the input."""
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for fan_in in (16, 32, 32, 32, 32, 32):
        layers += [nn.Linear(fan_in, 32), nn.Sigmoid()]
    return nn.Sequential(*layers, nn.Linear(32, 4))


def _train(watch: bool):
    """Train a fullgraph inductor-compiled model; the losses, final weights, scope, graphs."""
    dynamo.reset()
    counters.clear()
    model = _deep_sigmoid()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    fast = torch.compile(model, fullgraph=True)  # a graph break would raise
    scope = gradscope.watch(fast, optimizer=opt) if watch else None
    losses, graphs = [], []
    g = torch.Generator().manual_seed(1)
    for _ in range(STEPS):
        x, y = torch.randn(64, 16, generator=g), torch.randint(0, 4, (64,), generator=g)
        opt.zero_grad()
        loss = nn.functional.cross_entropy(fast(x), y)
        if scope is not None:
            scope.log_loss(loss)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        graphs.append(counters["stats"]["unique_graphs"])
    if scope is not None:
        scope.detach()
    return losses, [p.detach().clone() for p in model.parameters()], scope, graphs


def test_watched_inductor_run_is_bit_identical_finds_vanishing_and_never_recompiles():
    plain_losses, plain_weights, _, plain_graphs = _train(watch=False)
    losses, weights, scope, graphs = _train(watch=True)

    assert losses == plain_losses
    assert all(torch.equal(a, b) for a, b in zip(weights, plain_weights, strict=True))
    # One graph, compiled at the first step and never again (no per-step recompiles).
    assert graphs == plain_graphs == [1] * STEPS
    assert not counters["recompiles"]

    report = scope.report()
    vanishing = [f for f in report.findings if f.kind == "vanishing_gradient"]
    assert vanishing and vanishing[0].layer == "_orig_mod.0", report
    assert scope.history.recorded == STEPS
    assert [r.loss for r in scope.history.records] == pytest.approx(losses, rel=1e-6)
    assert compiled_notes.NOTE in report.notes
    assert report.coverage["unseen_modules"] == []
