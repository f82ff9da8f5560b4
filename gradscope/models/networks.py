"""The networks of the seed notes and their faulty twins, as plain nn.Modules."""

from __future__ import annotations

import torch
from torch import nn


class FNN(nn.Module):
    """Linear(10,20)-ReLU-Linear(20,1) regression net with Kaiming-uniform init, zero bias."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(10, 20)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(20, 1)
        for layer in (self.fc1, self.fc2):
            nn.init.kaiming_uniform_(layer.weight, nonlinearity="relu")
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.relu(self.fc1(x)))


def _mlp(
    dims: list[int], activation: type[nn.Module], final: int, init: str | None
) -> nn.Sequential:
    layers: list[nn.Module] = []
    for fan_in, fan_out in zip(dims[:-1], dims[1:], strict=True):
        layers += [nn.Linear(fan_in, fan_out), activation()]
    layers.append(nn.Linear(dims[-1], final))
    for module in layers:
        if isinstance(module, nn.Linear) and init is not None:
            if init == "kaiming":
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            elif init == "normal":
                nn.init.normal_(module.weight, std=1.0)
            nn.init.zeros_(module.bias)
    return nn.Sequential(*layers)


def deep_sigmoid_mlp() -> nn.Sequential:
    """Eight Linear+Sigmoid layers, PyTorch's default init: gradients vanish toward the input."""
    return _mlp([32] + [64] * 8, nn.Sigmoid, 4, init=None)


def deep_relu_mlp() -> nn.Sequential:
    """The fix of :func:`deep_sigmoid_mlp`: the same shape with ReLU and Kaiming init."""
    return _mlp([32] + [64] * 8, nn.ReLU, 4, init="kaiming")


def relu_mlp_large_init() -> nn.Sequential:
    """A ReLU MLP initialised with N(0, 1) weights: every layer multiplies the signal ~6x."""
    return _mlp([32] + [64] * 5, nn.ReLU, 4, init="normal")


def relu_mlp_kaiming() -> nn.Sequential:
    """The fix of :func:`relu_mlp_large_init`: Kaiming init."""
    return _mlp([32] + [64] * 5, nn.ReLU, 4, init="kaiming")
