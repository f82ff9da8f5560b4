"""Dead ReLU units at the cheap default cadence: silence seen on detail steps far apart."""

from __future__ import annotations

import torch
from helpers import watch_loop
from torch import nn

import gradscope


def _run(kill_at: int, steps: int) -> gradscope.Report:
    """An MLP whose second ReLU layer is killed at ``kill_at`` (its biases pushed far
    negative, as one huge step does), watched with the default cadence."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3)
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.05)

    def data(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        if step == kill_at:
            with torch.no_grad():
                model[2].bias.fill_(-100.0)
        x = torch.randn(32, 8, generator=torch.Generator().manual_seed(step % 8))
        return x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long()

    return watch_loop(model, opt, data, steps)


def test_a_layer_killed_after_the_warm_up_is_found_on_two_detail_steps_ten_apart():
    # Detail steps: 0-4, then 10, 20.  Silent on 10 and 20: two in a row, 10 steps apart.
    report = _run(kill_at=8, steps=21)
    dead = [f for f in report.findings if f.kind == "dead_relu"]
    assert [(f.layer, f.evidence["dead_units"]) for f in dead] == [("3", 16)], str(report)
    assert dead[0].severity == "error"  # the whole layer: harm whatever the loss does


def test_one_silent_detail_step_is_not_yet_a_dead_unit():
    report = _run(kill_at=8, steps=11)  # silent on step 10 only
    assert [f for f in report.findings if f.kind == "dead_relu"] == []


def test_two_silent_detail_steps_one_step_apart_are_not_yet_a_dead_unit():
    report = _run(kill_at=3, steps=5)  # silent on steps 3 and 4: 1 step, under unit_window
    assert [f for f in report.findings if f.kind == "dead_relu"] == []


def _conv1d_run(dead_channels: int) -> gradscope.Report:
    """A 1-D CNN over (batch, channels, length) whose first ``dead_channels`` of 16 channels
    are silenced by far negative biases; the other channels fire at every position."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv1d(4, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv1d(16, 8, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 24, 3),
    )
    with torch.no_grad():
        model[0].bias[:dead_channels] = -100.0
        model[0].bias[dead_channels:] = 5.0
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    def data(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(32, 4, 24, generator=torch.Generator().manual_seed(step % 8))
        return x, (x[:, 0].mean(1) > 0).long()

    return watch_loop(model, opt, data, 12)


def test_dead_channels_of_a_1d_convolution_are_counted_per_channel_not_per_position():
    report = _conv1d_run(dead_channels=10)
    dead = {f.layer: f.evidence for f in report.findings if f.kind == "dead_relu"}
    assert "1" in dead, str(report)
    assert (dead["1"]["dead_units"], dead["1"]["units"]) == (10, 16)


def test_a_1d_convolution_whose_channels_all_fire_has_no_dead_units():
    report = _conv1d_run(dead_channels=0)
    assert [f for f in report.findings if f.kind == "dead_relu"] == [], str(report)


def test_a_relu_dead_to_its_last_unit_on_the_only_path_says_everything_before_is_frozen():
    """Layer "3" dead to the last unit: 0, 2 (everything before it) get exactly zero gradient
    and the network cannot learn, which "the weights feeding it stop learning" understated
    (a stranger session's 1-D CNN with its ReLU biases at -10)."""
    report = _run(kill_at=8, steps=21)
    dead = next(f for f in report.findings if f.kind == "dead_relu")
    assert dead.evidence["frozen_before"] == ["0", "2"]
    assert "Nothing gets past it at all: 0, 2 get exactly zero gradient" in dead.message


class _Residual(nn.Module):
    """x + ffn(x), the FFN's ReLU dead to the last unit: the skip path still carries the
    gradient to the layer before the block."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(8, 16)
        self.up = nn.Linear(16, 16)
        self.act = nn.ReLU()
        self.down = nn.Linear(16, 16)
        self.head = nn.Linear(16, 3)
        with torch.no_grad():
            self.up.bias.fill_(-100.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        return self.head(h + self.down(self.act(self.up(h))))


def test_a_dead_branch_beside_a_skip_path_does_not_claim_the_network_is_frozen():
    torch.manual_seed(0)
    model = _Residual()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)

    def data(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(32, 8, generator=torch.Generator().manual_seed(step % 8))
        return x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long()

    report = watch_loop(model, opt, data, 21)
    dead = next(f for f in report.findings if f.kind == "dead_relu")
    assert dead.layer == "act" and dead.evidence["frozen_before"] == []
    assert "Nothing gets past it" not in dead.message


def test_units_dead_before_the_outputs_turned_non_finite_are_still_dead():
    """A pre-LN Transformer whose biases start at -5 (every feed-forward unit silent), then
    a learning rate that overflows at step 7: after that the outputs are NaN, neither
    silent nor active, and the units were counted as alive (tuning run 4956, a miss)."""
    from gradscope_scenarios.generated.score import diagnose_report
    from gradscope_scenarios.generated.space import Config

    config = Config(
        seed=4956, family="transformer_pre", depth=2, width=24, activation="relu",
        optimizer="momentum", lr=0.06, seq_len=12, loss="ce", batch=32, bias_shift=-5.0,
        steps=50, fault="neg_bias", task="early",
    )  # fmt: skip
    report = diagnose_report(config)

    assert "nonfinite_gradient" in report.kinds()
    dead = {f.layer: f for f in report.findings if f.kind == "dead_relu"}
    assert sorted(dead) == [
        "features.encoder.layers.0.linear1",
        "features.encoder.layers.1.linear1",
    ]
    finding = dead["features.encoder.layers.0.linear1"]
    assert finding.evidence["dead_units"] == finding.evidence["units"] == 48
    assert (
        "output zero for every sample over the recorded steps before its outputs turned "
        "non-finite: they are dead"
    ) in finding.message
