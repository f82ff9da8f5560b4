"""One test per row of docs/compatibility.md: what gradscope does with each kind of model."""

from __future__ import annotations

import dataclasses
import gc
import resource
import warnings

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

import gradscope
from gradscope.errors import GradscopeWarning

torch.set_num_threads(1)


def _xy(n: int = 16, d: int = 8, classes: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randint(0, classes, (n,), generator=g)


STEPS = 5  # within the first recorded steps, which measure everything (activations too)


def _run(model, steps: int = STEPS, opts=None, forward=None, watched=0, **options):
    """Train with every optimizer in ``opts`` (the one at ``watched`` is watched); warnings
    from gradscope fail the test.  Returns (report, losses)."""
    opts = opts or [torch.optim.SGD(model.parameters(), lr=0.05)]
    x, y = _xy()
    forward = forward or (lambda m, x: m(x))
    losses = []
    with warnings.catch_warnings():
        warnings.simplefilter("error", GradscopeWarning)
        with gradscope.watch(model, optimizer=opts[watched], **options) as scope:
            for _ in range(steps):
                for opt in opts:
                    opt.zero_grad()
                loss = nn.functional.cross_entropy(forward(model, x), y)
                scope.log_loss(loss)
                loss.backward()
                for opt in opts:
                    opt.step()
                losses.append(loss.item())
    return scope.report(), losses


def _calls(report, name: str) -> int:
    return report.history.calls_total[report.history.module_names.index(name)]


def test_inplace_relu_is_measured_and_training_unchanged():
    def make():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(8, 16), nn.ReLU(inplace=True), nn.Linear(16, 3))

    plain = make()
    opt = torch.optim.SGD(plain.parameters(), lr=0.05)
    x, y = _xy()
    for _ in range(STEPS):
        opt.zero_grad()
        nn.functional.cross_entropy(plain(x), y).backward()
        opt.step()
    report, _ = _run(make())
    assert _calls(report, "1") == STEPS
    assert report.history.records[-1].acts["zeros"][1] >= 0  # zeros of the ReLU measured
    watched = make()
    _run(watched)
    pairs = zip(plain.parameters(), watched.parameters(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)


class Shared(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(8, 16)
        self.block = nn.Linear(16, 16)
        self.out = nn.Linear(16, 3)

    def forward(self, x):
        h = torch.relu(self.block(torch.relu(self.inp(x))))
        return self.out(torch.relu(self.block(h)))  # the same module twice


def test_a_shared_module_counts_every_call():
    report, _ = _run(Shared())
    assert _calls(report, "block") == 2 * STEPS
    assert report.coverage["unseen_modules"] == []


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(20, 8)
        self.dec = nn.Linear(8, 20, bias=False)
        self.dec.weight = self.emb.weight  # tied

    def forward(self, ids):
        return self.dec(self.emb(ids).mean(1))


def test_tied_weights_are_one_parameter():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 20, (16, 5), generator=g)
    model = Tied()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", GradscopeWarning)
        with gradscope.watch(model, optimizer=opt) as scope:
            for _ in range(4):
                opt.zero_grad()
                nn.functional.cross_entropy(model(ids), ids[:, 0]).backward()
                opt.step()
    report = scope.report()
    assert report.history.param_names == ["emb.weight"]
    assert report.coverage["unseen_modules"] == []


@dataclasses.dataclass
class DC:
    value: torch.Tensor


class Outputs(nn.Module):
    """Leaves returning a dict, a tuple, a dataclass and None."""

    class AsDict(nn.Linear):
        def forward(self, x):
            return {"h": super().forward(x)}

    class AsTuple(nn.Linear):
        def forward(self, x):
            return (super().forward(x), 0)

    class AsDataclass(nn.Linear):
        def forward(self, x):
            return DC(super().forward(x))

    class Nothing(nn.Module):
        def forward(self, x):
            return None

    def __init__(self) -> None:
        super().__init__()
        self.a = self.AsDict(8, 8)
        self.b = self.AsTuple(8, 8)
        self.c = self.AsDataclass(8, 3)
        self.log = self.Nothing()

    def forward(self, x):
        self.log(x)
        return self.c(self.b(self.a(x)["h"])[0]).value


def test_dict_tuple_dataclass_and_none_outputs():
    report, _ = _run(Outputs())
    for name in ("a", "b", "c"):
        assert _calls(report, name) == STEPS, name
    assert report.coverage["unseen_modules"] == []


class ReturnsItsLoss(nn.Module):
    """A model whose forward returns its own 0-dim loss and whose root holds a parameter
    used after its last submodule (CLIP's ``logit_scale`` with ``return_loss=True``)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 3)
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x, y):
        return torch.nn.functional.cross_entropy(self.fc(x) * self.scale, y)


def test_a_model_that_returns_its_loss_with_a_parameter_of_its_own():
    # It crashed in a forward hook: the root is measured (it owns `scale`) and its output,
    # the loss, has no samples to compare.
    torch.manual_seed(0)
    model = ReturnsItsLoss()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
    with gradscope.watch(model, optimizer=opt) as scope:
        for _ in range(STEPS):
            loss = model(x, y)
            scope.log_loss(loss)
            opt.zero_grad()
            loss.backward()
            opt.step()
    report = scope.report()
    assert report.history.records[-1].grads["grad_l2"][0] > 0
    assert [f.kind for f in report.findings if f.severity != "info"] == []


def test_sparse_embedding_gradients():
    model = nn.Sequential(nn.Embedding(50, 8, sparse=True), nn.Flatten(), nn.Linear(32, 3))
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 50, (16, 4), generator=g)
    report, _ = _run(model, forward=lambda m, x: m(ids))
    l2 = [r.grads["grad_l2"][0] for r in report.history.records]
    assert all(v > 0 and v == v for v in l2)
    assert "no_gradient" not in report.kinds()


def test_frozen_parts_are_left_out_and_not_reported():
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    model[0].requires_grad_(False)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05)
    report, _ = _run(model, opts=[opt])
    assert report.history.param_names == ["2.weight", "2.bias"]
    assert "no_gradient" not in report.kinds()


class Checkpointed(nn.Module):
    def __init__(self, reentrant: bool) -> None:
        super().__init__()
        self.reentrant = reentrant
        self.body = nn.Sequential(nn.Linear(8, 16), nn.Tanh())
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        if self.reentrant:
            x = x.requires_grad_()
        return self.head(checkpoint(self.body, x, use_reentrant=self.reentrant))


@pytest.mark.parametrize("reentrant", [False, True])
def test_gradient_checkpointing(reentrant):
    report, _ = _run(Checkpointed(reentrant))
    assert all(r.grads["has_grad"] == [1.0] * 4 for r in report.history.records)
    # Non-reentrant: the forward and its recomputation in backward both run with
    # gradients on, so activations are measured twice per step.  Reentrant: the first
    # forward runs under no_grad (not measured), the recomputation once.
    assert _calls(report, "body.0") == (1 if reentrant else 2) * STEPS
    assert report.findings == []


def test_multiple_optimizers_watch_one_and_read_every_gradient():
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    opts = [
        torch.optim.SGD(model[0].parameters(), lr=0.05),
        torch.optim.Adam(model[2].parameters(), lr=0.01),
    ]
    report, _ = _run(model, opts=opts)
    assert all(r.grads["has_grad"] == [1.0] * 4 for r in report.history.records)
    assert report.history.recorded == STEPS


def test_lazy_modules():
    model = nn.Sequential(nn.LazyLinear(16), nn.ReLU(), nn.LazyLinear(3))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    report, _ = _run(model, opts=[opt])
    assert report.history.param_names == ["0.weight", "0.bias", "2.weight", "2.bias"]


def test_eval_and_no_grad_passes_are_not_measured():
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))

    def forward(m, inputs):
        with torch.no_grad():
            m(inputs)  # validation under no_grad: not part of the step
        return m(inputs)

    report, _ = _run(model, forward=forward)
    assert _calls(report, "0") == STEPS


def test_a_1000_layer_model():
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(4, 4) for _ in range(1000)])
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 4, generator=g), torch.randn(8, 4, generator=g)
    with warnings.catch_warnings():
        warnings.simplefilter("error", GradscopeWarning)
        with gradscope.watch(model, optimizer=opt) as scope:
            for _ in range(3):
                opt.zero_grad()
                nn.functional.mse_loss(model(x), y).backward()
                opt.step()
    report = scope.report()
    assert len(report.history.module_names) == 1000
    assert report.history.recorded == 3
    assert report.to_json()


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def test_a_100m_parameter_model_costs_gradscope_little_memory():
    """100M parameters (400 MB): gradscope adds under 20 MB to the training's memory
    (its imports aside)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10_000, 10_000), nn.ReLU(), nn.Linear(10_000, 2))
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    x = torch.randn(4, 10_000)
    y = torch.tensor([0, 1, 0, 1])

    def steps(scope=None):
        for _ in range(3):
            opt.zero_grad(set_to_none=False)
            loss = nn.functional.cross_entropy(model(x), y)
            if scope is not None:
                scope.log_loss(loss)
            loss.backward()
            opt.step()

    steps()
    _run(nn.Linear(8, 3), steps=1)  # gradscope's own imports (plugins, matplotlib) are loaded
    gc.collect()
    plain = _rss_mb()
    with gradscope.watch(model, optimizer=opt) as scope:
        steps(scope)
        gc.collect()
        watched = _rss_mb()
    assert sum(p.numel() for p in model.parameters()) > 100_000_000
    print(f"100M parameters: plain {plain:.0f} MB, with gradscope {watched:.0f} MB")
    assert watched - plain < 20, f"gradscope added {watched - plain:.0f} MB"
    assert scope.report().history.recorded == 3


def test_a_weight_norm_layers_parameters_are_its_own_and_a_healthy_run_stays_silent():
    """torch's weight_norm stores a layer's weight as parametrizations.weight.original0/1,
    one module down: they are the layer's weight, not a layer of their own (a healthy
    Wav2Vec2, whose positional conv has a zero bias, was called exploding 3.5e22x)."""
    from torch.nn.utils.parametrizations import weight_norm

    torch.manual_seed(0)
    mid = weight_norm(nn.Linear(32, 32))
    nn.init.zeros_(mid.bias)
    model = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), mid, nn.LayerNorm(32), nn.ReLU())
    model.append(nn.Linear(32, 3))
    x, y = _xy(n=32, d=6)
    report = gradscope.diagnose(model, (x, y), nn.functional.cross_entropy, steps=20)
    layers = {layer.name: layer for layer in report.model_info.layers}
    assert sorted(layers["2"].params) == [
        "2.bias", "2.parametrizations.weight.original0", "2.parametrizations.weight.original1"
    ]  # fmt: skip
    assert layers["2"].role == "weight"
    assert not any("parametrizations" in name for name in layers)
    assert [f for f in report.findings if f.severity != "info"] == [], str(report)
