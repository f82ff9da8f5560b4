"""Activations called as functions (F.relu, torch.tanh) are measured on the output of the
layer they are applied to: a net written without activation modules is judged too
(a stranger session's F.relu net, 100% dead, and torch.tanh net, 97% saturated, were
both reported healthy)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import gradscope
from gradscope import functional_acts

W = torch.randn(32, 4, generator=torch.Generator().manual_seed(3))


class FunctionalNet(nn.Module):
    """Three Linear layers with the activation called as a function between them."""

    def __init__(self, act) -> None:
        super().__init__()
        self.act = act
        self.l1, self.l2, self.l3 = nn.Linear(32, 64), nn.Linear(64, 64), nn.Linear(64, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.l3(self.act(self.l2(self.act(self.l1(x)))))


def _train(model: nn.Module, input_scale: float = 1.0, steps: int = 60):
    torch.set_num_threads(1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    with gradscope.watch(model, optimizer=opt) as scope:
        for step in range(steps):
            g = torch.Generator().manual_seed(step)
            x = torch.randn(16, 32, generator=g)
            loss = F.cross_entropy(model(x * input_scale), (x @ W).argmax(1))
            opt.zero_grad()
            scope.log_loss(loss)
            loss.backward()
            opt.step()
    return scope.report()


def test_dead_units_of_a_relu_called_as_a_function_are_named_on_the_layer_it_follows():
    torch.manual_seed(0)
    model = FunctionalNet(F.relu)
    with torch.no_grad():
        model.l1.bias.fill_(-20.0)
        model.l2.bias.fill_(-20.0)
    report = _train(model)
    dead = [f for f in report.findings if f.kind == "dead_relu"]
    assert [(f.layer, f.severity) for f in dead] == [("l1", "error"), ("l2", "error")]
    assert dead[0].message.startswith(
        "64 of 64 units of the ReLU applied to l1's output (F.relu, a function) (100%) output "
        "zero for every sample"
    )
    assert "the weights feeding it (l1) stop learning" in dead[0].message
    # Dead from the first measured step: the initialisation did it.
    assert dead[0].suggestions[0].kind == "kaiming_init"
    assert not report.ok


def test_a_tanh_called_as_a_function_on_unscaled_inputs_is_saturated():
    torch.manual_seed(0)
    report = _train(FunctionalNet(torch.tanh), input_scale=100.0)
    (found,) = [f for f in report.findings if f.kind == "saturated_activation"]
    assert found.layer == "l1" and found.severity == "error"
    assert "of the tanh applied to l1's output (torch.tanh, a function) outputs sit" in (
        found.message
    )
    kinds = [s.kind for s in found.suggestions]
    assert kinds[0] == "normalize_inputs"
    assert "use_relu" not in kinds  # no module to swap: that is a code change


def test_a_healthy_net_written_with_f_relu_is_measured_and_stays_silent():
    torch.manual_seed(0)
    report = _train(FunctionalNet(F.relu))
    assert report.at_least("warning") == []
    codes = report.history.act_series("functional_act")
    names = report.history.module_names
    measured = {names[j] for j in range(len(names)) if bool(torch.isfinite(codes[:, j]).any())}
    assert measured == {"l1", "l2"}  # l3's output goes to the loss, not to a ReLU


def test_an_activation_module_is_not_counted_again_as_a_function():
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    outputs: dict[int, int] = {}

    def keep(j: int):
        def hook(module, args, output) -> None:
            outputs[id(output.grad_fn)] = j

        return hook

    handles = [m.register_forward_hook(keep(j)) for j, m in enumerate(net)]
    loss = net(torch.randn(3, 4)).sum()
    for h in handles:
        h.remove()
    assert functional_acts.find(loss, outputs, ["plain", "relu", "plain"]) == {}

    a, b = nn.Linear(4, 8), nn.Linear(8, 2)
    h = a(torch.randn(3, 4))
    loss = b(torch.sigmoid(h)).sum() + torch.tanh(h).sum()
    assert functional_acts.find(loss, {id(h.grad_fn): 0}, ["plain"]) in (
        {0: "pre_sigmoid"},
        {0: "pre_tanh"},
    )


def test_without_a_logged_loss_the_report_says_functions_were_not_looked_for():
    """No activation module and no logged loss: activations called as functions cannot be
    found, and the report says so instead of staying silent; with the loss logged, no
    such note."""
    notes = {}
    for logged in (False, True):
        torch.manual_seed(0)
        model = FunctionalNet(F.relu)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        with gradscope.watch(model, optimizer=opt) as scope:
            for step in range(12):
                x = torch.randn(16, 32, generator=torch.Generator().manual_seed(step))
                loss = F.cross_entropy(model(x), (x @ W).argmax(1))
                opt.zero_grad()
                if logged:
                    scope.log_loss(loss)
                loss.backward()
                opt.step()
        notes[logged] = scope.report().notes
    assert notes[False] == [
        "no activation module (ReLU, sigmoid, tanh) was found and no loss was logged with "
        "scope.log_loss(loss), so activations called as functions (F.relu, torch.tanh) "
        "were not looked for: dead or saturated units there are not judged; log the loss "
        "to have them measured"
    ]
    assert notes[True] == []
