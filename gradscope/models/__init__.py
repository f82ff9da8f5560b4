"""Reference models of the seed notes, their faulty twins and the data to train them on.

Each :class:`ModelSpec` declares a factory, an example batch (any batch size), the
loss it trains with and the task.  A faulty twin names the finding it should show
(``problem``) and the spec of its fix (``fixed_by``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from gradscope.models import networks
from gradscope.models.data import classification_batch, regression_batch


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

    def example_batch(self, n: int | None = None, seed: int = 0) -> tuple[Any, Any]:
        """An (input, target) pair of ``n`` samples (default: the spec's batch size)."""
        return self.batch(n or self.batch_size, seed)

    def input_shape(self) -> tuple[int, ...]:
        """Shape of one example input with a batch of 1."""
        x, _ = self.batch(1, 0)
        return tuple(x.shape) if isinstance(x, torch.Tensor) else ()


def _ce(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(output, target)


def _mse(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return nn.functional.mse_loss(output, target)


def _features(dim: int, classes: int) -> Callable[[int, int], tuple[Any, Any]]:
    return lambda n, seed: classification_batch(n, dim, classes, seed)


def builtin_specs() -> dict[str, ModelSpec]:
    """The reference models and faulty twins that ship with gradscope."""
    specs = [
        ModelSpec(
            name="fnn",
            factory=networks.FNN,
            batch=lambda n, seed: regression_batch(n, 10, seed),
            loss_fn=_mse,
            loss_name="mse",
            task="regression: Linear(10,20)-ReLU-Linear(20,1), Kaiming-uniform init",
        ),
        ModelSpec(
            name="deep_sigmoid_mlp",
            factory=networks.deep_sigmoid_mlp,
            batch=_features(32, 4),
            loss_fn=_ce,
            loss_name="cross_entropy",
            task="classification with 8 Linear+Sigmoid layers: gradients vanish toward the input",
            problem="vanishing_gradient",
            fixed_by="deep_relu_mlp",
            fix="ReLU instead of Sigmoid, with Kaiming init",
        ),
        ModelSpec(
            name="deep_relu_mlp",
            factory=networks.deep_relu_mlp,
            batch=_features(32, 4),
            loss_fn=_ce,
            loss_name="cross_entropy",
            task="the fix of deep_sigmoid_mlp: ReLU and Kaiming init",
        ),
        ModelSpec(
            name="relu_mlp_large_init",
            factory=networks.relu_mlp_large_init,
            batch=_features(32, 4),
            loss_fn=_ce,
            loss_name="cross_entropy",
            task="ReLU MLP with N(0, 1) weights: activations and gradients explode",
            problem="exploding_gradient",
            fixed_by="relu_mlp_kaiming",
            fix="Kaiming init (and gradient clipping)",
        ),
        ModelSpec(
            name="relu_mlp_kaiming",
            factory=networks.relu_mlp_kaiming,
            batch=_features(32, 4),
            loss_fn=_ce,
            loss_name="cross_entropy",
            task="the fix of relu_mlp_large_init: Kaiming init",
        ),
    ]
    return {spec.name: spec for spec in specs}


def available_specs() -> dict[str, ModelSpec]:
    """Every spec offered through the ``gradscope_reference_models`` hook."""
    from gradscope.plugins import PluginRunner

    specs: dict[str, ModelSpec] = {}
    for result in PluginRunner().call("gradscope_reference_models"):
        for name, spec in result.items():
            specs.setdefault(name, spec)
    return specs


def get_spec(name: str) -> ModelSpec:
    """The spec called ``name``, or an error listing the known names."""
    from gradscope.errors import InputError

    specs = available_specs()
    if name not in specs:
        raise InputError(
            f"Unknown model {name!r}; known models: {', '.join(sorted(specs)) or '(none loaded)'}."
        )
    return specs[name]
