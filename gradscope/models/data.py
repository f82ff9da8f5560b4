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


def image_batch(n: int, seed: int = 0, size: int = 28, classes: int = 10) -> tuple:
    """1 x size x size images of a stroke at one of ``classes`` positions/orientations."""
    g = _generator(seed)
    labels = torch.randint(0, classes, (n,), generator=g)
    images = 0.3 * torch.randn(n, 1, size, size, generator=g)
    for i in range(n):
        k = int(labels[i])
        offset = 3 + (k // 2) * (size - 6) // max(classes // 2, 1)
        if k % 2 == 0:
            images[i, 0, offset, :] += 1.0
        else:
            images[i, 0, :, offset] += 1.0
    return images, labels


def sequence_batch(
    n: int,
    length: int,
    seed: int = 0,
    features: int = 10,
    memory: bool = False,
    recent: int | None = None,
):
    """(n, length, features) sequences; the target is the mean of feature 0 over time (over
    the last ``recent`` steps only, when given), or with ``memory`` the value of feature 0
    at the first step (it must be carried to the end)."""
    x = torch.randn(n, length, features, generator=_generator(seed))
    if not memory:
        return x, x[:, -(recent or length) :, :1].mean(dim=1)
    x[:, 1:] *= 0.1  # quiet distractors after the one value that must be remembered
    return x, x[:, 0, :1].clone()


def token_batch(n: int, seed: int = 0, length: int = 16, vocab: int = 100, classes: int = 4):
    """Token sequences labelled by which quarter of the vocabulary their first token is in."""
    tokens = torch.randint(0, vocab, (n, length), generator=_generator(seed))
    return tokens, (tokens[:, 0] * classes // vocab)


def gan_batch(n: int, seed: int = 0) -> tuple:
    """(noise z of 100 dims, real samples of 256 dims): real data is a fixed smooth pattern."""
    g = _generator(seed)
    z = torch.randn(n, 100, generator=g)
    pattern = torch.sin(torch.linspace(0, 6.28, 256))
    real = (0.8 * pattern + 0.05 * torch.randn(n, 256, generator=g)).clamp(-1, 1)
    return z, real
