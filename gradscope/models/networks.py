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


class CNN(nn.Module):
    """Conv2d(1,32,3,padding=1)-ReLU-MaxPool(2)-Linear(32*14*14,10) for 1x28x28 input."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 32, 3, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(32 * 14 * 14, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.relu(self.conv(x))).flatten(1))


class SmallCNN(nn.Module):
    """The notes' smaller variant: Conv2d(1,16,3)-ReLU-MaxPool(2)-Linear(16*13*13,10)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 16, 3)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(16 * 13 * 13, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.relu(self.conv(x))).flatten(1))


class RNNNet(nn.Module):
    """nn.RNN(10, 20, batch_first) and a Linear on the last step, as in the notes."""

    cell = nn.RNN

    def __init__(
        self,
        input_size: int = 10,
        hidden_size: int = 20,
        output_size: int = 1,
        **cell_options: object,
    ) -> None:
        super().__init__()
        self.rnn = self.cell(input_size, hidden_size, batch_first=True, **cell_options)
        self.fc = nn.Linear(hidden_size, output_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.fc(out[:, -1])


class LSTMNet(RNNNet):
    """The same shape with nn.LSTM."""

    cell = nn.LSTM


def exploding_rnn() -> RNNNet:
    """A ReLU RNN whose recurrent matrix is orthogonal times 1.5: the state grows 1.5x a step.

    (A tanh RNN with large recurrent weights saturates instead: its gradients vanish.)
    """
    model = RNNNet(nonlinearity="relu")
    nn.init.orthogonal_(model.rnn.weight_hh_l0)
    with torch.no_grad():
        model.rnn.weight_hh_l0.mul_(1.5)
    return model


def orthogonal_rnn() -> RNNNet:
    """The fix of :func:`exploding_rnn`: orthogonal recurrent weights (trained with clipping)."""
    model = RNNNet(nonlinearity="relu")
    nn.init.orthogonal_(model.rnn.weight_hh_l0)
    return model


class PositionalEncoding(nn.Module):
    """Sinusoidal positions added to the embeddings."""

    def __init__(self, d_model: int, max_len: int = 512) -> None:
        super().__init__()
        position = torch.arange(max_len).unsqueeze(1)
        div = torch.exp(torch.arange(0, d_model, 2) * (-torch.log(torch.tensor(10000.0)) / d_model))
        pe = torch.zeros(max_len, d_model)
        pe[:, 0::2] = torch.sin(position * div)
        pe[:, 1::2] = torch.cos(position * div)
        self.register_buffer("pe", pe)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.pe[: x.shape[1]]


class TransformerClassifier(nn.Module):
    """A small nn.TransformerEncoder text classifier with positional encoding."""

    def __init__(self, vocab: int = 100, d_model: int = 32, classes: int = 4) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        self.positions = PositionalEncoding(d_model)
        layer = nn.TransformerEncoderLayer(d_model, 4, dim_feedforward=64, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.fc = nn.Linear(d_model, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.fc(self.encoder(self.positions(self.embed(tokens))).mean(dim=1))


def deep_tanh_tiny_init() -> nn.Sequential:
    """Six tanh layers with weights 100x too small: the signal and gradient shrink per layer."""
    model = _mlp([32] + [64] * 6, nn.Tanh, 4, init=None)
    with torch.no_grad():
        for module in model:
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.01 / module.in_features**0.5)
                nn.init.zeros_(module.bias)
    return model


def deep_tanh_xavier() -> nn.Sequential:
    """The fix of :func:`deep_tanh_tiny_init`: Xavier init."""
    model = _mlp([32] + [64] * 6, nn.Tanh, 4, init=None)
    for module in model:
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight, gain=nn.init.calculate_gain("tanh"))
            nn.init.zeros_(module.bias)
    return model


def zero_init_mlp() -> nn.Sequential:
    """Every weight and bias zero: all units of a layer stay copies of each other."""
    model = _mlp([32, 64, 64], nn.Tanh, 4, init=None)
    for module in model:
        if isinstance(module, nn.Linear):
            nn.init.zeros_(module.weight)
            nn.init.zeros_(module.bias)
    return model


def random_init_mlp() -> nn.Sequential:
    """The fix of :func:`zero_init_mlp`: Xavier init."""
    model = _mlp([32, 64, 64], nn.Tanh, 4, init=None)
    for module in model:
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight, gain=nn.init.calculate_gain("tanh"))
            nn.init.zeros_(module.bias)
    return model


def negative_bias_relu() -> nn.Sequential:
    """Biases of -5 before each ReLU: every unit is off for every input and never recovers."""
    model = _mlp([32, 64, 64], nn.ReLU, 4, init="kaiming")
    with torch.no_grad():
        for module in list(model)[:-1]:
            if isinstance(module, nn.Linear):
                module.bias.fill_(-5.0)
    return model


def saturated_sigmoid() -> nn.Sequential:
    """Sigmoid layers fed weights 20x too large: outputs pinned at 0 and 1."""
    model = _mlp([32, 64, 64], nn.Sigmoid, 4, init=None)
    with torch.no_grad():
        for module in list(model)[:-1]:
            if isinstance(module, nn.Linear):
                module.weight.mul_(20.0)
    return model


class LogOfSoftmax(nn.Module):
    """log(softmax(x)) computed in two steps: the softmax underflows to 0 and log(0) = -inf."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(torch.softmax(x, dim=-1))


class StableLogSoftmax(nn.Module):
    """The fix: the fused, stable log_softmax."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(x, dim=-1)


def _log_probs_mlp(head: nn.Module) -> nn.Sequential:
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 4), head)
    with torch.no_grad():
        model[2].weight.mul_(300.0)  # confident logits: softmax gives exact zeros
    return model


def log_of_zero() -> nn.Sequential:
    """A classifier whose log-probabilities are log(softmax(x)): -inf once a class underflows."""
    return _log_probs_mlp(LogOfSoftmax())


def stable_log_softmax() -> nn.Sequential:
    """The fix of :func:`log_of_zero`: torch.log_softmax."""
    return _log_probs_mlp(StableLogSoftmax())


class Generator(nn.Module):
    """Linear(100, 256) + tanh, as in the notes."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(100, 256)
        self.act = nn.Tanh()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.act(self.fc(z))


class Discriminator(nn.Module):
    """Linear(256, 1) + sigmoid, as in the notes."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(256, 1)
        self.act = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.fc(x))


class GAN(nn.Module):
    """Generator and discriminator in one module, so one scope watches both."""

    def __init__(self) -> None:
        super().__init__()
        self.generator = Generator()
        self.discriminator = Discriminator()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.discriminator(self.generator(z))


def long_memory_lstm(hidden_size: int = 32, forget_bias: float = 3.0) -> LSTMNet:
    """An LSTM whose forget gates start open (bias 3): it keeps its state over ~50 steps."""
    model = LSTMNet(hidden_size=hidden_size)
    with torch.no_grad():
        model.rnn.bias_ih_l0[hidden_size : 2 * hidden_size].fill_(forget_bias)
        model.rnn.bias_hh_l0[hidden_size : 2 * hidden_size].fill_(0.0)
    return model
