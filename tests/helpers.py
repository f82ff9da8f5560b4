"""Small models and training loops the tests share."""

from __future__ import annotations

import torch
from torch import nn


class TwoHead(nn.Module):
    """Defined in one order, called in another; returns a dict; reuses a module twice."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(8, 3)
        self.body = nn.Linear(6, 8)
        self.act = nn.ReLU(inplace=True)
        self.shared = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.act(self.body(x))
        h = self.shared(h)
        h = self.shared(torch.relu(h))
        return {"logits": self.head(h), "hidden": h}


def mlp() -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3)
    )


def batch(n: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    return x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long()


def train(model, optimizer, steps: int = 5, scope=None, loss_fn=nn.functional.cross_entropy):
    """A plain loop; returns the losses as floats."""
    losses = []
    for k in range(steps):
        x, y = batch(seed=k)
        optimizer.zero_grad()
        out = model(x)
        out = out["logits"] if isinstance(out, dict) else out
        loss = loss_fn(out, y)
        if scope is not None:
            scope.log_loss(loss)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def watch_loop(
    model, optimizer, data, steps: int, loss_fn=nn.functional.cross_entropy, **options
):
    """A loop under ``gradscope.watch(model, optimizer=..., **options)``, the loss logged
    before ``backward()``; ``data(k)`` gives step k's (x, y).  The report."""
    import gradscope

    with gradscope.watch(model, optimizer=optimizer, **options) as scope:
        for k in range(steps):
            x, y = data(k)
            optimizer.zero_grad()
            loss = loss_fn(model(x), y)
            scope.log_loss(loss)
            loss.backward()
            optimizer.step()
    return scope.report()


def watch_generated(config):
    """A generated scenario (``gradscope_scenarios.generated``) trained by its own loop
    under ``gradscope.watch`` with default settings, one part; the report."""
    import gradscope
    from gradscope_scenarios.generated.space import build

    sc = build(config)
    scope = gradscope.watch(sc.parts["model"], optimizer=sc.optimizers["model"])
    with scope:
        for step in range(config.steps):
            sc.train_step(step, lambda part, loss: scope.log_loss(loss))
    return scope.report()


def watch_generated_players(config) -> dict:
    """A generated GAN trained by its own two-optimizer loop, each player under its own
    ``gradscope.watch`` (the standard loop); part ("G", "D") -> its report."""
    import gradscope
    from gradscope_scenarios.generated.space import build

    sc = build(config)
    scopes = {part: gradscope.watch(sc.parts[part], optimizer=sc.optimizers[part]) for part in "GD"}
    for step in range(config.steps):
        sc.train_step(step, lambda part, loss: scopes[part].log_loss(loss))
    for scope in scopes.values():
        scope.detach()
    return {part: scope.report() for part, scope in scopes.items()}


def five_class_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Eight batches of 64 samples of 20 features, labelled by a fixed random linear map
    into 5 classes."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(512, 20, generator=g)
    y = (x @ torch.randn(20, 5, generator=g)).argmax(1)
    return [(x[j : j + 64], y[j : j + 64]) for j in range(0, 512, 64)]
