"""gradscope in a model's test suite (run: pytest examples/test_gradients.py).

One line per property; a failure prints the findings, the numbers and the top fix.
"""

from __future__ import annotations

import torch
from torch import nn

from gradscope.testing import (
    assert_all_parameters_get_gradients,
    assert_healthy_gradients,
    assert_no_exploding,
)


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4)
    )


def make_batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 16, generator=g)
    return x, (x[:, :4].argmax(dim=1))


def test_gradients_are_healthy():
    assert_healthy_gradients(make_model(), make_batch(), nn.functional.cross_entropy, steps=8)


def test_every_parameter_learns():
    assert_all_parameters_get_gradients(make_model(), make_batch(), nn.functional.cross_entropy)


def test_no_explosion_at_our_learning_rate():
    assert_no_exploding(make_model(), make_batch(), nn.functional.cross_entropy, lr=0.1)


def test_custom_check_with_the_fixture(gradscope):
    model = make_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    scope = gradscope(model, optimizer)
    x, y = make_batch()
    for _ in range(6):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    assert "dead_relu" not in scope.report().kinds()
