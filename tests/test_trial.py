"""gradscope.trial: every suggested fix trained on a copy, judged against a baseline."""

from __future__ import annotations

import copy
import itertools
import json
import math
import re
from collections.abc import Callable

import pytest
import torch
from helpers import watch_loop
from torch import nn

import gradscope
from gradscope import Finding, Report, Suggestion
from gradscope.models.data import classification_batch
from gradscope.reference import get_spec
from gradscope.trials import runner
from gradscope.trials.fixes import CodeChange

torch.set_num_threads(1)
CE = nn.functional.cross_entropy


def _batches(n: int = 8) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [classification_batch(64, 32, 4, seed=k) for k in range(n)]


def _watched(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int = 30) -> Report:
    batches = _batches()
    data = lambda k: batches[k % len(batches)]  # noqa: E731
    return watch_loop(model, optimizer, data, steps, loss_fn=CE, detail_every=1)


def _deep_sigmoid() -> tuple[nn.Module, Report]:
    spec = get_spec("deep_sigmoid_mlp")
    torch.manual_seed(0)
    model = spec.factory()
    trained = copy.deepcopy(model)
    report = _watched(trained, torch.optim.SGD(trained.parameters(), lr=0.05))
    return model, report


def _finding(kind: str, layer: str | None, *suggestions: str) -> Finding:
    return Finding(
        kind=kind,
        layer=layer,
        severity="warning",
        step=0,
        message="made up for the test",
        suggestions=[Suggestion(k, k, "why", f"# {k}") for k in suggestions],
    )


def test_vanishing_mlp_first_result_helps_and_removes_the_finding():
    model, report = _deep_sigmoid()
    finding = next(f for f in report.findings if f.kind == "vanishing_gradient")
    assert finding.layer == "0"

    result = gradscope.trial(model, _batches(), CE, report, steps=30)

    best = result.results[0]
    assert best.verdict == "helps"
    assert best.finding is finding
    assert best.loss_after < best.loss_before - result.margin
    assert "vanishing_gradient@0" in best.findings_gone
    assert "vanishing_gradient@0" in result.baseline_findings
    # Best first: every helping result before every other verdict.
    verdicts = [r.verdict for r in result.results]
    assert verdicts == sorted(verdicts, key=["helps", "no effect", "hurts", "not applicable"].index)
    assert result.cost is not None and result.cost > 0
    assert result.best is best and result.best_model is not None


def test_the_users_model_optimizer_and_random_state_are_untouched():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.Sigmoid(), nn.Linear(64, 64), nn.Sigmoid())
    model.append(nn.Linear(64, 4))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    report = _watched(model, optimizer, steps=6)
    report.findings = [_finding("vanishing_gradient", "0", "use_relu", "lower_lr")]
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    opt_state = copy.deepcopy(optimizer.state_dict())
    rng = torch.get_rng_state()

    gradscope.trial(model, _batches(), CE, report, steps=5)

    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    after = optimizer.state_dict()
    assert after["param_groups"] == opt_state["param_groups"]
    for k, state in opt_state["state"].items():
        for name, value in state.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(after["state"][k][name]))
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(isinstance(m, nn.Sigmoid) for m in (model[1], model[3]))


def test_baseline_replays_the_reports_optimizer_class_and_hyper_parameters():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 16), nn.Tanh(), nn.Linear(16, 4))
    fresh = copy.deepcopy(model)
    optimizer = torch.optim.Adam(
        [
            {"params": model[0].parameters(), "lr": 3e-3},
            {"params": model[2].parameters(), "lr": 1e-2, "betas": (0.8, 0.9)},
        ]
    )
    report = _watched(model, optimizer, steps=3)
    settings = report.model_info.optimizer_settings
    assert settings["class"] == "Adam"
    assert settings["param_groups"][1]["params"] == ["2.weight", "2.bias"]
    report = Report.from_json(report.to_json())  # the settings survive JSON
    report.findings = [_finding("vanishing_gradient", "0", "lower_lr")]

    result = gradscope.trial(fresh, _batches(), CE, report, steps=6, seed=3, extend=1)

    torch.manual_seed(3)
    twin = copy.deepcopy(fresh)
    by_hand = torch.optim.Adam(
        [
            {"params": twin[0].parameters(), "lr": 3e-3},
            {"params": twin[2].parameters(), "lr": 1e-2, "betas": (0.8, 0.9)},
        ]
    )
    losses = []
    for x, y in _batches()[:6]:
        by_hand.zero_grad()
        loss = CE(twin(x), y)
        loss.backward()
        by_hand.step()
        losses.append(float(loss.detach()))
    assert result.baseline_losses == losses


def test_a_healthy_report_has_nothing_to_fix_and_trains_nothing(monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("a healthy report must not train anything")

    monkeypatch.setattr(runner, "train", no_training)
    model = nn.Linear(32, 4)
    report = Report(findings=[])

    result = gradscope.trial(model, _batches(), CE, report)

    assert result.results == [] and result.nothing_to_fix
    assert "nothing to fix" in str(result)
    assert result.cost is None


def test_fixes_that_do_not_fit_say_why_and_the_rest_still_runs():
    spec = get_spec("lstm")
    torch.manual_seed(0)
    model = spec.factory()
    report = Report(
        findings=[
            _finding(
                "vanishing_gradient",
                "rnn",
                "add_batchnorm",
                "use_relu",
                "use_lstm_or_gru",
                "fix_loss_numerics",
                "mystery_fix",
                "clip_grad_norm",
            )
        ]
    )
    batches = [spec.example_batch(16, seed=k) for k in range(4)]

    result = gradscope.trial(model, batches, spec.loss_fn, report, steps=4, extend=1)

    by_kind = {r.kind: r for r in result.results}
    assert by_kind["add_batchnorm"].verdict == "not applicable"
    assert "BatchNorm" in by_kind["add_batchnorm"].reason
    assert by_kind["use_relu"].reason.startswith("no hidden nn.Sigmoid/nn.Tanh module")
    assert by_kind["use_lstm_or_gru"].reason == "the model has no vanilla nn.RNN module to replace"
    assert by_kind["fix_loss_numerics"].needs_code_change
    assert by_kind["mystery_fix"].reason == "no automatic fix for suggestion kind 'mystery_fix'"
    assert by_kind["clip_grad_norm"].verdict in ("helps", "no effect", "hurts")
    assert len(by_kind["clip_grad_norm"].losses) == 4
    assert "needs a code change, not trained: fix_loss_numerics" in result.notes


def test_batchnorm_goes_after_hidden_linear_layers_and_the_finding_is_followed():
    model, report = _deep_sigmoid()
    finding = next(f for f in report.findings if f.kind == "vanishing_gradient")
    report.findings = [finding]
    finding.suggestions = [s for s in finding.suggestions if s.kind == "add_batchnorm"]

    result = gradscope.trial(model, _batches(), CE, report, steps=3)

    (only,) = result.results
    assert only.layers and "16" not in only.layers  # never after the output layer
    assert only.change == "BatchNorm after each listed layer"
    assert only.verdict in ("helps", "no effect", "hurts")


def test_a_code_change_the_user_supplies_is_verified():
    spec = get_spec("log_of_zero")
    torch.manual_seed(0)
    model = spec.factory()
    trained = copy.deepcopy(model)
    batches = [spec.example_batch(seed=k) for k in range(8)]
    optimizer = spec.optimizer(trained.parameters())
    with gradscope.watch(trained, optimizer=optimizer, detail_every=1) as scope:
        for k in range(20):
            x, y = batches[k % 8]
            optimizer.zero_grad()
            loss = spec.loss_fn(trained(x), y)
            scope.log_loss(loss)
            loss.backward()
            optimizer.step()
    report = scope.report()
    assert report.findings[0].suggestions[0].kind == "fix_loss_numerics"

    def stable(copied: nn.Module) -> CodeChange:
        fixed = get_spec("stable_log_softmax").factory()
        fixed.load_state_dict(copied.state_dict())
        return CodeChange(model=fixed, description="log_softmax")

    without = gradscope.trial(model, batches, spec.loss_fn, report, steps=20)
    with_change = gradscope.trial(
        model, batches, spec.loss_fn, report, steps=20, code_changes={"fix_loss_numerics": stable}
    )

    assert next(r for r in without.results if r.kind == "fix_loss_numerics").needs_code_change
    first = with_change.results[0]
    assert (first.kind, first.verdict) == ("fix_loss_numerics", "helps")
    assert math.isinf(first.loss_before) and math.isfinite(first.loss_after)


def test_json_table_and_figure():
    model, report = _deep_sigmoid()
    report.findings[0].suggestions = report.findings[0].suggestions[:2]
    report.model_name = "net[bold]x[/bold]"

    result = gradscope.trial(model, _batches(), CE, report, steps=5, extend=1)

    data = json.loads(result.to_json())
    assert [r["kind"] for r in data["results"]] == [r.kind for r in result.results]
    assert len(data["baseline"]["losses"]) == 5
    assert data["steps"] == 5 and data["extended_from"] is None
    from rich.console import Console

    console = Console(record=True, width=200)
    result.print(console)
    text = console.export_text()
    assert "net[bold]x[/bold]" in text  # names are escaped, not read as markup
    assert "use_relu" in text and "kaiming_init" in text
    from matplotlib.figure import Figure

    fig = result.figure()
    assert isinstance(fig, Figure)
    labels = [line.get_label() for line in fig.axes[0].get_lines()]
    assert labels[0] == "baseline" and len(labels) == 3


def test_bad_inputs_are_one_sentence_errors():
    report = Report(findings=[_finding("vanishing_gradient", "0", "lower_lr")])
    with pytest.raises(gradscope.InputError, match="steps must be at least 1"):
        gradscope.trial(nn.Linear(32, 4), _batches(), CE, report, steps=0)
    with pytest.raises(gradscope.InputError, match="batches is empty"):
        gradscope.trial(nn.Linear(32, 4), [], CE, report)


def test_clipping_uses_the_reports_median_gradient_norm_and_a_given_optimizer_factory():
    model, report = _deep_sigmoid()
    norms = report.history.grad_series("grad_l2").pow(2).sum(dim=1).sqrt()
    report.findings = [_finding("vanishing_gradient", "0", "clip_grad_norm", "lower_lr")]
    built = []

    def factory(params):
        built.append(len(params))
        return torch.optim.SGD(params, lr=0.05)

    result = gradscope.trial(
        model, _batches(), CE, report, steps=3, optimizer_factory=factory, extend=1
    )

    clip = next(r for r in result.results if r.kind == "clip_grad_norm")
    assert (
        clip.change == f"clip_grad_norm_(max_norm={float(norms.median()):.3g}, the median "
        "gradient norm of the report)"
    )
    assert built == [18, 18, 18]  # the baseline and two variants, every parameter each


def test_input_normalisation_and_weight_decay_from_third_party_suggestions():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 4))
    offset = [(x * 30 + 100, y) for x, y in _batches(4)]
    report = Report(
        findings=[_finding("exploding_gradient", "0", "normalize_inputs", "weight_decay")]
    )

    result = gradscope.trial(model, offset, CE, report, steps=4)
    custom = gradscope.trial(
        model,
        offset,
        None,
        report,
        steps=2,
        train_step=lambda m, b, o, s: _step(m, b, o),
    )

    by_kind = {r.kind: r for r in result.results}
    assert by_kind["normalize_inputs"].change == "inputs standardised per feature"
    assert by_kind["weight_decay"].change == "weight decay 1e-4 (10x if already set)"
    assert all(len(r.losses) == 4 for r in result.results)
    skipped = next(r for r in custom.results if r.kind == "normalize_inputs")
    assert (skipped.verdict, skipped.reason) == (
        "not applicable",
        "a custom train_step feeds the model itself",
    )


def _step(model: nn.Module, batch, optimizer) -> torch.Tensor:
    x, y = batch
    optimizer.zero_grad()
    loss = CE(model(x), y)
    loss.backward()
    optimizer.step()
    return loss


# -- CLI ---------------------------------------------------------------------------------
def _cli(*args: str):
    from click.testing import CliRunner

    from gradscope.cli import main

    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def _checkpoint(tmp_path, name: str) -> str:
    torch.manual_seed(0)
    path = tmp_path / f"{name}.pt"
    torch.save(get_spec(name).factory().state_dict(), path)
    return str(path)


def test_cli_check_try_fixes_prints_the_table_and_saves_the_best_variant(tmp_path):
    from safetensors.torch import load_file

    fixed = tmp_path / "fixed.safetensors"
    args = ["--steps", "30", "--lr", "0.05", "--fail-on", "warning", "--try-fixes"]
    args += ["--save-fixed", str(fixed)]
    checkpoint = _checkpoint(tmp_path, "deep_sigmoid_mlp")
    result = _cli("check", checkpoint, "--model", "deep_sigmoid_mlp", *args)

    assert result.exit_code == 1  # the diagnosis found a warning; the exit code says so
    assert "trial of deep_sigmoid_mlp: 3 fixes, 30 steps each" in result.output
    assert re.search(r"│ helps +│ use_relu +│ vanishing_gradient in 0", result.output)
    assert f"wrote {fixed}: the weights after 30 steps of the best variant (use_relu" in (
        result.output
    )
    weights = load_file(str(fixed))
    assert set(weights) == {f"{k}.{p}" for k in range(0, 17, 2) for p in ("weight", "bias")}


def test_cli_check_try_fixes_on_a_healthy_model_trains_nothing(tmp_path):
    result = _cli("check", _checkpoint(tmp_path, "fnn"), "--model", "fnn", "--try-fixes")

    assert result.exit_code == 0
    assert "trial of fnn: nothing to fix" in result.output


def test_cli_check_json_carries_the_trial(tmp_path):
    result = _cli(
        "check",
        _checkpoint(tmp_path, "deep_sigmoid_mlp"),
        "--model",
        "deep_sigmoid_mlp",
        "--steps",
        "5",
        "--try-fixes",
        "--json",
    )

    data = json.loads(result.output)
    # No fix is clearly better after 5 steps, so every run was trained again for 20.
    assert (data["trial"]["extended_from"], data["trial"]["steps"]) == (5, 20)
    assert {r["kind"] for r in data["trial"]["results"]} == {
        "use_relu",
        "kaiming_init",
        "add_batchnorm",
    }


def test_cli_save_fixed_needs_try_fixes(tmp_path):
    result = _cli(
        "check", _checkpoint(tmp_path, "fnn"), "--model", "fnn", "--save-fixed", "x.safetensors"
    )

    assert result.exit_code == 2
    assert result.output.strip() == "Error: --save-fixed needs --try-fixes."


def test_cli_demo_try_fixes_plots_the_trial(tmp_path):
    result = _cli("demo", "zero_init_mlp", "--try-fixes", "--plot", str(tmp_path))

    assert result.exit_code == 0
    assert re.search(r"│ helps +│ random_init +│ symmetric_weights in 0", result.output)
    assert (tmp_path / "trial.png").stat().st_size > 0
    assert "trial" in (tmp_path / "report.html").read_text()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_a_torchscript_model_gets_loop_fixes_and_says_why_edits_are_skipped():
    spec = get_spec("deep_sigmoid_mlp")
    torch.manual_seed(0)
    scripted = torch.jit.script(spec.factory())
    report = Report(findings=[_finding("vanishing_gradient", "0", "use_relu", "lower_lr")])

    result = gradscope.trial(scripted, _batches(2), CE, report, steps=3, extend=1)

    by_kind = {r.kind: r for r in result.results}
    assert by_kind["use_relu"].reason.startswith("a TorchScript model cannot be edited")
    assert len(by_kind["lower_lr"].losses) == 3


class _WithUnusedHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))
        self.spare = nn.Linear(32, 4)  # defined, never called

    def forward(self, x):
        return self.body(x)


def test_a_module_that_never_runs_is_frozen_and_that_helps():
    torch.manual_seed(0)
    model = _WithUnusedHead()
    trained = copy.deepcopy(model)
    report = _watched(trained, torch.optim.SGD(trained.parameters(), lr=0.05), steps=10)
    finding = next(f for f in report.findings if f.kind == "no_gradient")
    assert finding.layer == "spare" and finding.suggestions[0].kind == "freeze_unused"

    result = gradscope.trial(model, _batches(), CE, report, steps=10)

    best = result.results[0]
    assert (best.kind, best.verdict, best.layers) == ("freeze_unused", "helps", ["spare"])
    assert "no_gradient@spare" in best.findings_gone
    assert all(p.requires_grad for p in model.parameters())  # the user's model untouched


def test_a_variant_below_every_recent_loss_of_a_wildly_swinging_baseline_helps():
    from gradscope.trials.verdict import judge

    # A loop that never resets its gradients: the baseline swings between 0.5 and 15, so
    # two standard deviations exceed its median; the fixed loop ends far below all of it.
    swinging = [1.0, 2.0] + [0.5, 15.0, 4.0, 12.0, 0.6, 9.0, 3.8, 14.0, 0.7, 8.0]
    fixed = [1.0, 0.9, 0.6, 0.5, 0.4, 0.3, 0.31, 0.3, 0.31, 0.3, 0.31, 0.3]
    verdict = judge(swinging, fixed, finding_gone=True)
    assert verdict.verdict == "helps"
    assert verdict.reason == (
        "final loss 0.3 below each of the baseline's last 10 losses (lowest 0.5)"
    )
    # ...while a variant inside the swing is still no effect.
    assert judge(swinging, swinging[:-5] + [3.0] * 5, finding_gone=True).verdict == "no effect"


def test_a_variant_lower_on_the_same_batches_helps_though_the_batches_swing_more():
    from gradscope.trials.verdict import judge

    # Eight batches of different difficulty, cycled: the baseline's last losses swing by
    # more than the variant's gain, but on every step (the same batch in both runs) the
    # variant is 4% lower.
    pool = [0.6, 1.4, 0.9, 1.2, 0.7, 1.3, 1.0, 0.8]
    baseline = [pool[k % 8] for k in range(40)]
    variant = [0.96 * v for v in baseline]
    verdict = judge(baseline, variant, finding_gone=True)
    assert verdict.verdict == "helps"
    assert verdict.reason.startswith("below the baseline on 10 of the last 10 steps")
    # The mirror: 4% higher on every step hurts; lower on only some steps is no effect.
    assert judge(baseline, [1.04 * v for v in baseline], finding_gone=True).verdict == "hurts"
    mixed = baseline[:-10] + [v * (0.9 if k % 2 else 1.1) for k, v in enumerate(baseline[-10:])]
    assert judge(baseline, mixed, finding_gone=True).verdict == "no effect"
    # The finding must still be gone.
    assert judge(baseline, variant, finding_gone=False).verdict == "no effect"


def test_a_weight_decay_that_pulls_the_weights_to_zero_is_ranked_first_and_helps():
    """AdamW with weight_decay=100 (a typo for 1e-2; a stranger session's case): every
    weight shrinks 10% per step, the first layer 464x in 60 steps, and the loss ends at
    ln 4, a constant prediction's.  It was told Kaiming init, residuals and BatchNorm; the
    weight decay comes first now, and trial shows it helping."""
    make, batches, report = _decayed_run()
    (found,) = report.at_least("warning")
    first = found.suggestions[0]
    assert (first.kind, first.title) == ("lower_weight_decay", "Lower the weight decay to 0.01")
    assert first.why.startswith("First because weight decay 100 at lr=0.001 shrinks every")
    torch.manual_seed(0)
    drawn: list[int] = []
    result = gradscope.trial(make(), _loader(batches, drawn), CE, report, steps=60)
    best = result.results[0]
    assert (best.kind, best.verdict) == ("lower_weight_decay", "helps")
    # A fix helped in the first round: no batch beyond its 60 steps was taken.
    assert result.extended_from is None and len(drawn) == 60


def _loader(batches: list, drawn: list[int]):
    """A data loader that never ends, cycling ``batches``; ``drawn`` counts the batches
    taken from it."""
    for k in itertools.count():
        drawn.append(k)
        yield batches[k % len(batches)]


def _decayed_run() -> tuple[Callable[[], nn.Module], list, Report]:
    """A GELU+LayerNorm MLP trained 60 steps with AdamW(weight_decay=100): its weights
    shrink toward zero and the gradient reaching the first layer vanishes."""
    import torch.nn.functional as F

    w = torch.randn(32, 4, generator=torch.Generator().manual_seed(3))

    def make() -> nn.Module:
        layers, width = [], 32
        for _ in range(6):
            layers += [nn.Linear(width, 64), nn.LayerNorm(64), nn.GELU()]
            width = 64
        return nn.Sequential(*layers, nn.Linear(64, 4))

    batches = []
    for k in range(8):
        x = torch.randn(16, 32, generator=torch.Generator().manual_seed(17000 + k))
        batches.append((x, (x @ w).argmax(1)))
    torch.manual_seed(0)
    model = make()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=100.0)
    with gradscope.watch(model, optimizer=opt) as scope:
        for step in range(60):
            x, y = batches[step % 8]
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            scope.log_loss(loss)
            loss.backward()
            opt.step()
    return make, batches, scope.report()


def test_when_no_fix_helps_within_steps_every_run_is_trained_again_for_longer():
    """Eight steps are too few for the lower weight decay to show; trial says so and
    trains the baseline and every fix again for 4 x 8 steps, where it helps."""
    make, batches, report = _decayed_run()
    drawn: list[int] = []
    torch.manual_seed(0)
    short = gradscope.trial(make(), _loader(batches, drawn), CE, report, steps=8, extend=1)
    assert short.best is None and short.extended_from is None and short.steps == 8
    assert len(drawn) == 8  # one round: no batch beyond its steps was taken

    drawn.clear()
    torch.manual_seed(0)
    ticks = []
    result = gradscope.trial(
        make(),
        _loader(batches, drawn),
        CE,
        report,
        steps=8,
        progress=lambda *tick: ticks.append(tick),
    )

    assert (result.extended_from, result.steps) == (8, 32)
    assert len(drawn) == 32  # the longer round took the next 24 only when it ran
    # A progress bar's feed: each round from the baseline to "done", one tick per fix.
    fixes = len(report.at_least("warning")[0].suggestions)
    rounds = [ticks[: fixes + 2], ticks[fixes + 2 :]]
    assert [r[0] for r in rounds] == [
        (0, fixes + 1, "baseline, 8 steps"),
        (0, fixes + 1, "baseline, 32 steps"),
    ]
    assert all(r[-1] == (fixes + 1, fixes + 1, "done") for r in rounds)
    assert rounds[0][1] == (1, fixes + 1, "lower_weight_decay for vanishing_gradient")
    best = result.results[0]
    assert (best.kind, best.verdict, len(best.losses)) == ("lower_weight_decay", "helps", 32)
    assert len(result.baseline_losses) == 32
    assert (
        "no fix helped clearly after 8 steps: the baseline and every fix were trained "
        "again for 32 steps"
    ) in result.notes
    # The first round's baseline did not show the finding; the longer one's did (the fix
    # that helps removed it), so no note says otherwise.
    assert not [note for note in result.notes if "did not show" in note], result.notes
    assert "32 steps each (a second round: nothing helped after 8)" in result.summary()
    assert "one 8-step baseline run" in result.summary()
    assert json.loads(result.to_json())["extended_from"] == 8
    axes = result.figure().axes[0]
    assert axes.get_title().endswith("(32 steps each; trained again after no fix helped in 8)")
    assert "first round's end: no fix helped by step 8" in [
        line.get_label() for line in axes.get_lines()
    ]
    with pytest.raises(gradscope.InputError, match=r"^extend must be at least 1"):
        gradscope.trial(make(), batches, CE, report, steps=8, extend=0)


def test_no_longer_round_when_every_run_turned_non_finite():
    """Every run sees the same batches, so a loss that turned non-finite within ``steps``
    turns non-finite again in a longer run: the trial stops after one round."""
    model, report = _deep_sigmoid()
    report.findings = [_finding("vanishing_gradient", "0", "lower_lr", "clip_grad_norm")]

    def poisoned(output, target):
        return CE(output, target) * torch.tensor(float("nan"))

    result = gradscope.trial(model, _batches(), poisoned, report, steps=4)

    assert result.extended_from is None and result.steps == 4
    assert {r.verdict for r in result.results} == {"no effect"}
    assert all(len(r.losses) == 4 for r in result.results)


def test_a_fix_that_keeps_a_diverging_baseline_from_blowing_up_helps():
    """A ResNet without BatchNorm at SGD lr 1 (the real-architecture recipe): the baseline
    sits at 2.3, then blows up over its last five steps (3.3, 3.9, 44, 329, 4e8); the lower
    rate stays at 2.  Two standard deviations of that window are 1e8, so the lower rate was
    "no effect"; the noise is now measured robustly (median absolute deviation)."""
    from gradscope.trials.verdict import judge, margin, noise

    baseline = [2.3, 2.25] * 10 + [2.31, 2.22, 2.27, 2.25, 2.12, 3.26, 3.88, 44.5, 329.0, 4.32e8]
    lower_lr = [2.2, 2.1] * 10 + [2.08, 1.98, 2.07, 2.1, 2.1, 2.14, 1.9, 1.8, 2.04, 2.65]
    verdict = judge(baseline, lower_lr, finding_gone=True)
    assert verdict.verdict == "helps"
    assert verdict.reason == "final loss 2.04 < 44.5 - 1.8"
    assert margin(baseline) == pytest.approx(1.8, abs=0.05)
    # For ordinary noise the robust figure is the usual standard deviation's size.
    normal = torch.randn(1000, generator=torch.Generator().manual_seed(0)).tolist()
    assert noise(normal) == pytest.approx(1.0, abs=0.1)
    assert noise([1.0]) == 0.0
    # A loss at exactly 0 most of the time: the deviation of the rest still counts.
    assert noise([0.0] * 7 + [0.03, 0.0, 0.01]) == pytest.approx(0.00917, abs=1e-5)


def test_a_finding_on_the_norm_layer_a_fix_added_is_the_wrapped_layers_finding_still_there():
    """BatchNorm wraps layer ``0`` as ``0.0`` + ``0.1``: a vanishing finding that moved onto
    the new norm layer is the old finding, not a new one with the old one gone (a loop-RNN's
    trial called that "helps" while the gradient still vanished through time)."""
    from gradscope.trials import fixes as F
    from gradscope.trials.verdict import finding_keys

    model = nn.Sequential(nn.Linear(32, 16), nn.Sigmoid(), nn.Linear(16, 4))
    finding = _finding("vanishing_gradient", "0", "add_batchnorm")
    x, _ = _batches(1)[0]
    probe = F.probe(model, x, nn.Module.__call__)
    ctx = F.FixContext(finding, finding.suggestions[0], Report([finding]), [x], probe)

    change = F.apply_fix(model, ctx)

    assert isinstance(change.model.get_submodule("0.1"), nn.BatchNorm1d)
    moved = [_finding("vanishing_gradient", "0.1"), _finding("dead_relu", "0.0")]
    assert finding_keys(moved, change.renames) == {
        ("vanishing_gradient", "0"),
        ("dead_relu", "0"),
    }
