"""ModelSpec: a named model with what it takes to train it for a few steps (plain data)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from gradscope.models.training import Step, supervised_step


@dataclass
class ModelSpec:
    """A named model with what it takes to train it for a few steps.

    Attributes:
        name: registry name (``gradscope models`` lists them).
        factory: builds a fresh model; seed torch first for a repeatable one.
        batch: ``batch(n, seed)`` returns an (input, target) pair of ``n`` samples.
        loss_fn: ``loss_fn(output, target)`` -> scalar tensor.
        loss_name: the loss in words (cross_entropy, mse, bce, ...).
        task: what the model does, in a few words.
        optimizer: ``optimizer(params)`` for demos and the CLI default.
        problem: for a faulty twin, the finding kind it shows.
        fixed_by: for a faulty twin, the name of the spec with the fix applied.
        fix: one line on what the fix changes.
    """

    name: str
    factory: Callable[[], nn.Module]
    batch: Callable[[int, int], tuple[Any, Any]]
    loss_fn: Callable[[Any, Any], torch.Tensor]
    loss_name: str
    task: str
    optimizer: Callable[[Any], torch.optim.Optimizer] = field(
        default=lambda params: torch.optim.SGD(params, lr=0.05)
    )
    problem: str | None = None
    fixed_by: str | None = None
    fix: str | None = None
    batch_size: int = 64
    step: Step | None = None
    demo_steps: int = 40
    distinct_batches: int = 8

    def train_step(self) -> Step:
        """The step that trains this model (a plain supervised step unless the spec says)."""
        return self.step or supervised_step(self.loss_fn)

    def example_batch(self, n: int | None = None, seed: int = 0) -> tuple[Any, Any]:
        """An (input, target) pair of ``n`` samples (default: the spec's batch size)."""
        return self.batch(n or self.batch_size, seed)

    def input_shape(self) -> tuple[int, ...]:
        """Shape of one example input with a batch of 1."""
        x, _ = self.batch(1, 0)
        return tuple(x.shape) if isinstance(x, torch.Tensor) else ()
