"""Odd models and misuse: lazy modules, late parameters, dataclass outputs, tied modules,
user hooks during the NaN replay, nested `with`, log_loss after exit."""

from __future__ import annotations

import dataclasses
import math
import warnings

import pytest
import torch
from torch import nn

import gradscope
from gradscope.errors import GradscopeWarning

torch.set_num_threads(1)


def _batch(seed: int, n: int = 16, d: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    return x, (x[:, 0] > 0).long()


def _train(model, opt, scope, steps: int, out=lambda o: o) -> None:
    for k in range(steps):
        x, y = _batch(k)
        opt.zero_grad()
        loss = nn.functional.cross_entropy(out(model(x)), y)
        scope.log_loss(loss)
        loss.backward()
        opt.step()


def test_a_lazy_module_is_watched_from_its_first_forward():
    model = nn.Sequential(nn.LazyLinear(16), nn.ReLU(), nn.Linear(16, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", GradscopeWarning)  # lazy parameters are expected
        with gradscope.watch(model, optimizer=opt) as scope:
            _train(model, opt, scope, 6)
    report = scope.report()
    assert set(report.history.param_names) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    first = report.history.param_names.index("0.weight")
    assert all(r.grads["has_grad"][first] == 1.0 for r in report.history.records)
    assert "no_gradient" not in report.kinds()


def test_parameters_added_after_watch_warn_and_are_measured_from_the_next_step():
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradscope.watch(model, optimizer=opt) as scope:
        _train(model, opt, scope, 3)
        model.extra = nn.Linear(2, 2)
        opt.add_param_group({"params": model.extra.parameters()})
        with pytest.warns(GradscopeWarning, match=r"2 trainable parameter\(s\) appeared after "
                          r"watch\(\) \(extra.weight, extra.bias: added or unfrozen\); they are "
                          r"measured from step 3 on"):
            _train(model, opt, scope, 3, out=lambda o: model.extra(o))
    history = scope.report().history
    i = history.param_names.index("extra.weight")
    assert [r.grads["has_grad"][i] for r in history.records] == [0, 0, 0, 1, 1, 1]
    assert all(len(r.grads["grad_l2"]) == len(history.param_names) for r in history.records)
    assert scope.report().to_json()  # the padded records still serialise


@dataclasses.dataclass
class Out:
    hidden: torch.Tensor
    extra: int = 0


class DataclassLeaf(nn.Linear):
    def forward(self, x: torch.Tensor) -> Out:  # type: ignore[override]
        return Out(super().forward(x))


class DataclassNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = DataclassLeaf(6, 8)
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.body(x).hidden))


def test_a_leaf_returning_a_dataclass_is_measured_and_not_called_unseen():
    model = DataclassNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", GradscopeWarning)
        with gradscope.watch(model, optimizer=opt) as scope:
            _train(model, opt, scope, 3)
    report = scope.report()
    j = report.history.module_names.index("body")
    assert report.history.calls_total[j] == 3
    assert report.coverage["unseen_modules"] == []
    assert not any("never fired" in note for note in report.notes)


class TiedNet(nn.Module):
    """T5-style: `shared` is never called, `embed` (another module, same weight) is."""

    def __init__(self) -> None:
        super().__init__()
        self.shared = nn.Embedding(10, 8)
        self.embed = nn.Embedding(10, 8)
        self.embed.weight = self.shared.weight
        self.head = nn.Linear(8, 2)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(ids).mean(1))


def test_a_tied_module_never_called_is_not_reported_as_unseen():
    model = TiedNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", GradscopeWarning)
        with gradscope.watch(model, optimizer=opt) as scope:
            for _ in range(3):
                ids = torch.randint(0, 10, (4, 5), generator=g)
                opt.zero_grad()
                loss = nn.functional.cross_entropy(model(ids), ids[:, 0] % 2)
                loss.backward()
                opt.step()
    assert scope.report().coverage["unseen_modules"] == []


class Blowup(nn.Module):
    """Multiplies by a factor the test sets to infinity: the module where NaN/Inf starts."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("factor", torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


class CallCounting(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(6, 8)
        self.bad = Blowup()
        self.out = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.bad(torch.relu(self.lin(x))))


def test_the_nan_replay_does_not_call_the_users_hooks():
    model = CallCounting()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    seen = {"module": 0, "global": 0, "pre": 0}

    def count(key):
        def hook(*args):
            seen[key] += 1

        return hook

    handles = [
        model.lin.register_forward_hook(count("module")),
        model.register_forward_pre_hook(count("pre")),
        nn.modules.module.register_module_forward_hook(count("global")),
    ]
    try:
        with gradscope.watch(model, optimizer=opt) as scope:
            for k in range(8):
                x, y = _batch(k)
                if k == 6:
                    model.bad.factor.fill_(float("inf"))  # non-finite from step 6 on
                opt.zero_grad()
                loss = nn.functional.cross_entropy(model(x), y)
                scope.log_loss(loss)
                loss.backward()
                opt.step()
    finally:
        for handle in handles:
            handle.remove()
    report = scope.report()
    assert seen["module"] == 8 and seen["pre"] == 8
    assert seen["global"] == 8 * 4  # model, lin, bad, out: one call each per forward
    finding = next(f for f in report.findings if f.kind == "nonfinite_gradient")
    assert finding.layer == "bad"  # the replay still ran and named the first NaN output
    assert not math.isnan(report.history.records[0].loss)


def test_a_nested_with_on_one_scope_is_refused():
    model = nn.Linear(6, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scope = gradscope.watch(model, optimizer=opt)
    with scope:
        with (  # noqa: SIM117 - the nesting is the misuse under test
            pytest.raises(RuntimeError, match=r"^This scope is already inside a `with` block"),
            scope,
        ):
            pass
        assert scope.attached  # the outer block still records
        _train(model, opt, scope, 2)
    assert scope.history.recorded == 2
    assert not scope.attached


def test_log_loss_after_exit_is_refused_and_keeps_the_recorded_loss():
    model = nn.Linear(6, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradscope.watch(model, optimizer=opt) as scope:
        _train(model, opt, scope, 2)
    recorded = scope.history.records[-1].loss
    with pytest.raises(RuntimeError, match=r"^scope.log_loss\(\) was called on a detached scope"):
        scope.log_loss(123.0)
    assert scope.history.records[-1].loss == recorded


class _ComplexWeights(nn.Module):
    """A complex-valued weight matrix used as a linear map (a stranger session's model)."""

    def __init__(self) -> None:
        super().__init__()
        self.W = nn.Parameter(torch.randn(6, 8, dtype=torch.cfloat) / 4)
        self.out = nn.Linear(16, 2)

    def forward(self, x):
        h = x.to(torch.cfloat) @ self.W
        return self.out(torch.tanh(torch.cat([h.real, h.imag], 1)))


@pytest.mark.parametrize("full", [False, True])
def test_complex_parameters_do_not_crash_the_loop(full):
    """Row statistics sorted the rows (argsort has no complex order on the CPU) and full=True
    took the gradient's min and max: both raised inside optimizer.step(), killing the
    user's training loop."""
    torch.manual_seed(0)
    model = _ComplexWeights()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    with gradscope.watch(model, optimizer=opt, full=full) as scope:
        _train(model, opt, scope, steps=12)
    report = scope.report()
    assert report.history.recorded == 12
    assert report.at_least("warning") == [], report
