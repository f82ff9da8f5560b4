"""The small networks the configuration space builds (plain torch, no gradscope)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def make_act(name: str) -> nn.Module:
    """The activation module called ``name``."""
    return {
        "relu": nn.ReLU,
        "leaky_relu": lambda: nn.LeakyReLU(0.01),
        "tanh": nn.Tanh,
        "sigmoid": nn.Sigmoid,
        "gelu": nn.GELU,
        "elu": nn.ELU,
    }[name]()


def make_norm(kind: str, width: int, conv: bool = False) -> list[nn.Module]:
    """Zero or one normalisation layer."""
    if kind == "batchnorm":
        return [nn.BatchNorm2d(width) if conv else nn.BatchNorm1d(width)]
    if kind == "layernorm":
        return [nn.GroupNorm(1, width) if conv else nn.LayerNorm(width)]
    return []


class LogOfSoftmax(nn.Module):
    """``log(softmax(x))`` in two steps: -inf once a probability underflows to 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(torch.softmax(x, dim=-1))


class ExpNormalize(nn.Module):
    """A hand-written softmax without the max shift: ``exp`` overflows past 88."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = torch.exp(x)
        return e / e.sum(dim=-1, keepdim=True) * x.shape[-1]


class DivBySum(nn.Module):
    """Each row divided by its sum, which reaches 0 when every unit is silent."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / x.sum(dim=-1, keepdim=True)


UNSAFE = {"log_softmax": LogOfSoftmax, "exp": ExpNormalize, "div": DivBySum}


class SafeLogSoftmax(nn.Module):
    """The fused ``log_softmax`` (what ``fix_loss_numerics`` prints for LogOfSoftmax)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(x, dim=-1)


class SafeExpNormalize(nn.Module):
    """ExpNormalize through ``torch.softmax``, which shifts by the max before ``exp``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(x, dim=-1) * x.shape[-1]


class SafeDivBySum(nn.Module):
    """DivBySum with ``a / (b + 1e-8)``, as the printed snippet says."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / (x.sum(dim=-1, keepdim=True) + 1e-8)


#: The code change a user makes for each unsafe operation (the trial benchmark applies it).
SAFE = {"log_softmax": SafeLogSoftmax, "exp": SafeExpNormalize, "div": SafeDivBySum}


class Classifier(nn.Module):
    """``features`` then an optional unsafe op, a linear ``head``, and the parameter faults.

    ``param_fault`` "unused" adds a layer that is never called; "detached" adds a side
    branch whose output is detached before it is added (its weights never get a gradient).
    """

    def __init__(
        self, features: nn.Module, width: int, out: int, unsafe: str, param_fault: str
    ) -> None:
        super().__init__()
        self.features = features
        self.unsafe_where = "logits" if unsafe == "log_softmax" else "hidden"
        self.unsafe = UNSAFE[unsafe]() if unsafe != "none" else None
        self.head = nn.Linear(width, out)
        if param_fault == "unused":
            self.unused = nn.Linear(width, width)
        self.side = nn.Linear(width, out) if param_fault == "detached" else None
        #: The fault itself; the code change that fixes it sets this to False.
        self.detach_side = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x)
        if self.unsafe is not None and self.unsafe_where == "hidden":
            h = self.unsafe(h)
        out = self.head(h)
        if self.side is not None:
            side = self.side(h)
            out = out + 0.1 * (side.detach() if self.detach_side else side)
        if self.unsafe is not None and self.unsafe_where == "logits":
            out = self.unsafe(out)
        return out


def mlp(d_in: int, width: int, depth: int, act: str, norm: str) -> nn.Sequential:
    """``depth`` blocks of Linear, normalisation, activation."""
    layers: list[nn.Module] = []
    d = d_in
    for _ in range(depth):
        layers += [nn.Linear(d, width), *make_norm(norm, width), make_act(act)]
        d = width
    return nn.Sequential(*layers)


class Pool(nn.Module):
    """Global average pooling of an image batch to (batch, channels)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


def cnn(width: int, depth: int, act: str, norm: str) -> nn.Sequential:
    """``depth`` 3x3 convolutions (the second with stride 2), then global pooling."""
    layers: list[nn.Module] = []
    c = 3
    for i in range(depth):
        layers += [
            nn.Conv2d(c, width, 3, padding=1, stride=2 if i == 1 else 1),
            *make_norm(norm, width, conv=True),
            make_act(act),
        ]
        c = width
    return nn.Sequential(*layers, Pool())


class ResBlock(nn.Module):
    """``x + f(x)`` with f = layer, normalisation, activation, layer."""

    def __init__(self, width: int, act: str, norm: str, conv: bool) -> None:
        super().__init__()

        def layer() -> nn.Module:
            return nn.Conv2d(width, width, 3, padding=1) if conv else nn.Linear(width, width)

        self.f = nn.Sequential(layer(), *make_norm(norm, width, conv), make_act(act), layer())
        self.act = make_act(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.f(x))


def res_mlp(d_in: int, width: int, depth: int, act: str, norm: str) -> nn.Sequential:
    """A linear stem and ``depth`` residual blocks."""
    blocks = [ResBlock(width, act, norm, conv=False) for _ in range(depth)]
    return nn.Sequential(nn.Linear(d_in, width), make_act(act), *blocks)


def res_cnn(width: int, depth: int, act: str, norm: str) -> nn.Sequential:
    """A convolutional stem, ``depth`` residual blocks and global pooling."""
    blocks = [ResBlock(width, act, norm, conv=True) for _ in range(depth)]
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), make_act(act), *blocks, Pool())


class RecurrentFeatures(nn.Module):
    """Embed each step, run ``nn.RNN``/``GRU``/``LSTM`` (module ``rnn``), keep the last output."""

    def __init__(self, kind: str, d_in: int, width: int, layers: int, act: str) -> None:
        super().__init__()
        self.embed = nn.Linear(d_in, width)
        if kind == "rnn":
            nonlinearity = "relu" if act == "relu" else "tanh"
            self.rnn: nn.Module = nn.RNN(
                width, width, layers, nonlinearity=nonlinearity, batch_first=True
            )
        else:
            self.rnn = {"gru": nn.GRU, "lstm": nn.LSTM}[kind](
                width, width, layers, batch_first=True
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(self.embed(x))
        return out[:, -1]


class LoopCell(nn.Module):
    """A user-written Elman cell: ``h = act(x(e_t) + h(h))`` with two nn.Linear."""

    def __init__(self, width: int, act: str) -> None:
        super().__init__()
        self.x = nn.Linear(width, width)
        self.h = nn.Linear(width, width, bias=False)
        self.act = make_act(act)

    def forward(self, e: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return self.act(self.x(e) + self.h(h))


class LoopRecurrent(nn.Module):
    """Embed each step and unroll :class:`LoopCell` over time in Python."""

    def __init__(self, d_in: int, width: int, act: str) -> None:
        super().__init__()
        self.embed = nn.Linear(d_in, width)
        self.cell = LoopCell(width, act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = self.embed(x)
        h = e.new_zeros(e.shape[0], e.shape[2])
        for t in range(e.shape[1]):
            h = self.cell(e[:, t], h)
        return h


class TransformerFeatures(nn.Module):
    """Embed, a pre-LN or post-LN ``nn.TransformerEncoder``, mean over positions."""

    def __init__(self, d_in: int, width: int, depth: int, act: str, pre_ln: bool) -> None:
        super().__init__()
        self.embed = nn.Linear(d_in, width)
        activation: Any = act if act in ("relu", "gelu") else _functional(act)
        layer = nn.TransformerEncoderLayer(
            width,
            2,
            2 * width,
            dropout=0.0,
            activation=activation,
            batch_first=True,
            norm_first=pre_ln,
        )
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.embed(x)).mean(dim=1)


def _functional(act: str) -> Any:
    return {
        "tanh": torch.tanh,
        "sigmoid": torch.sigmoid,
        "leaky_relu": nn.functional.leaky_relu,
        "elu": nn.functional.elu,
    }[act]


class AutoEncoder(nn.Module):
    """``enc`` to a 4-wide code, ``dec`` back; a sigmoid ``out_act`` for BCE targets."""

    def __init__(self, d_in: int, width: int, depth: int, act: str, norm: str, bce: bool) -> None:
        super().__init__()
        self.enc = nn.Sequential(mlp(d_in, width, depth, act, norm), nn.Linear(width, 4))
        self.dec = nn.Sequential(mlp(4, width, depth, act, norm), nn.Linear(width, d_in))
        self.out_act = nn.Sigmoid() if bce else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dec(self.enc(x))
        return self.out_act(y) if self.out_act is not None else y


class Generator(nn.Module):
    """Noise (4) to a 2-D sample."""

    def __init__(self, width: int, depth: int, act: str) -> None:
        super().__init__()
        self.net = nn.Sequential(mlp(4, width, depth, act, "none"), nn.Linear(width, 2))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class Discriminator(nn.Module):
    """A 2-D sample to one logit."""

    def __init__(self, width: int, depth: int, act: str) -> None:
        super().__init__()
        self.net = nn.Sequential(mlp(2, width, depth, act, "none"), nn.Linear(width, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class GAN(nn.Module):
    """A container holding both players (``G`` and ``D``)."""

    def __init__(self, g: Generator, d: Discriminator) -> None:
        super().__init__()
        self.G = g
        self.D = d

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.D(self.G(z))
