"""Small seeded data sets built in code, so every demo and test runs offline."""

from __future__ import annotations

import torch


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def classification_batch(n: int, dim: int, classes: int, seed: int = 0) -> tuple:
    """Gaussian inputs labelled by a fixed random linear teacher: learnable, not trivial."""
    teacher = torch.randn(dim, classes, generator=_generator(12345))
    x = torch.randn(n, dim, generator=_generator(seed))
    return x, (x @ teacher).argmax(dim=1)


def regression_batch(n: int, dim: int, seed: int = 0) -> tuple:
    """Gaussian inputs with a smooth nonlinear target of shape (n, 1)."""
    teacher = torch.randn(dim, 1, generator=_generator(54321))
    x = torch.randn(n, dim, generator=_generator(seed))
    y = torch.tanh(x @ teacher / dim**0.5) + 0.1 * (x[:, :1] ** 2)
    return x, y
