"""The loss function given the wrong kind of input is named (wrong_loss_input), on the
output layer, with the corrected call; every right way of writing the same loss is not."""

from __future__ import annotations

import warnings

import pytest
import torch
from helpers import five_class_batches
from torch import nn

import gradscope
from gradscope.loss_input import fault

F = nn.functional


def _run(loss_fn, head: nn.Module | None = None, steps: int = 40):
    torch.manual_seed(0)
    layers = [nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 5)]
    model = nn.Sequential(*layers, *([head] if head is not None else []))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    batches = five_class_batches()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with gradscope.watch(model, optimizer=opt) as scope:
            for step in range(steps):
                x, y = batches[step % len(batches)]
                opt.zero_grad()
                loss = loss_fn(model(x), y)
                scope.log_loss(loss)
                loss.backward()
                opt.step()
    return model, batches, scope.report()


def _wrong(report):
    return [f for f in report.findings if f.kind == "wrong_loss_input"]


def _one_hot(y: torch.Tensor) -> torch.Tensor:
    return F.one_hot(y, 5).float()


def test_softmax_before_cross_entropy_is_named_with_the_raw_scores_as_the_fix():
    model, batches, report = _run(lambda z, y: F.cross_entropy(F.softmax(z, dim=1), y))
    (finding,) = _wrong(report)
    assert (finding.layer, finding.severity) == ("2", "warning")
    assert "cross_entropy is given probabilities" in finding.message
    first = finding.suggestions[0]
    assert first.kind == "fix_loss_input"
    assert "loss = F.cross_entropy(logits, y)  # applies log_softmax itself" in first.code
    tried = gradscope.trial(model, batches, F.cross_entropy, report, steps=5)
    assert [(r.kind, r.needs_code_change) for r in tried.results] == [("fix_loss_input", True)]


def test_a_softmax_module_at_the_end_of_the_model_is_the_layer_named():
    _, _, report = _run(nn.CrossEntropyLoss(), head=nn.Softmax(dim=1))
    (finding,) = _wrong(report)
    assert finding.layer == "3"


def test_a_sigmoid_before_bce_with_logits_is_named():
    _, _, report = _run(
        lambda z, y: F.binary_cross_entropy_with_logits(torch.sigmoid(z), _one_hot(y))
    )
    (finding,) = _wrong(report)
    assert finding.severity == "warning" and "sigmoid's output" in finding.message


def test_nll_on_raw_scores_is_an_error_with_log_softmax_as_the_fix():
    _, _, report = _run(lambda z, y: F.nll_loss(z, y), steps=12)
    (finding,) = _wrong(report)
    assert finding.severity == "error"
    assert "F.log_softmax(scores, dim=1)" in finding.suggestions[0].code


@pytest.mark.parametrize(
    "loss_fn",
    [
        F.cross_entropy,
        lambda z, y: F.nll_loss(F.log_softmax(z, dim=1), y),
        lambda z, y: F.nll_loss(torch.log(F.softmax(z, dim=1)), y),  # written out: fine
        lambda z, y: F.binary_cross_entropy_with_logits(z, _one_hot(y)),
        lambda z, y: F.binary_cross_entropy(torch.sigmoid(z), _one_hot(y)),
        lambda z, y: F.cross_entropy(z.view(-1, 5), y.view(-1)),
    ],
)
def test_every_right_way_of_writing_the_loss_is_silent(loss_fn):
    assert _wrong(_run(loss_fn)[2]) == []


def test_a_loss_whose_graph_is_gone_or_not_recognised_is_not_judged():
    z = torch.randn(8, 5, requires_grad=True)
    y = torch.randint(0, 5, (8,))
    assert fault(F.cross_entropy(z, y).detach()) is None
    assert fault(F.cross_entropy(z, y, label_smoothing=0.1)) is None  # not one loss node
    assert float(fault(F.cross_entropy(z, y))) == 0.0


def test_mse_on_shapes_that_broadcast_is_an_error_and_matching_shapes_are_not():
    def regression(make_loss):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 1))
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        g = torch.Generator().manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PyTorch's own one-time shape warning
            with gradscope.watch(model, optimizer=opt) as scope:
                for _ in range(30):
                    x = torch.randn(32, 4, generator=g)
                    opt.zero_grad()
                    loss = make_loss(model(x), x.sum(1))  # target (N,)
                    scope.log_loss(loss)
                    loss.backward()
                    opt.step()
        return _wrong(scope.report())

    (finding,) = regression(F.mse_loss)  # prediction (N, 1): broadcast to (N, N)
    assert finding.severity == "error" and "(N, N)" in finding.message
    assert "pred.squeeze(-1)" in finding.suggestions[0].code
    assert regression(lambda p, y: F.mse_loss(p.squeeze(-1), y)) == []
    # One value per sample fitted to several targets of that sample (a critic's value
    # against the returns of its rollout): expanded on purpose, every sample meets its own.
    returns = lambda y: torch.stack([y, y + 0.5, y - 0.5], dim=1)  # noqa: E731
    assert regression(lambda p, y: F.mse_loss(p.expand_as(returns(y)), returns(y))) == []
    assert regression(lambda p, y: F.mse_loss(p, returns(y))) == []


class TwoHeads(nn.Module):
    """A class head and a regression head on one trunk (the class head runs first)."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(10, 32), nn.ReLU())
        self.cls, self.reg = nn.Linear(32, 3), nn.Linear(32, 1)

    def forward(self, x):
        h = self.trunk(x)
        return self.cls(h), self.reg(h)


@pytest.mark.parametrize("mistake", ["softmax", "broadcast"])
def test_a_mistake_in_one_term_of_a_summed_loss_names_that_terms_head(mistake):
    """A stranger session's multi-task and actor-critic loops: `ce + 0.5 * mse` with a
    softmax before the cross-entropy, or an (N, 1) prediction against (N,) targets in the
    MSE, went unseen (only a loss that is one loss function's output was read), and a
    single-term mistake named the head called last."""
    torch.manual_seed(0)
    model = TwoHeads()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    with gradscope.watch(model, optimizer=opt) as scope:
        for k in range(30):
            g = torch.Generator().manual_seed(k)
            x = torch.randn(64, 10, generator=g)
            y, target = (x[:, 0] > 0).long() + (x[:, 1] > 0).long(), x[:, 2]
            scores, value = model(x)
            if mistake == "softmax":
                scores = torch.softmax(scores, dim=-1)
            # The broadcast: the (N, 1) value against (N,) targets.
            prediction = value if mistake == "broadcast" else value[:, 0]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # mse_loss warns about the broadcast
                mse = nn.functional.mse_loss(prediction, target)
            loss = nn.functional.cross_entropy(scores, y) + 0.5 * mse
            scope.log_loss(loss)
            opt.zero_grad()
            loss.backward()
            opt.step()
    (finding,) = _wrong(scope.report())
    assert finding.layer == ("cls" if mistake == "softmax" else "reg")

