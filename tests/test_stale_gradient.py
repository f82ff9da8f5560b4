"""A loop that never resets its gradients is named for it (stale_gradient), with the
canonical step as the fix; every loop that does reset them, in any of the usual ways,
stays silent."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

import gradscope
from gradscope import Report
from gradscope.carryover import CarryCheck, carried_share
from gradscope.judge import rejudge

F = nn.functional


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 5)
    )


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(512, 20, generator=g)
    return x, x[:, :5].argmax(1)


def _run(reset: str = "optimizer", micro: int = 1, steps: int = 40, clip: bool = False):
    """SGD with momentum on a 5-class problem; ``reset`` says how (or whether) the loop
    resets the gradients; ``micro`` micro-batches per optimizer step."""
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x, y = _data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with gradscope.watch(model, optimizer=opt) as scope:
            for step in range(steps):
                if reset == "optimizer":
                    opt.zero_grad()
                elif reset == "in place":
                    opt.zero_grad(set_to_none=False)
                elif reset == "model":
                    model.zero_grad()
                start = (64 * step) % 512
                xb, yb = x[start : start + 64], y[start : start + 64]
                for xs, ys in zip(xb.chunk(micro), yb.chunk(micro), strict=True):
                    loss = F.cross_entropy(model(xs), ys) / micro
                    if reset == "after forward":
                        opt.zero_grad()  # between forward and backward: fine
                    scope.log_loss(loss)
                    loss.backward()
                if clip:
                    nn.utils.clip_grad_norm_(model.parameters(), 0.1)
                opt.step()
    return scope


def test_a_loop_without_zero_grad_is_named_first_with_the_canonical_step():
    # The stranger's case C4: four micro-batches per step and zero_grad() never called.
    report = _run(reset="never", micro=4).report()
    first = report.findings[0]
    assert (first.kind, first.severity, first.step) == ("stale_gradient", "error", 1)
    assert first.message.startswith("The gradients are not reset between optimizer steps")
    assert first.suggestions[0].kind == "reset_gradients"
    assert "optimizer.zero_grad()  # once per step, before backward()" in (
        first.suggestions[0].code
    )
    assert first.evidence["largest_share"] > 0.5


@pytest.mark.parametrize("clip", [False, True])
def test_clipping_does_not_hide_it(clip):
    report = _run(reset="never", clip=clip).report()
    assert [f.kind for f in report.findings if f.kind == "stale_gradient"] == ["stale_gradient"]


@pytest.mark.parametrize(
    ("reset", "micro"),
    [
        ("optimizer", 1),
        ("optimizer", 4),  # gradient accumulation, reset once per optimizer step
        ("in place", 1),
        ("in place", 4),
        ("model", 1),
        ("after forward", 1),
    ],
)
def test_every_usual_way_of_resetting_stays_silent(reset, micro):
    scope = _run(reset=reset, micro=micro)
    report = scope.report()
    assert [f for f in report.findings if f.kind == "stale_gradient"] == []
    checks = [
        v for r in scope.history.records for v in r.grads["grad_carried"] if not math.isnan(v)
    ]
    assert len(checks) >= 10 and set(checks) == {0.0}  # it looked, and saw resets


def test_the_saved_run_is_judged_again_with_the_same_finding():
    saved = Report.from_json(_run(reset="never", steps=15).report().to_json())
    assert "stale_gradient" in [f.kind for f in rejudge(saved, {}).findings]
    raised = rejudge(saved, {"stale_gradient": {"carried_share": 1.01}})
    assert "stale_gradient" not in [f.kind for f in raised.findings]


def test_the_share_is_exact_for_reset_kept_and_undecidable_gradients():
    torch.manual_seed(0)
    previous, incoming = torch.randn(100), torch.randn(100)
    assert carried_share(0.5 * incoming, incoming, previous) == 0.0
    kept = carried_share(0.5 * (previous + incoming), incoming, previous)
    assert kept == pytest.approx(float(previous.norm() / (previous + incoming).norm()))
    assert math.isnan(carried_share(2 * previous, previous, previous))  # parallel
    assert math.isnan(carried_share(torch.randn(100), incoming, previous))  # neither


def test_the_check_leaves_no_hook_behind_and_skips_sparse_gradients():
    emb = nn.Embedding(10, 4, sparse=True)
    lin = nn.Linear(4, 2)
    (emb(torch.tensor([1, 2])).sum() + lin(torch.ones(1, 4)).sum()).backward()
    check = CarryCheck()
    params = [emb.weight, lin.weight, lin.bias]
    check.arm(params, None)
    assert check.armed and lin.weight._backward_hooks  # the dense one, not the embedding
    check.disarm()
    assert not check.armed and lin.weight._backward_hooks is None  # as before the check


def test_a_trainable_part_the_optimizer_does_not_hold_is_not_checked():
    # A stranger session's healthy run: the backbone requires a gradient but only the head
    # is in the optimizer, so zero_grad() never resets the backbone (nor does step use it).
    torch.manual_seed(0)
    backbone, head = nn.Linear(8, 32), nn.Linear(32, 3)
    model = nn.Sequential(backbone, nn.ReLU(), head)
    opt = torch.optim.SGD(head.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with gradscope.watch(model, optimizer=opt) as scope:
            for _ in range(20):
                x = torch.randn(32, 8, generator=g)
                opt.zero_grad()
                loss = F.cross_entropy(model(x), (x[:, 0] > 0).long())
                scope.log_loss(loss)
                loss.backward()
                opt.step()
    assert "stale_gradient" not in [f.kind for f in scope.report().findings]


def test_a_generator_step_through_the_discriminator_is_not_a_stale_gradient():
    """Generated held-out run 44354: a two-optimizer GAN with the saturating generator
    loss, whose discriminator (watched with its own optimizer) won outright.  The
    generator's backward runs through D and adds to D's .grad, then D's
    zero_grad(set_to_none=True) clears it; that gradient is the negative of D's own on
    generated samples, so the old check read D's next gradient as the sum of the
    previous one and everything since (90% carried) and said zero_grad() was missing."""
    from gradscope_scenarios.generated.score import watch_reports
    from gradscope_scenarios.generated.space import draw

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reports = watch_reports(draw(44354))

    assert [f for f in reports["D"].findings if f.kind == "stale_gradient"] == []
    assert [(f.kind, f.layer) for f in reports["G"].at_least("warning")] == [
        ("vanishing_gradient", "net.0.0")
    ]
    checked = [
        share
        for record in reports["D"].history.records
        for share in record.grads.get("grad_carried", ())
        if not math.isnan(share)
    ]
    assert checked and max(checked) == 0.0  # every check that could tell saw a reset
