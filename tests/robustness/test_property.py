"""Property: on random MLP/CNN stacks and any option mix, training with gradscope is
bit-identical to training without it, and the report always comes out."""

from __future__ import annotations

import warnings

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import gradscope
from gradscope.errors import GradscopeWarning

torch.set_num_threads(1)

ACTS = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "gelu": nn.GELU}


@st.composite
def stacks(draw):
    """(kind, layer spec, activation names, input shape, classes)."""
    kind = draw(st.sampled_from(["mlp", "cnn"]))
    depth = draw(st.integers(1, 4))
    widths = draw(st.lists(st.integers(1, 12), min_size=depth, max_size=depth))
    acts = draw(st.lists(st.sampled_from(sorted(ACTS)), min_size=depth, max_size=depth))
    inplace = draw(st.booleans())
    batch = draw(st.integers(1, 6))
    classes = draw(st.integers(2, 4))
    return kind, widths, acts, inplace, batch, classes


def build(spec, seed: int) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    kind, widths, acts, inplace, batch, classes = spec
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    if kind == "mlp":
        width = 5
        for w, a in zip(widths, acts, strict=True):
            layers += [nn.Linear(width, w), ACTS[a](inplace=True) if inplace and a == "relu"
                       else ACTS[a]()]
            width = w
        layers.append(nn.Linear(width, classes))
        shape: tuple[int, ...] = (batch, 5)
    else:
        channels = 2
        for w, a in zip(widths, acts, strict=True):
            layers += [nn.Conv2d(channels, w, 3, padding=1), ACTS[a]()]
            channels = w
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, classes)]
        shape = (batch, 2, 6, 6)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(shape, generator=g)
    y = torch.randint(0, classes, (batch,), generator=g)
    return nn.Sequential(*layers), x, y


def train(model, x, y, steps: int, options: dict | None, with_adam: bool):
    opt = (torch.optim.Adam if with_adam else torch.optim.SGD)(model.parameters(), lr=0.05)
    losses = []

    def loop(scope=None):
        for _ in range(steps):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            if scope is not None:
                scope.log_loss(loss)
            loss.backward()
            opt.step()
            losses.append(loss.detach().clone())

    if options is None:
        loop()
        return losses, None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GradscopeWarning)
        with gradscope.watch(model, optimizer=opt, **options) as scope:
            loop(scope)
    return losses, scope.report()


options_strategy = st.fixed_dictionaries(
    {},
    optional={
        "every": st.integers(1, 3),
        "budget": st.sampled_from([0.01, 0.03, 0.5]),
        "full": st.booleans(),
        "nan_origin": st.booleans(),
        "detail_every": st.integers(1, 4),
    },
)


@settings(
    max_examples=40,  # about 15 s on one thread
    deadline=None,
    derandomize=True,  # seeded: the same examples on every run
    suppress_health_check=[HealthCheck.too_slow],
)
@given(spec=stacks(), options=options_strategy, steps=st.integers(1, 7), adam=st.booleans())
def test_training_is_bit_identical_with_and_without_gradscope(spec, options, steps, adam):
    plain_model, x, y = build(spec, seed=0)
    watched_model, _, _ = build(spec, seed=0)
    plain_losses, _ = train(plain_model, x, y, steps, None, adam)
    watched_losses, report = train(watched_model, x, y, steps, options, adam)
    assert all(torch.equal(a, b) for a, b in zip(plain_losses, watched_losses, strict=True))
    for a, b in zip(plain_model.parameters(), watched_model.parameters(), strict=True):
        assert torch.equal(a, b)
    assert report.history.recorded >= 1
    assert report.to_json()
    assert not watched_model._forward_hooks  # detached
