"""The pytest plugin and gradscope.testing, exercised in generated test files via pytester."""

from __future__ import annotations

pytest_plugins = ["pytester"]

HEADER = """
import torch
from torch import nn
from gradscope.testing import (
    assert_all_parameters_get_gradients,
    assert_healthy_gradients,
)
from gradscope.models import builtin_specs

torch.manual_seed(0)
CE = nn.functional.cross_entropy

def spec_batch(name):
    spec = builtin_specs()[name]
    return spec.factory(), spec.example_batch(64), spec.loss_fn
"""


def test_healthy_model_passes_and_sigmoid_mlp_fails_with_layer_and_fix(pytester):
    pytester.makepyfile(
        HEADER
        + """
def test_healthy():
    model, batch, loss_fn = spec_batch("deep_relu_mlp")
    assert_healthy_gradients(model, batch, loss_fn, steps=6)

def test_sigmoid():
    model, batch, loss_fn = spec_batch("deep_sigmoid_mlp")
    assert_healthy_gradients(model, batch, loss_fn, steps=6, lr=0.05)
"""
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*AssertionError: Sequential: gradients are not healthy*",
            "*[[]error[]] vanishing_gradient in 0 (step 0)*",
            "*predicts nearly the same output for every input*",
            "*top fix (use_relu): Replace Sigmoid with ReLU*",
        ]
    )


def test_unused_layer_fails_naming_the_parameter(pytester):
    pytester.makepyfile(
        HEADER
        + """
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)
        self.forgotten = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(x)

def test_all_params():
    x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))
    assert_all_parameters_get_gradients(Net(), (x, y), CE)
"""
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*no_gradient in forgotten*", "*forgotten.weight, forgotten.bias*"]
    )


def test_fixture_detaches_at_teardown(pytester):
    pytester.makepyfile(
        HEADER
        + """
KEEP = {}

def test_use(gradscope):
    model = nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scope = gradscope(model, opt)
    opt.zero_grad()
    model(torch.randn(3, 4)).sum().backward()
    opt.step()
    assert scope.report().history.recorded == 1
    KEEP["model"] = model

def test_after():
    assert not KEEP["model"]._forward_hooks
"""
    )
    pytester.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=2)


def test_plugin_is_registered_and_can_be_disabled(pytester):
    pytester.makepyfile("def test_x(gradscope):\n    pass\n")
    listed = pytester.runpytest_subprocess("--trace-config", "-p", "no:cacheprovider")
    listed.stdout.fnmatch_lines(["*gradscope*pytest_plugin*"])
    listed.assert_outcomes(passed=1)
    disabled = pytester.runpytest_subprocess("-p", "no:gradscope", "-p", "no:cacheprovider")
    disabled.assert_outcomes(errors=1)
    disabled.stdout.fnmatch_lines(["*fixture 'gradscope' not found*"])


def test_marker_fails_the_test_on_findings_of_watched_models(pytester):
    pytester.makepyfile(
        HEADER
        + """
import pytest

def _train(scope_factory, name, steps=12):
    model, batch, loss_fn = spec_batch(name)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    scope = scope_factory(model, opt)
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(model(batch[0]), batch[1]).backward()
        opt.step()

@pytest.mark.gradscope(fail_on="warning")
def test_bad(gradscope):
    _train(gradscope, "deep_sigmoid_mlp")

@pytest.mark.gradscope(fail_on="warning", ignore=["vanishing_gradient"])
def test_bad_but_ignored(gradscope):
    _train(gradscope, "deep_sigmoid_mlp")

@pytest.mark.gradscope
def test_good(gradscope):
    _train(gradscope, "deep_relu_mlp")
"""
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["*test_bad *", "*vanishing_gradient in 0*"])


def test_report_option_writes_files_only_for_failing_tests(pytester):
    pytester.makepyfile(
        HEADER
        + """
def test_fails():
    model, batch, loss_fn = spec_batch("deep_sigmoid_mlp")
    assert_healthy_gradients(model, batch, loss_fn, steps=6, lr=0.05)

def test_passes():
    model, batch, loss_fn = spec_batch("deep_relu_mlp")
    assert_healthy_gradients(model, batch, loss_fn, steps=6)
"""
    )
    out = pytester.path / "artifacts"
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", f"--gradscope-report={out}")
    result.assert_outcomes(passed=1, failed=1)
    written = sorted(p.name for p in out.iterdir())
    assert len(written) == 1 and written[0].endswith("test_fails")
    folder = out / written[0]
    assert (folder / "report.json").exists()
    assert (folder / "dashboard.png").read_bytes()[:4] == b"\x89PNG"


SNAPSHOT_TEST = """
import torch
from torch import nn
from gradscope.testing import assert_gradient_profile

ACT = {act}

def test_profile():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), ACT(), nn.Linear(32, 32), ACT(),
                          nn.Linear(32, 32), ACT(), nn.Linear(32, 4))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 16, generator=g)
    y = x[:, :4].argmax(1)
    assert_gradient_profile(model, (x, y), nn.functional.cross_entropy, snapshot="mlp")
"""


def test_snapshot_catches_a_change_in_gradient_flow_and_can_be_updated(pytester):
    pytester.makepyfile(test_snap=SNAPSHOT_TEST.format(act="nn.ReLU"))
    pytester.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=1)
    assert (pytester.path / "__gradscope_snapshots__" / "mlp.json").exists()
    pytester.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=1)
    pytester.makepyfile(test_snap=SNAPSHOT_TEST.format(act="nn.Sigmoid"))
    changed = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    changed.assert_outcomes(failed=1)
    changed.stdout.fnmatch_lines(
        ["*gradient profile 'mlp' moved beyond 0.5 decades*", "*  0: 10^*"]
    )
    pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--gradscope-update-snapshots"
    ).assert_outcomes(passed=1)
    pytester.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=1)
