"""The loss a constant prediction scores: measured from the loss's own graph, and the harm
it shows (a loss that fell from a bad start only to the level of predicting the average)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradscope
from gradscope.constant_loss import ConstantLoss, loss_node


def _logits(n: int = 64, classes: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, classes, generator=g, requires_grad=True), torch.randint(
        0, classes, (n,), generator=g
    )


def test_cross_entropy_is_compared_with_the_entropy_of_the_class_frequencies():
    scores, target = _logits()
    term, constant = ConstantLoss().measure(F.cross_entropy(scores, target))
    freq = torch.bincount(target, minlength=4).float() / target.numel()
    assert float(term) == pytest.approx(float(F.cross_entropy(scores, target)), rel=1e-5)
    assert float(constant) == pytest.approx(float(-(freq * freq.log()).sum()), rel=1e-5)


def test_a_language_models_token_loss_with_ignored_positions():
    logits = torch.randn(2, 50257, 16, requires_grad=True)  # (batch, vocab, positions)
    target = torch.randint(0, 50257, (2, 16))
    target[:, :4] = -100  # padding, ignored as cross_entropy ignores it
    term, constant = ConstantLoss().measure(F.cross_entropy(logits, target))
    assert float(term) == pytest.approx(float(F.cross_entropy(logits, target)), rel=1e-5)
    assert float(constant) == pytest.approx(math.log(24), rel=0.05)  # 24 distinct tokens


def test_a_scaled_mean_squared_error_is_measured_in_its_own_units():
    prediction = torch.randn(32, 3, requires_grad=True)
    target = torch.randn(32, 3) * torch.tensor([1.0, 2.0, 3.0])
    term, constant = ConstantLoss().measure(5.0 * F.mse_loss(prediction, target))
    assert float(term) == pytest.approx(float(F.mse_loss(prediction, target)), rel=1e-5)
    assert float(constant) == pytest.approx(float(target.var(dim=0, unbiased=False).mean()))


def test_the_hinge_constant_favours_the_frequent_classes():
    scores = torch.zeros(8, 4, requires_grad=True)
    target = torch.tensor([0, 0, 0, 0, 0, 1, 2, 3])
    term, constant = ConstantLoss().measure(F.multi_margin_loss(scores, target))
    assert float(term) == pytest.approx(0.75)  # an all-equal output: (C - 1) / C
    assert float(constant) < 0.75


def test_an_l1_loss_on_the_models_output_reads_its_targets_from_the_residual():
    output = torch.randn(16, 2, requires_grad=True) * 1.0  # a non-leaf, as a model's output is
    target = torch.tensor([[0.0, 1.0]] * 12 + [[5.0, -3.0]] * 4)
    term, constant = ConstantLoss().measure(F.l1_loss(output, target), output)
    assert float(term) == pytest.approx(float(F.l1_loss(output, target)), rel=1e-5)
    # The per-feature median is (0, 1): four of sixteen targets are 5 and 4 away from it.
    assert float(constant) == pytest.approx((4 * 5 + 4 * 4) / 32, rel=1e-5)
    other = torch.randn(16, 2, requires_grad=True) * 1.0
    assert ConstantLoss().measure(F.l1_loss(output, target), other) is None  # not its output


def test_an_l1_losss_constant_is_the_pool_of_measured_batches_not_each_batch_alone():
    """Two batches, each all one value: each alone is fitted by its own constant (loss 0),
    while over both the best constant (the median, anywhere between 0 and 4) is 2 away
    from every target on average."""
    meter = ConstantLoss()
    for value in (0.0, 4.0):
        output = torch.randn(8, 3, requires_grad=True) * 1.0
        target = torch.full((8, 3), value)
        _, constant = meter.measure(F.l1_loss(output, target), output)
    assert float(constant) == pytest.approx(2.0, rel=1e-5)


def test_an_l1_loss_under_bfloat16_autocast_is_measured_through_its_float32_cast():
    model = nn.Linear(4, 2)
    x, target = torch.randn(16, 4), torch.tensor([[0.0, 1.0]] * 12 + [[5.0, -3.0]] * 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = model(x)  # bfloat16; l1_loss runs in float32 behind a cast
        loss = F.l1_loss(output, target)
    term, constant = ConstantLoss().measure(loss, output)
    assert float(term) == pytest.approx(float(loss), rel=1e-5)
    assert float(constant) == pytest.approx((4 * 5 + 4 * 4) / 32, rel=1e-2)


def test_nothing_is_measured_once_the_graph_is_gone_or_the_loss_is_not_recognised():
    scores, target = _logits()
    meter = ConstantLoss()
    loss = F.cross_entropy(scores, target)
    loss.backward()
    assert meter.measure(loss) is None  # logged after backward(): the saved targets are freed
    assert meter.measure(F.l1_loss(scores, F.one_hot(target, 4).float())) is None  # no output
    two = F.cross_entropy(scores, target) + F.mse_loss(scores, torch.zeros_like(scores))
    assert meter.measure(two) is None  # a sum of losses has no single constant


def test_a_discriminators_real_plus_fake_loss_is_compared_with_a_guessing_discriminator():
    g = torch.Generator().manual_seed(0)
    real, fake = (torch.randn(16, 1, generator=g, requires_grad=True) for _ in range(2))
    bce = F.binary_cross_entropy_with_logits
    loss = (bce(real, torch.ones_like(real)) + bce(fake, torch.zeros_like(fake))) / 2
    meter = ConstantLoss()
    meter.pool_targets(loss)  # a light step's targets join the pools of their own term
    term, constant = meter.measure(loss)
    assert float(term) == pytest.approx(float(2 * loss), rel=1e-5)  # the scale is the logged loss's
    assert float(constant) == pytest.approx(2 * math.log(2), rel=1e-5)  # every sample scored 0.5
    probs = torch.sigmoid(real)  # one term on probabilities, the other on logits
    mixed = F.binary_cross_entropy(probs, torch.ones_like(probs)) + bce(fake, 0 * fake.detach())
    assert float(ConstantLoss().measure(mixed)[1]) == pytest.approx(2 * math.log(2), rel=1e-5)


def test_a_triplet_losss_constant_is_its_margin_whatever_the_scale():
    g = torch.Generator().manual_seed(0)
    anchor, positive, negative = (torch.randn(16, 8, generator=g) for _ in range(3))
    anchor.requires_grad_(True)
    loss = F.triplet_margin_loss(anchor, positive, negative, margin=0.7)
    term, constant = ConstantLoss().measure(1e4 * loss)  # a constant embedding scores 0.7
    assert float(term) == pytest.approx(float(loss), rel=1e-5)
    assert float(constant) == pytest.approx(0.7, rel=1e-4)
    # Another clamped loss (a hand-written hinge) is not taken for a triplet loss.
    hinge = (1 - anchor.sum(1) * torch.sign(positive.sum(1))).clamp(min=0).mean()
    assert ConstantLoss().measure(hinge) is None
    assert loss_node(hinge) is None  # nor counted as a loss term anywhere else


class _FirstStepRNN(nn.Module):
    """A tanh RNN over 60 steps whose label is the sign of the first input; its head starts
    with a large bias, so the loss first falls a long way just by learning the average."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.RNN(4, 16, batch_first=True)
        self.head = nn.Linear(16, 2)
        with torch.no_grad():
            self.head.bias.copy_(torch.tensor([4.0, -4.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x)[0][:, -1])


def _train(log_before_backward: bool) -> gradscope.Report:
    torch.manual_seed(0)
    model = _FirstStepRNN()
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    with gradscope.watch(model, optimizer=opt) as scope:
        for step in range(40):
            g = torch.Generator().manual_seed(step % 8)
            x = torch.randn(64, 60, 4, generator=g)
            y = (x[:, 0, 0] > 0).long()
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            if log_before_backward:
                scope.log_loss(loss)
            loss.backward()
            if not log_before_backward:
                scope.log_loss(loss)
            opt.step()
    return scope.report()


def test_a_loss_that_fell_only_to_the_constant_level_shows_the_vanishing_gradients_harm():
    report = _train(log_before_backward=True)
    losses = report.history.losses()
    assert float(losses[:3].median()) > 2 * float(losses[-5:].median())  # fell a long way
    found = [f for f in report.at_least("warning") if f.kind == "vanishing_gradient"]
    assert [f.layer for f in found] == ["rnn"], str(report)
    assert "no better than what predicting the same output for every input" in found[0].message
    assert found[0].evidence["loss_vs_constant"] > 0.9
    assert math.log(2) * 0.9 < found[0].evidence["loss_last"] < math.log(2) * 1.1


def test_a_loss_logged_after_backward_cannot_be_compared_and_the_finding_stays_info():
    report = _train(log_before_backward=False)
    found = [f for f in report.findings if f.kind == "vanishing_gradient"]
    assert [(f.layer, f.severity) for f in found] == [("rnn", "info")]
    assert math.isnan(found[0].evidence["loss_vs_constant"])


class _HeadPlusSide(nn.Module):
    """A head whose output the forward adds to after the last module ran: the L1 loss's
    prediction is what the model returns, not any module's output."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(4, 2)
        self.side = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x) + 0.1 * self.side(x).detach()


def test_an_l1_losss_constant_is_measured_when_the_model_returns_more_than_its_last_module():
    torch.manual_seed(0)
    model = _HeadPlusSide()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    target = torch.tensor([[0.0, 1.0]] * 12 + [[5.0, -3.0]] * 4)
    with gradscope.watch(model, optimizer=opt) as scope:
        for _ in range(3):
            opt.zero_grad()
            loss = F.l1_loss(model(torch.randn(16, 4)), target)
            scope.log_loss(loss)
            loss.backward()
            opt.step()
    constant = scope.history.act_series("constant_loss")
    measured = constant[~torch.isnan(constant)]
    assert len(measured) == 2  # every step after the first (no output row yet)
    assert float(measured[-1]) == pytest.approx((4 * 5 + 4 * 4) / 32, rel=1e-5)


def test_the_constant_is_judged_on_every_steps_targets_not_only_the_measured_ones():
    """Each batch holds one class: 0 on steps 0-6, 1 on 7-13, 2 on 14-20.  Over the run
    the classes are equally frequent (the best constant's loss is log 3), while the detail
    steps alone (steps 0-9, then one in 10) see them 7:4:1.  Light steps pool their
    targets too."""
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with gradscope.watch(model, optimizer=opt) as scope:
        for step in range(21):
            x = torch.randn(8, 4, generator=torch.Generator().manual_seed(step))
            y = torch.full((8,), step // 7)
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            scope.log_loss(loss)
            loss.backward()
            opt.step()
    history = scope.history
    constant = history.act_series("constant_loss")[:, 0]  # the model's one module
    measured = constant[~torch.isnan(constant)]
    assert history.steps[-1] == 20 and len(measured) < 15  # the detail steps only
    assert float(measured[-1]) == pytest.approx(math.log(3), rel=1e-6)


def test_held_targets_changed_in_place_before_they_are_counted_are_dropped():
    """A light step only holds its targets; a loop that refills one target buffer in place
    would otherwise have every held step counted with the latest labels."""
    meter = ConstantLoss()
    scores = torch.zeros(4, 3, requires_grad=True)
    kept, refilled = torch.tensor([0, 0, 0, 0]), torch.tensor([1, 1, 1, 1])
    meter.pool_targets(F.cross_entropy(scores, kept))
    meter.pool_targets(F.cross_entropy(scores, refilled))
    refilled.fill_(2)  # the next batch's labels, written into the same buffer
    _, constant = meter.measure(F.cross_entropy(scores, torch.tensor([1, 1, 1, 1])))
    # Pooled: four 0s and this step's four 1s (the refilled step dropped): entropy log 2.
    assert float(constant) == pytest.approx(math.log(2), rel=1e-6)
