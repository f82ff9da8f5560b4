"""The generated suite's own code changes (used by ``benchmarks/trial.py``): each safe
operation is the unsafe one's function where that is finite, and stays finite where the
unsafe one does not; the detached branch, attached, gets its gradient."""

from __future__ import annotations

import pytest
import torch

from gradscope_scenarios.generated.models import SAFE, UNSAFE, Classifier


@pytest.mark.parametrize("name", sorted(UNSAFE))
def test_the_safe_operation_computes_the_same_function_and_stays_finite(name):
    torch.manual_seed(0)
    x = torch.randn(8, 5).abs() + 0.1  # positive rows: DivBySum's sum is far from 0
    unsafe, safe = UNSAFE[name](), SAFE[name]()
    torch.testing.assert_close(safe(x), unsafe(x), rtol=1e-4, atol=1e-5)
    bad = {"log_softmax": x * 1e4, "exp": x * 1e3, "div": torch.zeros(8, 5)}[name]
    assert not torch.isfinite(unsafe(bad)).all()
    assert torch.isfinite(safe(bad)).all()


def test_the_detached_branch_gets_a_gradient_once_attached():
    torch.manual_seed(0)
    model = Classifier(torch.nn.Linear(4, 6), 6, 3, "none", "detached")
    x = torch.randn(16, 4)
    model(x).sum().backward()
    assert model.side.weight.grad is None
    model.zero_grad()
    model.detach_side = False
    model(x).sum().backward()
    assert model.side.weight.grad is not None and float(model.side.weight.grad.norm()) > 0
