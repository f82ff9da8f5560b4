"""Reference models, faulty twins and their fixes; the notes' losses and optimizers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gradscope
from gradscope.demo import train_spec
from gradscope.models import builtin_specs
from gradscope.models.networks import LSTMNet, RNNNet
from gradscope.reference import available_specs

SPECS = builtin_specs()
TWINS = [name for name, spec in SPECS.items() if spec.problem]
#: Where each twin's problem must be reported.
EXPECTED_LAYER = {
    "deep_sigmoid_mlp": "0",
    "deep_tanh_tiny_init": "0",
    "vanilla_rnn_long": "rnn",
    "relu_mlp_large_init": "0",
    "exploding_rnn": "rnn",
    "zero_init_mlp": "0",
    "negative_bias_relu": "1",
    "saturated_sigmoid": "1",
    "log_of_zero": "3",
    "gan_saturating": "generator.fc",
}


def test_every_reference_model_of_the_notes_ships():
    assert {"fnn", "cnn", "cnn_small", "rnn", "lstm", "transformer", "gan"} <= set(SPECS)
    assert set(EXPECTED_LAYER) == set(TWINS)
    assert set(SPECS) <= set(available_specs())  # offered through the plugin hook


@pytest.mark.parametrize("name", sorted(SPECS))
@pytest.mark.parametrize("n", [1, 5])
def test_models_accept_any_batch_size(name, n):
    spec = SPECS[name]
    x, y = spec.example_batch(n)
    out = spec.factory()(x)
    out = getattr(out, "logits", out)  # transformers' BERT returns an output object
    assert out.shape[0] == n
    if spec.step is None:
        assert spec.loss_fn(out, y).dim() == 0


@pytest.mark.parametrize("name", TWINS)
def test_each_twin_shows_its_problem_on_the_right_layer_and_its_fix_is_clean(name):
    spec = SPECS[name]
    faulty = train_spec(spec, spec.demo_steps)
    layers = {f.layer for f in faulty.at_least("warning") if f.kind == spec.problem}
    assert EXPECTED_LAYER[name] in layers, str(faulty)
    fixed = train_spec(SPECS[spec.fixed_by], spec.demo_steps)
    assert fixed.at_least("warning") == [], str(fixed)
    bad, good = faulty.history.losses(), fixed.history.losses()
    tail_bad = bad[-5:][torch.isfinite(bad[-5:])]
    tail_good = float(good[-5:].median())
    assert tail_bad.numel() == 0 or tail_good < float(tail_bad.median())


def test_demo_prints_findings_then_both_loss_curves():
    from click.testing import CliRunner

    from gradscope.cli import main

    result = CliRunner().invoke(main, ["demo", "zero_init_mlp"])
    assert result.exit_code == 0, result.output
    assert "symmetric_weights" in result.output
    assert "fix (random_init)" in result.output
    assert "loss of faulty model zero_init_mlp:" in result.output
    assert "loss of fixed model random_init_mlp:" in result.output


def _hinge(out, y):
    return nn.functional.relu(1 - (2 * y.float() - 1).unsqueeze(1) * out[:, :1]).mean()


def _triplet(out, y):
    anchor, positive, negative = out[0::3], out[1::3], out[2::3]
    k = min(len(anchor), len(positive), len(negative))
    return nn.functional.triplet_margin_loss(anchor[:k], positive[:k], negative[:k])


LOSSES = {
    "hinge": _hinge,
    "cross_entropy": nn.functional.cross_entropy,
    "bce": lambda out, y: nn.functional.binary_cross_entropy(
        torch.sigmoid(out[:, 0]), (y > 0).float()
    ),
    "mse": lambda out, y: nn.functional.mse_loss(out[:, 0], y.float()),
    "l1": lambda out, y: nn.functional.l1_loss(out[:, 0], y.float()),
    "triplet": _triplet,
}
OPTIMIZERS = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.05),
    "momentum": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
    "adagrad": lambda p: torch.optim.Adagrad(p, lr=0.05),
    "rmsprop": lambda p: torch.optim.RMSprop(p, lr=0.001),
    "adam": lambda p: torch.optim.Adam(p, lr=0.001),
}


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_watch_measures_updates_exactly_with_each_loss_and_optimizer(loss, optimizer):
    spec = SPECS["deep_relu_mlp"]
    model = spec.factory()
    opt = OPTIMIZERS[optimizer](model.parameters())
    x, y = spec.example_batch(48)
    with gradscope.watch(model, optimizer=opt, full=True) as scope:
        for _ in range(3):
            before = [p.detach().clone() for p in model.parameters()]
            opt.zero_grad()
            value = LOSSES[loss](model(x), y)
            scope.log_loss(value)
            value.backward()
            opt.step()
    moved = [
        float((p.detach() - b).norm()) for p, b in zip(model.parameters(), before, strict=True)
    ]
    recorded = scope.history.records[-1].grads["update_norm"]
    assert recorded == pytest.approx(moved, rel=1e-4, abs=1e-9)
    assert scope.report().plugin_errors == []


def test_a_zero_one_loss_gets_a_clear_error():
    spec = SPECS["fnn"]

    def zero_one(out, y):
        return (out.round() != y.round()).float().mean()

    with pytest.raises(gradscope.InputError, match="0-1 loss is not differentiable"):
        gradscope.diagnose(spec.factory(), spec.example_batch(), zero_one, steps=2)


def test_gan_trains_both_players_under_one_scope():
    spec = SPECS["gan"]
    report = train_spec(spec, 5)
    seen = {report.history.param_names[i] for i, n in enumerate(report.history.grad_seen) if n}
    assert {"generator.fc.weight", "discriminator.fc.weight"} <= seen


def test_rnn_and_lstm_match_the_notes():
    rnn, lstm = RNNNet(), LSTMNet()
    assert (rnn.rnn.input_size, rnn.rnn.hidden_size, rnn.rnn.batch_first) == (10, 20, True)
    assert isinstance(lstm.rnn, nn.LSTM)


def test_bert_from_a_config_when_transformers_is_installed():
    pytest.importorskip("transformers")
    spec = builtin_specs()["bert"]
    report = train_spec(spec, 6)
    assert report.at_least("warning") == [], str(report)
    assert report.history.recorded == 6
    assert any(name.startswith("bert.encoder") for name in report.history.module_names)
