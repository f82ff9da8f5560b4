"""Built-in detectors: each problem found on the right layer, no alarm on healthy training,
and every suggested snippet runs on the model it was made for."""

from __future__ import annotations

import pytest
import torch
from helpers import batch, mlp, watch_loop
from torch import nn

import gradscope
from gradscope.models import builtin_specs

CE = nn.functional.cross_entropy


def run_spec(name: str, steps: int = 30) -> gradscope.Report:
    spec = builtin_specs()[name]
    torch.manual_seed(0)
    model = spec.factory()
    batches = [spec.example_batch(64, seed=s) for s in range(8)]
    return gradscope.diagnose(model, batches, spec.loss_fn, steps=steps, lr=0.05)


def serious(report: gradscope.Report) -> list[gradscope.Finding]:
    return report.at_least("warning")


def test_deep_sigmoid_mlp_vanishes_at_the_input_layer_and_relu_comes_first():
    report = run_spec("deep_sigmoid_mlp")
    (finding,) = serious(report)
    assert finding.kind == "vanishing_gradient"
    assert finding.layer == "0"
    assert finding.severity == "error"
    assert finding.evidence["layers"][:3] == ["0", "2", "4"]
    assert [s.kind for s in finding.suggestions] == ["use_relu", "kaiming_init", "add_batchnorm"]


def test_large_init_explodes_and_kaiming_comes_first():
    report = run_spec("relu_mlp_large_init")
    kinds = report.kinds()
    assert "exploding_gradient" in kinds
    finding = next(f for f in report.findings if f.kind == "exploding_gradient")
    assert finding.suggestions[0].kind == "kaiming_init"
    assert finding.evidence["init_scale"]["0"] > 3


@pytest.mark.parametrize("name", ["fnn", "deep_relu_mlp", "relu_mlp_kaiming"])
def test_healthy_reference_models_raise_no_alarm(name):
    assert serious(run_spec(name)) == []


class LogSoftmaxByHand(nn.Module):
    def forward(self, x):
        return torch.log(torch.softmax(x, dim=-1))


def test_nan_from_log_of_zero_names_the_module_that_made_it():
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3), LogSoftmaxByHand())
    with torch.no_grad():
        model[2].weight.mul_(400.0)
    report = gradscope.diagnose(model, batch(), nn.functional.nll_loss, steps=3)
    finding = next(f for f in report.findings if f.kind == "nonfinite_gradient")
    assert finding.layer == "3"
    assert finding.step == 0
    assert finding.evidence["where"] == "forward"
    assert finding.suggestions[0].kind == "fix_loss_numerics"


class InfThenELU(nn.Module):
    """Writes -inf into its output where the input is below -1; the ELU after it maps
    those entries to -1, so the loss and every gradient stay finite."""

    def forward(self, x):
        return x.masked_fill(x < -1.0, float("-inf"))


def test_an_inf_output_that_the_loss_never_sees_is_an_info_not_an_error():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), InfThenELU(), nn.ELU(), nn.Linear(16, 3))
    report = gradscope.diagnose(model, batch(), CE, steps=5)
    found = [f for f in report.findings if f.kind == "nonfinite_gradient"]
    assert [(f.layer, f.severity) for f in found] == [("1", "info")]
    assert "The loss and every gradient stayed finite" in found[0].message
    assert serious(report) == [], str(report)


class WithMagnitude(nn.Module):
    """Appends each row's length: sqrt(0) has an infinite slope, so a zero row gives NaN grads."""

    def forward(self, x):
        return torch.cat([x, x.pow(2).sum(-1, keepdim=True).sqrt()], dim=-1)


def test_nan_made_in_backward_names_the_operation_after_the_last_bad_layer():
    model = nn.Sequential(nn.Linear(6, 16, bias=False), WithMagnitude(), nn.Linear(17, 3))
    x, y = batch()
    x[0] = 0.0  # one all-zero sample: a zero row reaches the sqrt
    report = gradscope.diagnose(model, (x, y), CE, steps=2)
    finding = next(f for f in report.findings if f.kind == "nonfinite_gradient")
    assert finding.evidence["where"] == "backward"
    assert finding.layer == "1"
    assert finding.step == 0
    assert finding.evidence["nonfinite_gradients"] == ["0"]


def test_nan_in_the_loss_itself_blames_the_loss():
    model = nn.Sequential(nn.Linear(6, 1), nn.Sigmoid())
    with torch.no_grad():
        model[0].weight.fill_(100.0)

    def bce_by_hand(p, y):
        y = (y > 0).float().unsqueeze(1)
        return -(y * torch.log(p) + (1 - y) * torch.log(1 - p)).mean()

    report = gradscope.diagnose(model, batch(), bce_by_hand, steps=2)
    finding = next(f for f in report.findings if f.kind == "nonfinite_gradient")
    assert finding.layer is None
    assert finding.evidence["culprit"] == "loss"


def test_dead_relu_units_are_found_per_unit_and_normal_sparsity_is_not():
    dead = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 3))
    with torch.no_grad():
        dead[0].bias.fill_(-20.0)
    report = gradscope.diagnose(dead, batch(), CE, steps=8)
    finding = next(f for f in report.findings if f.kind == "dead_relu")
    assert finding.layer == "1"
    assert finding.evidence["dead_units"] == 32
    assert finding.evidence["feeding_layer"] == "0"
    healthy = gradscope.diagnose(mlp(), batch(), CE, steps=8)
    zeros = (
        healthy.history.act_series("zeros")[:, 1] / healthy.history.act_series("zero_sampled")[:, 1]
    )
    assert float(zeros.mean()) > 0.3  # ordinary ReLU sparsity...
    assert "dead_relu" not in healthy.kinds()  # ...is not a finding


def test_saturated_sigmoid_is_found():
    model = nn.Sequential(nn.Linear(6, 16), nn.Sigmoid(), nn.Linear(16, 3))
    with torch.no_grad():
        model[0].weight.mul_(200.0)
    report = gradscope.diagnose(model, batch(), CE, steps=6)
    finding = next(f for f in report.findings if f.kind == "saturated_activation")
    assert finding.layer == "1"
    assert finding.evidence["saturated_fraction"] > 0.9


def test_zero_init_is_symmetric_but_a_zero_initialised_last_layer_is_not():
    model = nn.Sequential(
        nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3)
    )
    for layer in model:
        if isinstance(layer, nn.Linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
    report = gradscope.diagnose(model, batch(), CE, steps=5)
    layers = {f.layer for f in report.findings if f.kind == "symmetric_weights"}
    assert {"0", "2"} <= layers
    assert all(
        f.suggestions[0].kind == "random_init"
        for f in report.findings
        if f.kind == "symmetric_weights"
    )
    fine = mlp()
    nn.init.zeros_(fine[4].weight)
    assert "symmetric_weights" not in gradscope.diagnose(fine, batch(), CE, steps=5).kinds()


class DetachedAdapter(nn.Module):
    """A LoRA-style adapter (B starts at zero by design) whose output is detached by mistake."""

    def __init__(self) -> None:
        super().__init__()
        self.base = nn.Linear(6, 3)
        self.lora_a, self.lora_b = nn.Linear(6, 4, bias=False), nn.Linear(4, 3, bias=False)
        nn.init.zeros_(self.lora_b.weight)

    def forward(self, x):
        return self.base(x) + self.lora_b(self.lora_a(x)).detach()


def test_weights_that_never_got_a_gradient_are_no_gradient_not_symmetric():
    # B's rows stay zero only because nothing reaches them (a stranger session's LoRA: it
    # was symmetric_weights at error next to no_gradient at warning).
    torch.manual_seed(0)
    report = gradscope.diagnose(DetachedAdapter(), batch(), CE, steps=5)
    assert "symmetric_weights" not in report.kinds()
    ungraded = [f for f in report.findings if f.kind == "no_gradient"]
    named = {p for f in ungraded for p in f.evidence["parameters"]}
    assert named == {"lora_a.weight", "lora_b.weight"}


class WithUnused(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.used = nn.Linear(6, 3)
        self.unused = nn.Linear(6, 3)
        self.detached = nn.Linear(6, 6)

    def forward(self, x):
        return self.used(x + self.detached(x).detach())


def test_parameters_without_gradients_are_named_and_frozen_ones_are_not():
    model = WithUnused()
    model.used.bias.requires_grad_(False)
    report = gradscope.diagnose(model, batch(), CE, steps=3)
    found = {f.layer: f for f in report.findings if f.kind == "no_gradient"}
    assert set(found) == {"unused", "detached"}
    assert found["unused"].evidence["parameters"] == ["unused.weight", "unused.bias"]
    assert found["unused"].evidence["module_called"] is False
    assert found["detached"].evidence["module_called"] is True
    assert "detached.weight, detached.bias require a gradient" in found["detached"].message
    assert found["detached"].suggestions[0].kind == "check_graph"
    # A module that never runs can be frozen: the first suggestion, and its code runs.
    assert [s.kind for s in found["unused"].suggestions] == ["freeze_unused", "check_graph"]
    assert "freeze_unused" not in [s.kind for s in found["detached"].suggestions]
    fresh = WithUnused()
    exec(found["unused"].suggestions[0].code, {"model": fresh})  # noqa: S102
    assert [n for n, p in fresh.named_parameters() if not p.requires_grad] == [
        "unused.weight",
        "unused.bias",
    ]


def test_healthy_models_of_other_kinds_raise_no_alarm():
    cases = []
    emb = nn.Sequential(nn.Embedding(1000, 16), nn.Flatten(), nn.Linear(16 * 4, 3))
    tokens = torch.randint(0, 50, (32, 4))  # most rows are never used: zero gradient rows
    cases.append((emb, (tokens, batch()[1])))
    backbone = mlp()
    for p in backbone[:3].parameters():
        p.requires_grad_(False)
    cases.append((backbone, batch()))
    encoder = nn.Sequential(
        nn.TransformerEncoder(
            nn.TransformerEncoderLayer(6, 2, dim_feedforward=32, batch_first=True), num_layers=2
        ),
        nn.Flatten(),
        nn.Linear(6 * 5, 3),
    )
    cases.append((encoder, (torch.randn(32, 5, 6), batch()[1])))
    for model, data in cases:
        report = gradscope.diagnose(model, data, CE, steps=8)
        assert serious(report) == [], (type(model[0]).__name__, str(report))


def _namespace(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    loss = CE(model(x), y)
    return {"model": model, "optimizer": optimizer, "loss": loss, "torch": torch, "nn": nn}


SNIPPET_CASES = ["deep_sigmoid_mlp", "relu_mlp_large_init"]


@pytest.mark.parametrize("name", SNIPPET_CASES)
def test_every_suggested_snippet_runs_on_its_model(name):
    spec = builtin_specs()[name]
    report = run_spec(name, steps=10)
    assert report.findings
    for finding in report.findings:
        for suggestion in finding.suggestions:
            torch.manual_seed(0)
            model = spec.factory()
            x, y = spec.example_batch(64)
            ns = _namespace(model, x, y)
            exec(compile(suggestion.code, f"<{suggestion.kind}>", "exec"), ns)  # noqa: S102
            after = ns["model"]
            after(x)  # still a working model


class _SigmoidAutoencoder(nn.Module):
    """Not an nn.Sequential: a deep sigmoid encoder and decoder, and a Sigmoid output."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Sequential(*[m for _ in range(4) for m in (nn.Linear(16, 16), nn.Sigmoid())])
        self.dec = nn.Sequential(nn.Linear(16, 16), nn.Sigmoid(), nn.Linear(16, 16))
        self.out_act = nn.Sigmoid()

    def forward(self, x):
        return self.out_act(self.dec(self.enc(x)))


def test_snippets_for_a_model_that_is_not_sequential_run_pasted_at_top_level():
    """A stranger session pasted every printed snippet: on models that are not an
    nn.Sequential, add_batchnorm printed `self.bn_... = ...` lines (NameError: self), and
    use_relu swapped the autoencoder's output Sigmoid too (its loss went 0.063 -> 0.169)."""
    torch.manual_seed(0)
    x = torch.rand(64, 16)
    model = _SigmoidAutoencoder()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    report = watch_loop(model, opt, lambda k: (x, x), 30, nn.functional.mse_loss)
    (finding,) = [f for f in report.findings if f.kind == "vanishing_gradient"]
    codes = {s.kind: s.code for s in finding.suggestions}
    for kind in ("add_batchnorm", "use_relu"):
        torch.manual_seed(0)
        fresh = _SigmoidAutoencoder()
        exec(compile(codes[kind], f"<{kind}>", "exec"), {"model": fresh})  # noqa: S102
        assert fresh(x).shape == x.shape  # still a working model
        if kind == "add_batchnorm":
            added = [m for m in fresh.modules() if isinstance(m, nn.BatchNorm1d)]
            assert len(added) >= 3 and isinstance(fresh.enc[0], nn.Sequential)
        else:
            assert isinstance(fresh.out_act, nn.Sigmoid)  # the output's squashing stays
            assert not any(isinstance(m, nn.Sigmoid) for m in fresh.enc.modules())


def test_applying_the_first_fix_makes_the_loss_fall():
    spec = builtin_specs()["deep_sigmoid_mlp"]
    report = run_spec("deep_sigmoid_mlp", steps=10)
    fix = report.findings[0].suggestions[0]
    kaiming = report.findings[0].suggestions[1]

    def final_loss(apply: list) -> float:
        torch.manual_seed(0)
        model = spec.factory()
        ns = _namespace(model, *spec.example_batch(64))
        for s in apply:
            exec(s.code, ns)  # noqa: S102
        model = ns["model"]
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        losses = []
        for step in range(60):
            x, y = spec.example_batch(64, seed=step % 8)
            opt.zero_grad()
            loss = spec.loss_fn(model(x), y)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return sum(losses[-5:]) / 5

    untouched = final_loss([])
    assert final_loss([fix, kaiming]) < untouched - 0.1
    assert final_loss([fix]) < untouched



class _EmbeddingUnderNoGrad(nn.Module):
    """A trainable first layer called inside torch.no_grad() by mistake."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Linear(8, 16)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        with torch.no_grad():
            h = self.emb(x)
        return self.head(torch.relu(h))


def test_a_layer_run_under_no_grad_is_said_to_run_and_is_not_told_to_be_frozen():
    torch.manual_seed(0)
    model = _EmbeddingUnderNoGrad()
    x, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
    report = gradscope.diagnose(model, [(x, y)], CE, steps=6)
    (finding,) = [f for f in report.findings if f.kind == "no_gradient"]
    assert finding.layer == "emb" and finding.evidence["module_called"] is True
    assert "emb runs in forward() with gradients off (inside torch.no_grad()" in finding.message
    assert finding.suggestions[0].kind == "check_graph"
    assert "freeze_unused" not in [s.kind for s in finding.suggestions]


class _Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh())
        self.norm = nn.LayerNorm(16)

    def forward(self, x):
        return self.norm(self.layers(x))


def test_a_part_called_under_no_grad_by_the_loop_is_one_finding_that_says_so():
    """The loop calls the model's parts itself and runs the encoder under torch.no_grad()
    (a stranger session's ELECTRA recipe): the model is never called, so nothing said a
    training forward began; the encoder's three modules are one finding, not told that
    forward() never calls them, and not told to freeze them first."""
    torch.manual_seed(0)
    model = nn.ModuleDict({"encoder": _Encoder(), "head": nn.Linear(16, 3)})
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
    with gradscope.watch(model, optimizer=opt) as scope:
        for _ in range(12):
            opt.zero_grad()
            with torch.no_grad():
                h = model["encoder"](x)
            loss = CE(model["head"](h), y)
            scope.log_loss(loss)
            loss.backward()
            opt.step()
    (finding,) = [f for f in scope.report().findings if f.kind == "no_gradient"]
    assert finding.layer == "encoder", finding
    modules = ["encoder.layers.0", "encoder.layers.2", "encoder.norm"]
    assert sorted(finding.evidence["modules"]) == modules
    assert finding.message.startswith("encoder.layers.0.weight, encoder.layers.0.bias,")
    assert "and 2 more require a gradient" in finding.message
    assert "encoder (3 modules) runs in forward() with gradients off" in finding.message
    assert finding.suggestions[0].kind == "check_graph"
    assert "freeze_unused" not in [s.kind for s in finding.suggestions]


@pytest.mark.parametrize("target_in_optimizer", [False, True])
def test_an_ema_target_the_optimizer_does_not_hold_is_not_missing_a_gradient(
    target_in_optimizer,
):
    """MoCo/BYOL: a target encoder kept at requires_grad=True, run under torch.no_grad()
    and updated as a moving average of the online one (a stranger session's healthy run
    was told its target 'never got' a gradient).  The optimizer never updates parameters
    it does not hold; holding them, they would be the finding they were."""
    torch.manual_seed(0)
    model = nn.ModuleDict({"online": nn.Linear(8, 8), "target": nn.Linear(8, 8)})
    model["target"].load_state_dict(model["online"].state_dict())
    trained = model.parameters() if target_in_optimizer else model["online"].parameters()
    opt = torch.optim.Adam(trained, lr=1e-2)
    x = torch.randn(64, 8, generator=torch.Generator().manual_seed(1))
    with gradscope.watch(model, optimizer=opt) as scope:
        for k in range(12):
            view = x + 0.1 * torch.randn(64, 8, generator=torch.Generator().manual_seed(k))
            with torch.no_grad():
                goal = model["target"](x)
            loss = nn.functional.mse_loss(model["online"](view), goal)
            opt.zero_grad()
            scope.log_loss(loss)
            loss.backward()
            opt.step()
            pairs = zip(model["target"].parameters(), model["online"].parameters(), strict=True)
            with torch.no_grad():
                for t, o in pairs:
                    t.mul_(0.9).add_(o, alpha=0.1)
    missing = [f.layer for f in scope.report().findings if f.kind == "no_gradient"]
    assert missing == (["target"] if target_in_optimizer else [])


def test_an_optimizer_holding_none_of_the_watched_parameters_leaves_nothing_out():
    """Leaving parameters out of the no-gradient judgement needs an optimizer that holds
    some of the model's and not others; one that holds none of them (another model's)
    says nothing about which were left out on purpose."""
    from gradscope.tracking import outside_optimizer

    model, other = nn.Linear(4, 4), nn.Linear(4, 4)
    names = [n for n, _ in model.named_parameters()]
    params = list(model.parameters())
    assert outside_optimizer(torch.optim.SGD(other.parameters(), lr=0.1), names, params) == []
    partial = torch.optim.SGD([model.weight], lr=0.1)
    assert outside_optimizer(partial, names, params) == ["bias"]
    assert outside_optimizer(None, names, params) == []


def test_a_loop_that_steps_before_backward_is_told_the_order_not_a_cut_graph():
    """zero_grad(); loss; step(); backward(): every gradient is cleared before the step
    that would use it (a stranger session's loop), which reads as no gradient anywhere."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
    with gradscope.watch(model, optimizer=opt) as scope:
        for _ in range(12):
            opt.zero_grad()
            loss = CE(model(x), y)
            scope.log_loss(loss)
            opt.step()
            loss.backward()
    found = [f for f in scope.report().findings if f.kind == "no_gradient"]
    assert sorted(f.layer for f in found) == ["0", "2"]
    for finding in found:
        assert "call loss.backward() before optimizer.step()" in finding.message
        assert "cut off from the loss" not in finding.message
        assert finding.suggestions[0].title == "Call loss.backward() before optimizer.step()"
