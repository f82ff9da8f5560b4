"""A labeled suite of healthy and faulty training scenarios, with independent ground truth.

Each scenario says which finding kinds it must produce (``expect``), which consequences
may also appear (``allow``: a saturated sigmoid also starves earlier layers), and where.
``truth`` re-runs the scenario with plain torch (no gradscope) and measures the problem
itself: the loss does not improve, gradients are non-finite, units are silent, rows are
identical.  The suite is shared by tests/test_scenarios.py and benchmarks/detection.py.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

import gradscope
from gradscope.models import builtin_specs, networks
from gradscope.models.data import classification_batch, gan_batch, image_batch, sequence_batch
from gradscope.models.training import gan_step

#: The built-in finding kinds the suite scores.
KINDS = (
    "vanishing_gradient",
    "exploding_gradient",
    "nonfinite_gradient",
    "dead_relu",
    "saturated_activation",
    "no_gradient",
    "symmetric_weights",
    "stale_gradient",
    "tiny_updates",
    "wrong_loss_input",
)
CE = nn.functional.cross_entropy
MSE = nn.functional.mse_loss
SPECS = builtin_specs()


@dataclass
class Run:
    """What one plain or watched run produced."""

    model: nn.Module
    losses: list[float]
    grad_norms: list[dict[str, float]]
    report: gradscope.Report | None = None


@dataclass
class Scenario:
    """One labeled training run."""

    name: str
    arch: str
    build: Callable[[], nn.Module]
    batch: Callable[[int], tuple[Any, Any]]
    loss_fn: Callable[[Any, Any], torch.Tensor] = CE
    optimizer: Callable[[Any], torch.optim.Optimizer] = lambda p: torch.optim.SGD(p, lr=0.05)
    steps: int = 30
    expect: set[str] = field(default_factory=set)
    allow: set[str] = field(default_factory=set)
    layer: str | None = None
    truth: Callable[[Run], bool] | None = None
    step_fn: Callable | None = None
    fixes: dict[str, Callable[[Scenario], Scenario]] = field(default_factory=dict)
    clip: float | None = None

    @property
    def healthy(self) -> bool:
        return not self.expect


def _train(
    scenario: Scenario, watch: bool, seed: int = 0, detail_every: int | None = 1
) -> Run:
    torch.manual_seed(seed)
    model = scenario.build()
    optimizer = scenario.optimizer(model.parameters())
    losses: list[float] = []
    norms: list[dict[str, float]] = []
    scope = (
        gradscope.watch(model, optimizer=optimizer, detail_every=detail_every) if watch else None
    )
    try:
        for step in range(scenario.steps):
            batch = scenario.batch(step)
            if scenario.step_fn is not None:
                loss = scenario.step_fn(model, batch, optimizer, scope, norms)
            else:
                x, y = batch
                optimizer.zero_grad(set_to_none=True)
                loss = scenario.loss_fn(model(x), y)
                if scope is not None:
                    scope.log_loss(loss)
                loss.backward()
                norms.append(
                    {
                        n: float(p.grad.norm())
                        for n, p in model.named_parameters()
                        if p.grad is not None
                    }
                )
                if scenario.clip is not None:
                    nn.utils.clip_grad_norm_(model.parameters(), scenario.clip)
                optimizer.step()
            losses.append(float(loss.detach()))
    finally:
        if scope is not None:
            scope.detach()
    return Run(model, losses, norms, scope.report() if scope is not None else None)


def watched(scenario: Scenario, detail_every: int | None = 1) -> Run:
    """The scenario trained under gradscope (every statistic on every step by default)."""
    return _train(scenario, watch=True, detail_every=detail_every)


def plain(scenario: Scenario) -> Run:
    """The same seeded run without gradscope (for ground truth)."""
    return _train(scenario, watch=False)


# -- independent measurements --------------------------------------------------------
def tail(losses: list[float], k: int = 5) -> float:
    values = [v for v in losses[-k:] if math.isfinite(v)]
    return sorted(values)[len(values) // 2] if values else math.inf


def head(losses: list[float], k: int = 3) -> float:
    values = [v for v in losses[:k] if math.isfinite(v)]
    return sorted(values)[len(values) // 2] if values else math.inf


def loss_stalls(run: Run, within: float = 0.1) -> bool:
    return tail(run.losses) > (1 - within) * head(run.losses)


def trains(run: Run) -> bool:
    return all(math.isfinite(v) for v in run.losses) and tail(run.losses) < head(run.losses)


def diverges(run: Run) -> bool:
    return not all(math.isfinite(v) for v in run.losses) or tail(run.losses) > 10 * head(run.losses)


def nonfinite_seen(run: Run) -> bool:
    return any(not math.isfinite(v) for v in run.losses) or any(
        not math.isfinite(v) for step in run.grad_norms for v in step.values()
    )


def first_nonfinite_module(scenario: Scenario) -> str | None:
    """Trace one forward pass with plain hooks: the first module whose output is NaN/Inf."""
    torch.manual_seed(0)
    model = scenario.build()
    found: list[str] = []
    handles = [
        m.register_forward_hook(
            lambda mod, inp, out, name=name: (
                found.append(name)
                if isinstance(out, torch.Tensor) and not bool(torch.isfinite(out).all())
                else None
            )
        )
        for name, m in model.named_modules()
        if name and next(iter(m.children()), None) is None
    ]
    x, _ = scenario.batch(0)
    model(x)
    for h in handles:
        h.remove()
    return found[0] if found else None


def silent_unit_fraction(run: Run, scenario: Scenario, module: str) -> float:
    out: list[torch.Tensor] = []
    handle = dict(run.model.named_modules())[module].register_forward_hook(
        lambda m, i, o: out.append(o.detach())
    )
    with torch.no_grad():
        run.model(scenario.batch(0)[0])
    handle.remove()
    per_unit = out[0].amax(dim=0)
    return float((per_unit <= 0).float().mean())


def saturated_fraction(run: Run, scenario: Scenario, module: str, kind: str) -> float:
    out: list[torch.Tensor] = []
    handle = dict(run.model.named_modules())[module].register_forward_hook(
        lambda m, i, o: out.append(o.detach())
    )
    with torch.no_grad():
        run.model(scenario.batch(0)[0])
    handle.remove()
    y = out[0]
    near = (y - 0.5).abs() > 0.49 if kind == "sigmoid" else y.abs() > 0.99
    return float(near.float().mean())


def identical_rows(run: Run, param: str) -> bool:
    w = dict(run.model.named_parameters())[param].detach().flatten(1)
    return bool(torch.allclose(w, w[:1].expand_as(w)))


def never_got_grad(scenario: Scenario, param: str) -> bool:
    torch.manual_seed(0)
    model = scenario.build()
    x, y = scenario.batch(0)
    scenario.loss_fn(model(x), y).backward()
    return dict(model.named_parameters())[param].grad is None


def first_layer_frozen_by_gradient(run: Run, first: str, last: str) -> bool:
    """The first layer's gradient is < 1e-3 of the last layer's, measured on the last step."""
    g = run.grad_norms[-1]
    return g.get(first, 0.0) < 1e-3 * g.get(last, 1.0)


# -- data --------------------------------------------------------------------------------
def features(step: int) -> tuple:
    return classification_batch(64, 32, 4, seed=step % 8)


def images(step: int) -> tuple:
    return image_batch(32, seed=step % 8)


def short_sequences(step: int) -> tuple:
    return sequence_batch(32, 20, seed=step % 8)


def memory_sequences(step: int) -> tuple:
    return sequence_batch(64, 50, seed=1000 + step, memory=True)


def tokens(step: int) -> tuple:
    from gradscope.models.data import token_batch

    return token_batch(32, seed=step % 8)


# -- models built here -----------------------------------------------------------------
def mlp(
    act: type[nn.Module],
    depth: int = 4,
    width: int = 64,
    init: str | None = "kaiming",
    final_scale: float = 1.0,
) -> nn.Sequential:
    layers: list[nn.Module] = []
    dims = [32] + [width] * depth
    for a, b in zip(dims[:-1], dims[1:], strict=True):
        layers += [nn.Linear(a, b), act()]
    layers.append(nn.Linear(width, 4))
    for m in layers:
        if isinstance(m, nn.Linear) and init == "kaiming":
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            nn.init.zeros_(m.bias)
    with torch.no_grad():
        layers[-1].weight.mul_(final_scale)
    return nn.Sequential(*layers)


def conv_net(
    act: type[nn.Module] = nn.ReLU,
    depth: int = 2,
    bn: bool = False,
    conv_bias: float | None = None,
    constant: float | None = None,
) -> nn.Sequential:
    layers: list[nn.Module] = []
    channels = 1
    for _ in range(depth):
        conv = nn.Conv2d(channels, 16, 3, padding=1)
        if conv_bias is not None:
            nn.init.constant_(conv.bias, conv_bias)
        if constant is not None:
            nn.init.constant_(conv.weight, constant)
            nn.init.zeros_(conv.bias)
        layers += [conv] + ([nn.BatchNorm2d(16)] if bn else []) + [act()]
        channels = 16
    layers += [nn.AdaptiveMaxPool2d(4), nn.Flatten(), nn.Linear(16 * 16, 10)]
    return nn.Sequential(*layers)


def constant_mlp() -> nn.Sequential:
    """Every weight 0.05, every bias 0: each layer's units stay copies of each other."""
    model = mlp(nn.ReLU, depth=2, init=None)
    for layer in model:
        if isinstance(layer, nn.Linear):
            nn.init.constant_(layer.weight, 0.05)
            nn.init.zeros_(layer.bias)
    return model


class TransformerWithUnusedHead(networks.TransformerClassifier):
    """A pooler layer that __init__ builds and forward() forgets to use."""

    def __init__(self) -> None:
        super().__init__()
        self.pooler = nn.Linear(32, 32)


def _frozen_pooler() -> nn.Module:
    model = TransformerWithUnusedHead()
    for p in model.pooler.parameters():
        p.requires_grad_(False)
    return model


class SelfAttention(nn.Module):
    """Attention with separate query/key/value Linear layers and BERT's N(0, 0.02) init."""

    def __init__(self, d: int = 32) -> None:
        super().__init__()
        self.query, self.key, self.value = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.output = nn.Linear(d, d)
        self.norm = nn.LayerNorm(d)
        for layer in (self.query, self.key, self.value, self.output):
            nn.init.normal_(layer.weight, std=0.02)
            nn.init.zeros_(layer.bias)

    def forward(self, x):
        scores = self.query(x) @ self.key(x).transpose(1, 2) / x.shape[-1] ** 0.5
        return self.norm(x + self.output(torch.softmax(scores, dim=-1) @ self.value(x)))


class QKAttentionClassifier(nn.Module):
    """Two attention blocks over embedded tokens: Hugging Face style, tiny q/k gradients."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(100, 32)
        self.blocks = nn.Sequential(SelfAttention(), SelfAttention())
        self.fc = nn.Linear(32, 4)

    def forward(self, tokens):
        return self.fc(self.blocks(self.embed(tokens)).mean(1))


class Unused(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(32, 64)
        self.head = nn.Linear(64, 4)
        self.aux = nn.Linear(64, 4)  # built, never called

    def forward(self, x):
        return self.head(torch.relu(self.body(x)))


class Detached(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Linear(32, 64)
        self.head = nn.Linear(64, 4)

    def forward(self, x):
        return self.head(torch.relu(self.encoder(x)).detach())  # the bug: .detach()


class Connected(Detached):
    def forward(self, x):
        return self.head(torch.relu(self.encoder(x)))


class Normalise(nn.Module):
    """x / x.sum(): divides by zero when a whole row is zero."""

    def forward(self, x):
        return x / x.sum(dim=-1, keepdim=True)


class SafeNormalise(nn.Module):
    def forward(self, x):
        return x / (x.sum(dim=-1, keepdim=True) + 1e-6)


def divide_by_zero(safe: bool = False) -> nn.Sequential:
    model = nn.Sequential(
        nn.Linear(32, 64), nn.ReLU(), SafeNormalise() if safe else Normalise(), nn.Linear(64, 4)
    )
    with torch.no_grad():
        model[0].bias.fill_(-50.0)  # every unit off: rows of zeros reach the division
        model[0].bias[:8] = 0.0
        model[0].weight[:8] = 0.0
    return model


class Magnitude(nn.Module):
    def forward(self, x):
        return torch.cat([x, x.pow(2).sum(-1, keepdim=True).sqrt()], dim=-1)


class SafeMagnitude(nn.Module):
    def forward(self, x):
        return torch.cat([x, (x.pow(2).sum(-1, keepdim=True) + 1e-8).sqrt()], dim=-1)


class NaiveSoftmax(nn.Module):
    """softmax written out: exp overflows to inf once a logit passes ~88, and inf/inf is NaN."""

    def forward(self, x):
        e = torch.exp(x)
        return e / e.sum(dim=-1, keepdim=True)


class Softmax(nn.Module):
    def forward(self, x):
        return torch.softmax(x, dim=-1)


def softmax_head_net(safe: bool = False) -> nn.Sequential:
    """Probabilities from a hand-written softmax; Adam at lr 0.3 grows the logits until
    exp overflows at step 8: between detail steps, so only the replay can name it."""
    return nn.Sequential(
        nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 4), Softmax() if safe else NaiveSoftmax()
    )


def nll_of_probabilities(p: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.nll_loss(torch.log(p.clamp_min(1e-12)), y)


def magnitude_net(safe: bool = False) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(32, 16, bias=False), SafeMagnitude() if safe else Magnitude(), nn.Linear(17, 4)
    )


def zero_row_features(step: int) -> tuple:
    x, y = features(step)
    x = x.clone()
    x[:4] = 0.0
    return x, y


class FrozenBackbone(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = mlp(nn.ReLU, depth=3)[:-1]
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        self.head = nn.Linear(64, 4)

    def forward(self, x):
        return self.head(self.backbone(x))


class EmbeddingBag(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(5000, 16)
        self.fc = nn.Linear(16, 4)

    def forward(self, tokens):
        return self.fc(self.embed(tokens).mean(1))


def embedding_batch(step: int) -> tuple:
    g = torch.Generator().manual_seed(step % 8)
    tokens = torch.randint(0, 40, (64, 8), generator=g)  # 40 of 5000 rows ever used
    return tokens, tokens[:, 0] % 4


def pretrained_mlp() -> nn.Sequential:
    torch.manual_seed(1)
    model = mlp(nn.ReLU, depth=2)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(300):
        x, y = features(step)
        opt.zero_grad()
        CE(model(x), y).backward()
        opt.step()
    return model


_PRETRAINED: dict[str, nn.Module] = {}


def near_convergence() -> nn.Module:
    if "mlp" not in _PRETRAINED:
        _PRETRAINED["mlp"] = pretrained_mlp()
    return copy.deepcopy(_PRETRAINED["mlp"])


def scaled_step(model, batch, optimizer, scope, norms):
    """GradScaler-scaled training on the CPU (a large, constant scale)."""
    scaler = _SCALERS.setdefault(id(optimizer), torch.amp.GradScaler("cpu", init_scale=2.0**14))
    if scope is not None and scope.scaler is None:
        scope.scaler = scaler
    x, y = batch
    optimizer.zero_grad(set_to_none=True)
    loss = CE(model(x), y)
    if scope is not None:
        scope.log_loss(loss)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    norms.append({n: float(p.grad.norm()) for n, p in model.named_parameters()})
    scaler.step(optimizer)
    scaler.update()
    return loss


_SCALERS: dict[int, Any] = {}


def no_zero_grad_step(micro: int):
    """A loop that never calls ``zero_grad()``, ``micro`` micro-batches per step."""

    def step(model, batch, optimizer, scope, norms):
        x, y = batch
        total = 0.0
        for xs, ys in zip(x.chunk(micro), y.chunk(micro), strict=True):
            loss = CE(model(xs), ys) / micro
            if scope is not None:
                scope.log_loss(loss)
            loss.backward()
            total += float(loss.detach())
        norms.append({n: float(p.grad.norm()) for n, p in model.named_parameters()})
        optimizer.step()
        return torch.tensor(total)

    return step


def worse_than_reset(run: Run, name: str) -> bool:
    """The loop without ``zero_grad()`` ends above the same loop that resets (every step
    applies the sum of all the gradients so far)."""
    reset = plain(_with(SCEN[name], step_fn=None))
    return tail(run.losses) > tail(reset.losses)


def softmax_cross_entropy(scores: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """cross_entropy on probabilities: the softmax is applied twice."""
    return CE(torch.softmax(scores, dim=-1), y)


def regression_batch(step: int) -> tuple:
    """Features and a (N,) target of variance 1 (the sum of 4 features over 2)."""
    x, _ = classification_batch(64, 32, 4, seed=step % 8)
    return x, x[:, :4].sum(1) / 2


def regression_mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 1))


def broadcast_mse(prediction: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """mse_loss of a (N, 1) prediction against a (N,) target: broadcast to (N, N)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PyTorch's own one-time shape warning
        return MSE(prediction, y)


def aligned_mse(prediction: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return MSE(prediction.squeeze(-1), y)


def _gan(saturating: bool):
    step = gan_step(saturating)

    def run(model, batch, optimizer, scope, norms):
        loss = step(model, batch, optimizer, scope)
        norms.append(
            {n: float(p.grad.norm()) for n, p in model.named_parameters() if p.grad is not None}
        )
        return loss

    return run


def gan_optimizer(params: Any) -> torch.optim.Optimizer:
    params = list(params)
    return torch.optim.SGD([{"params": params[:2], "lr": 0.05}, {"params": params[2:], "lr": 1.0}])


def gan_balanced_optimizer(params: Any) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=0.05)


def generator_gradient_faded(run: Run) -> bool:
    first = run.grad_norms[1].get("generator.fc.weight", 0.0)
    last = sorted(n.get("generator.fc.weight", 0.0) for n in run.grad_norms[-5:])[2]
    return last < 0.2 * first and loss_stalls(run)


def _with(scenario: Scenario, **changes: Any) -> Scenario:
    new = copy.copy(scenario)
    for key, value in changes.items():
        setattr(new, key, value)
    return new


def _loop_and_loss_scenarios() -> list[Scenario]:
    """Mistakes in the loop or the loss call, not in the model: zero_grad() forgotten, a
    learning rate far too small, the wrong input to the loss function."""
    return [
        Scenario(
            "forgot_zero_grad",
            "mlp",
            lambda: mlp(nn.ReLU, depth=3),
            features,
            optimizer=lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
            step_fn=no_zero_grad_step(1),
            expect={"stale_gradient"},
            allow={"dead_relu", "exploding_gradient"},  # what the growing steps do
            truth=lambda r: worse_than_reset(r, "forgot_zero_grad"),
            fixes={"reset_gradients": lambda sc: _with(sc, step_fn=None)},
        ),
        Scenario(
            "forgot_zero_grad_accumulating",
            "cnn",
            lambda: conv_net(nn.ReLU, depth=2),
            images,
            optimizer=lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
            step_fn=no_zero_grad_step(4),
            expect={"stale_gradient"},
            allow={"dead_relu", "exploding_gradient"},
            truth=lambda r: worse_than_reset(r, "forgot_zero_grad_accumulating"),
            fixes={"reset_gradients": lambda sc: _with(sc, step_fn=None)},
        ),
        Scenario(
            "sgd_lr_far_too_small",
            "mlp",
            lambda: mlp(nn.ReLU, depth=3),
            features,
            optimizer=lambda p: torch.optim.SGD(p, lr=1e-5, momentum=0.9),
            steps=40,
            expect={"tiny_updates"},
            truth=lambda r: loss_stalls(r, within=0.1),
        ),
        Scenario(
            "adam_lr_far_too_small",
            "cnn",
            lambda: conv_net(nn.ReLU, depth=2),
            images,
            optimizer=lambda p: torch.optim.Adam(p, lr=1e-6),
            steps=40,
            expect={"tiny_updates"},
            truth=lambda r: loss_stalls(r, within=0.1),
        ),
        Scenario(
            "softmax_before_cross_entropy",
            "mlp",
            lambda: mlp(nn.ReLU, depth=3),
            features,
            loss_fn=softmax_cross_entropy,
            expect={"wrong_loss_input"},
            layer="6",
            # Probabilities as scores: with 4 classes the loss cannot go below log(1 + 3/e).
            truth=lambda r: tail(r.losses) > math.log(1 + 3 / math.e) - 1e-4,
            fixes={"fix_loss_input": lambda sc: _with(sc, loss_fn=CE)},
        ),
        Scenario(
            "mse_shapes_broadcast",
            "mlp",
            regression_mlp,
            regression_batch,
            loss_fn=broadcast_mse,
            expect={"wrong_loss_input"},
            layer="2",
            # Every prediction meets every target: the best is their mean (variance ~1).
            truth=lambda r: tail(r.losses) > 0.5,
            fixes={"fix_loss_input": lambda sc: _with(sc, loss_fn=aligned_mse)},
        ),
    ]


def suite() -> list[Scenario]:
    """All scenarios, faulty first (the same objects every call)."""
    return list(SCEN.values())


def _build_suite() -> list[Scenario]:
    s = SPECS
    faulty = [
        Scenario(
            "deep_sigmoid_mlp",
            "mlp",
            s["deep_sigmoid_mlp"].factory,
            features,
            expect={"vanishing_gradient"},
            layer="0",
            truth=lambda r: (
                loss_stalls(r) and first_layer_frozen_by_gradient(r, "0.weight", "16.weight")
            ),
        ),
        Scenario(
            "deep_tanh_tiny_init",
            "mlp",
            s["deep_tanh_tiny_init"].factory,
            features,
            expect={"vanishing_gradient"},
            layer="0",
            truth=lambda r: (
                loss_stalls(r) and first_layer_frozen_by_gradient(r, "0.weight", "12.weight")
            ),
        ),
        Scenario(
            "deep_sigmoid_cnn",
            "cnn",
            lambda: conv_net(nn.Sigmoid, depth=6),
            images,
            expect={"vanishing_gradient"},
            layer="0",
            truth=lambda r: (
                loss_stalls(r) and first_layer_frozen_by_gradient(r, "0.weight", "12.weight")
            ),
        ),
        Scenario(
            "vanilla_rnn_long",
            "rnn",
            s["vanilla_rnn_long"].factory,
            memory_sequences,
            loss_fn=MSE,
            optimizer=s["vanilla_rnn_long"].optimizer,
            steps=120,
            expect={"vanishing_gradient"},
            layer="rnn",
            truth=lambda r: tail(r.losses, 20) > 0.8,
        ),
        Scenario(
            "gan_saturating",
            "gan",
            networks.GAN,
            lambda k: gan_batch(64, k % 8),
            optimizer=gan_optimizer,
            steps=60,
            step_fn=_gan(True),
            expect={"vanishing_gradient"},
            allow={"saturated_activation"},
            layer="generator.fc",
            truth=generator_gradient_faded,
        ),
        Scenario(
            "relu_mlp_large_init",
            "mlp",
            s["relu_mlp_large_init"].factory,
            features,
            expect={"exploding_gradient"},
            allow={"nonfinite_gradient"},
            layer="0",
            truth=diverges,
        ),
        Scenario(
            "exploding_rnn",
            "rnn",
            s["exploding_rnn"].factory,
            lambda k: sequence_batch(32, 50, seed=k % 8),
            loss_fn=MSE,
            expect={"exploding_gradient"},
            allow={"nonfinite_gradient"},
            layer="rnn",
            truth=diverges,
        ),
        Scenario(
            "mlp_lr_too_high",
            "mlp",
            lambda: mlp(nn.ReLU, depth=3),
            features,
            optimizer=lambda p: torch.optim.SGD(p, lr=3.0),
            expect={"exploding_gradient"},
            allow={"nonfinite_gradient", "dead_relu"},
            truth=diverges,
        ),
        Scenario(
            "cnn_lr_too_high_kills_relus",
            "cnn",
            conv_net,
            images,
            optimizer=lambda p: torch.optim.SGD(p, lr=5.0),
            expect={"dead_relu"},
            allow={"exploding_gradient", "vanishing_gradient"},
            layer="1",
            truth=lambda r: (
                silent_unit_fraction(r, SCEN["cnn_lr_too_high_kills_relus"], "1") > 0.5
                and tail(r.losses) > 0.95 * math.log(10)  # no better than chance
            ),
        ),
        Scenario(
            "log_of_zero",
            "mlp",
            s["log_of_zero"].factory,
            features,
            loss_fn=nn.functional.nll_loss,
            optimizer=s["log_of_zero"].optimizer,
            expect={"nonfinite_gradient"},
            layer="3",
            truth=nonfinite_seen,
        ),
        Scenario(
            "divide_by_zero",
            "mlp",
            divide_by_zero,
            features,
            expect={"nonfinite_gradient"},
            allow={"dead_relu"},
            layer="2",
            truth=nonfinite_seen,
        ),
        Scenario(
            "softmax_overflow_late",
            "mlp",
            softmax_head_net,
            features,
            loss_fn=nll_of_probabilities,
            optimizer=lambda p: torch.optim.Adam(p, lr=0.3),
            expect={"nonfinite_gradient"},
            allow={"exploding_gradient"},
            layer="3",
            truth=nonfinite_seen,
        ),
        Scenario(
            "sqrt_at_zero_backward",
            "mlp",
            magnitude_net,
            zero_row_features,
            expect={"nonfinite_gradient"},
            layer="1",
            truth=nonfinite_seen,
        ),
        Scenario(
            "zero_init_mlp",
            "mlp",
            s["zero_init_mlp"].factory,
            features,
            expect={"symmetric_weights"},
            layer="0",
            truth=lambda r: identical_rows(r, "0.weight"),
        ),
        Scenario(
            "constant_init_mlp",
            "mlp",
            constant_mlp,
            features,
            expect={"symmetric_weights"},
            # Identical rows make degenerate gradients: a vanishing gap between layers is a
            # symptom of the symmetry, not a second fault (docs/definitions.md).
            allow={"vanishing_gradient"},
            layer="0",
            truth=lambda r: identical_rows(r, "0.weight") and loss_stalls(r),
        ),
        Scenario(
            "transformer_unused_head",
            "transformer",
            TransformerWithUnusedHead,
            tokens,
            optimizer=SPECS["transformer"].optimizer,
            expect={"no_gradient"},
            layer="pooler",
            truth=lambda r: never_got_grad(SCEN["transformer_unused_head"], "pooler.weight"),
            fixes={"check_graph": lambda sc: _with(sc, build=_frozen_pooler)},
        ),
        Scenario(
            "negative_bias_relu",
            "mlp",
            s["negative_bias_relu"].factory,
            features,
            expect={"dead_relu"},
            layer="1",
            truth=lambda r: silent_unit_fraction(r, SCEN["negative_bias_relu"], "1") > 0.5,
        ),
        Scenario(
            "dead_relu_cnn",
            "cnn",
            lambda: conv_net(conv_bias=-20.0),
            images,
            expect={"dead_relu"},
            layer="1",
            truth=lambda r: silent_unit_fraction(r, SCEN["dead_relu_cnn"], "1") > 0.5,
        ),
        Scenario(
            "saturated_sigmoid",
            "mlp",
            s["saturated_sigmoid"].factory,
            features,
            expect={"saturated_activation"},
            allow={"vanishing_gradient"},
            layer="1",
            truth=lambda r: saturated_fraction(r, SCEN["saturated_sigmoid"], "1", "sigmoid") > 0.5,
        ),
        Scenario(
            "saturated_tanh",
            "mlp",
            lambda: _scaled(mlp(nn.Tanh, depth=2, init=None), 30.0),
            features,
            expect={"saturated_activation"},
            allow={"vanishing_gradient"},
            layer="1",
            truth=lambda r: saturated_fraction(r, SCEN["saturated_tanh"], "1", "tanh") > 0.5,
        ),
        Scenario(
            "unused_layer",
            "mlp",
            Unused,
            features,
            expect={"no_gradient"},
            layer="aux",
            truth=lambda r: never_got_grad(SCEN["unused_layer"], "aux.weight"),
        ),
        Scenario(
            "detached_encoder",
            "mlp",
            Detached,
            features,
            expect={"no_gradient"},
            layer="encoder",
            truth=lambda r: never_got_grad(SCEN["detached_encoder"], "encoder.weight"),
            fixes={"check_graph": lambda sc: _with(sc, build=Connected)},
        ),
        *_loop_and_loss_scenarios(),
    ]
    healthy = [
        Scenario(
            "fnn",
            "mlp",
            s["fnn"].factory,
            lambda k: s["fnn"].example_batch(64, k % 8),
            loss_fn=MSE,
            truth=trains,
        ),
        Scenario(
            "relu_mlp_normal_sparsity", "mlp", lambda: mlp(nn.ReLU, depth=4), features, truth=trains
        ),
        Scenario(
            "cnn", "cnn", s["cnn"].factory, images, optimizer=s["cnn"].optimizer, truth=trains
        ),
        Scenario("batchnorm_cnn", "cnn", lambda: conv_net(depth=3, bn=True), images, truth=trains),
        Scenario("frozen_backbone", "mlp", FrozenBackbone, features, truth=trains),
        Scenario(
            "embedding_unused_rows",
            "mlp",
            EmbeddingBag,
            embedding_batch,
            optimizer=lambda p: torch.optim.Adam(p, lr=1e-2),
            truth=trains,
        ),
        Scenario(
            "near_convergence",
            "mlp",
            near_convergence,
            features,
            optimizer=lambda p: torch.optim.Adam(p, lr=1e-4),
            steps=20,
            truth=lambda r: all(math.isfinite(v) for v in r.losses) and tail(r.losses) < 0.5,
        ),
        Scenario(
            "grad_scaler",
            "mlp",
            lambda: mlp(nn.ReLU, depth=3),
            features,
            step_fn=scaled_step,
            truth=trains,
        ),
        Scenario(
            "gan_nonsaturating",
            "gan",
            networks.GAN,
            lambda k: gan_batch(64, k % 8),
            optimizer=gan_balanced_optimizer,
            steps=60,
            step_fn=_gan(False),
            truth=lambda r: all(math.isfinite(v) for v in r.losses),
        ),
        Scenario(
            "last_layer_100x_gradient",
            "mlp",
            lambda: mlp(nn.ReLU, depth=3, final_scale=0.01),
            features,
            truth=trains,
        ),
        Scenario(
            "zero_init_last_layer",
            "mlp",
            lambda: _zero_last(mlp(nn.ReLU, depth=3)),
            features,
            truth=trains,
        ),
        Scenario(
            "lstm_short", "lstm", s["lstm"].factory, short_sequences, loss_fn=MSE, truth=trains
        ),
        Scenario("rnn_short", "rnn", s["rnn"].factory, short_sequences, loss_fn=MSE, truth=trains),
        Scenario(
            "transformer",
            "transformer",
            s["transformer"].factory,
            tokens,
            optimizer=s["transformer"].optimizer,
            truth=trains,
        ),
        Scenario(
            "attention_small_query_key_gradients",
            "transformer",
            QKAttentionClassifier,
            tokens,
            optimizer=lambda p: torch.optim.Adam(p, lr=1e-3),
            truth=trains,
        ),
        Scenario(
            "tanh_xavier_adam",
            "mlp",
            s["deep_tanh_xavier"].factory,
            features,
            optimizer=lambda p: torch.optim.Adam(p, lr=1e-3),
            truth=trains,
        ),
        Scenario(
            "dropout_mlp",
            "mlp",
            lambda: _with_dropout(mlp(nn.ReLU, depth=3)),
            features,
            truth=trains,
        ),
        Scenario(
            "leaky_relu_mlp", "mlp", lambda: mlp(nn.LeakyReLU, depth=5), features, truth=trains
        ),
        Scenario(
            "lstm_long_memory",
            "lstm",
            s["lstm_long"].factory,
            memory_sequences,
            loss_fn=MSE,
            optimizer=s["lstm_long"].optimizer,
            steps=120,
            truth=trains,
        ),
    ]
    return faulty + healthy


def _scaled(model: nn.Sequential, factor: float) -> nn.Sequential:
    with torch.no_grad():
        for m in list(model)[:-1]:
            if isinstance(m, nn.Linear):
                m.weight.mul_(factor)
    return model


def _zero_last(model: nn.Sequential) -> nn.Sequential:
    nn.init.zeros_(model[-1].weight)
    nn.init.zeros_(model[-1].bias)
    return model


def _with_dropout(model: nn.Sequential) -> nn.Sequential:
    layers: list[nn.Module] = []
    for m in model:
        layers.append(m)
        if isinstance(m, nn.ReLU):
            layers.append(nn.Dropout(0.3))
    return nn.Sequential(*layers)


SCEN = {scenario.name: scenario for scenario in _build_suite()}


# -- applying a suggestion -----------------------------------------------------------
MODEL_KINDS = {
    "use_relu",
    "kaiming_init",
    "xavier_init",
    "orthogonal_init",
    "random_init",
    "add_batchnorm",
    "use_lstm_or_gru",
    "add_layernorm",
}


def _exec_on_model(build: Callable[[], nn.Module], code: str) -> Callable[[], nn.Module]:
    def built() -> nn.Module:
        namespace = {"model": build(), "torch": torch, "nn": nn}
        exec(code, namespace)  # noqa: S102 - applying the snippet exactly as printed
        return namespace["model"]

    return built


def _exec_on_optimizer(make: Callable, code: str) -> Callable:
    def built(params: Any) -> torch.optim.Optimizer:
        namespace = {"optimizer": make(params), "torch": torch}
        exec(code, namespace)  # noqa: S102
        return namespace["optimizer"]

    return built


def apply_suggestion(scenario: Scenario, suggestion: gradscope.Suggestion) -> Scenario | None:
    """The scenario with the suggestion applied as its code says (None: cannot apply)."""
    kind = suggestion.kind
    if kind in scenario.fixes:
        return scenario.fixes[kind](scenario)
    if kind == "clip_grad_norm":
        return _with(scenario, clip=1.0)
    if kind in ("lower_lr", "raise_lr"):
        return _with(scenario, optimizer=_exec_on_optimizer(scenario.optimizer, suggestion.code))
    if kind in MODEL_KINDS:
        return _with(scenario, build=_exec_on_model(scenario.build, suggestion.code))
    return None


def fix_helps(scenario: Scenario, report: gradscope.Report) -> tuple[str, bool]:
    """Apply the first suggestion of the scenario's main finding; does training get better?"""
    kind = sorted(scenario.expect)[0]
    finding = next(f for f in report.findings if f.kind == kind)
    first = finding.suggestions[0]
    fixed = apply_suggestion(scenario, first)
    if fixed is None:
        return first.kind, False
    before, after = plain(scenario), plain(fixed)
    if kind == "no_gradient":
        again = watched(fixed).report
        return first.kind, "no_gradient" not in again.kinds() and tail(after.losses) <= 1.05 * tail(
            before.losses
        )
    return first.kind, tail(after.losses) < 0.95 * tail(before.losses)


def _freeze_aux(scenario: Scenario) -> Scenario:
    def build() -> nn.Module:
        model = Unused()
        for p in model.aux.parameters():
            p.requires_grad_(False)
        return model

    return _with(scenario, build=build)


FIXES: dict[str, dict[str, Callable[[Scenario], Scenario]]] = {
    "log_of_zero": {
        "fix_loss_numerics": lambda sc: _with(sc, build=SPECS["stable_log_softmax"].factory)
    },
    "divide_by_zero": {
        "fix_loss_numerics": lambda sc: _with(sc, build=lambda: divide_by_zero(True))
    },
    "softmax_overflow_late": {
        "fix_loss_numerics": lambda sc: _with(sc, build=lambda: softmax_head_net(True))
    },
    "sqrt_at_zero_backward": {
        "fix_loss_numerics": lambda sc: _with(sc, build=lambda: magnitude_net(True))
    },
    "gan_saturating": {"use_nonsaturating_loss": lambda sc: _with(sc, step_fn=_gan(False))},
    "unused_layer": {"check_graph": _freeze_aux},
}
for _name, _fixes in FIXES.items():
    SCEN[_name].fixes.update(_fixes)
