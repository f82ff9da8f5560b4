"""The hook engine: what watch() measures, that it changes nothing, and that it cleans up."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from helpers import TwoHead, batch, mlp, train
from torch import nn

import gradscope
from gradscope import stats
from gradscope.budget import WARMUP_RECORDS


def _hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


def test_losses_and_parameters_are_bit_identical_with_and_without_gradscope():
    torch.manual_seed(1)
    plain = mlp()
    watched = mlp()
    watched.load_state_dict(plain.state_dict())
    opt_a = torch.optim.Adam(plain.parameters(), lr=1e-2)
    opt_b = torch.optim.Adam(watched.parameters(), lr=1e-2)
    losses_a = train(plain, opt_a, steps=8)
    with gradscope.watch(watched, optimizer=opt_b, full=True) as scope:
        losses_b = train(watched, opt_b, steps=8, scope=scope)
    assert losses_a == losses_b
    for (name, a), (_, b) in zip(plain.named_parameters(), watched.named_parameters(), strict=True):
        assert torch.equal(a, b), name
    assert scope.history.recorded == 8


def test_every_hook_is_removed_on_exit_and_on_an_exception():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(RuntimeError, match="boom"), gradscope.watch(model, optimizer=opt):
        assert _hook_count(model) > 0
        assert opt._optimizer_step_pre_hooks
        raise RuntimeError("boom")
    assert _hook_count(model) == 0
    assert not opt._optimizer_step_pre_hooks
    assert not opt._optimizer_step_post_hooks


def test_users_own_hooks_still_fire_and_outputs_are_unchanged():
    model = mlp()
    seen = []
    handle = model[0].register_forward_hook(lambda m, i, o: seen.append(o.clone()))
    x, _ = batch()
    expected = model(x)
    with gradscope.watch(model):
        got = model(x)
    handle.remove()
    assert torch.equal(expected, got)
    assert len(seen) == 2


def test_gradient_statistics_match_a_direct_computation():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = batch()
    with gradscope.watch(model, optimizer=opt, full=True) as scope:
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        opt.step()
    record = scope.history.records[0]
    names = scope.history.param_names
    for i, name in enumerate(names):
        g = grads[name]
        assert record.grads["grad_l2"][i] == pytest.approx(float(g.norm()), rel=1e-5)
        assert record.grads["grad_l1"][i] == pytest.approx(float(g.abs().sum()), rel=1e-5)
        assert record.grads["grad_max"][i] == pytest.approx(float(g.abs().max()), rel=1e-5)
        assert record.grads["grad_nonfinite"][i] == 0
        assert record.grads["param_norm"][i] == pytest.approx(float(before[name].norm()), rel=1e-5)
        change = dict(model.named_parameters())[name].detach() - before[name]
        assert record.grads["update_norm"][i] == pytest.approx(float(change.norm()), rel=1e-4)


def test_activation_statistics_match_a_direct_computation():
    model = mlp()
    x, y = batch(n=16)
    with gradscope.watch(model) as scope:
        out = model(x)
        nn.functional.cross_entropy(out, y).backward()
        scope.step()
    h = scope.history
    j_relu = h.module_names.index("1")
    j_tanh = h.module_names.index("3")
    with torch.no_grad():
        relu_out = torch.relu(model[0](x))
        tanh_out = torch.tanh(model[2](relu_out))
    rec = h.records[0]
    assert rec.acts["nonfinite"][j_relu] == 0.0  # every entry finite
    assert rec.acts["sumsq"][j_relu] == pytest.approx(float((relu_out**2).sum()), rel=1e-4)
    assert rec.acts["zeros"][j_relu] == float((relu_out == 0).sum())
    assert rec.acts["silent_units"][j_relu] == float((relu_out.amax(0) == 0).sum())
    assert rec.acts["saturated"][j_tanh] == float((tanh_out.abs() > 0.99).sum())
    assert rec.acts["numel"][j_relu] == relu_out.numel()


def test_one_host_sync_per_recorded_step(monkeypatch):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    calls = {"to_host": 0, "item": 0}
    real_to_host = stats.to_host
    real_item = torch.Tensor.item

    def counting_to_host(tensors):
        calls["to_host"] += 1
        return real_to_host(tensors)

    def counting_item(self):
        calls["item"] += 1
        return real_item(self)

    monkeypatch.setattr(stats, "to_host", counting_to_host)
    with gradscope.watch(model, optimizer=opt) as scope:
        monkeypatch.setattr(torch.Tensor, "item", counting_item)
        for k in range(4):
            x, y = batch(seed=k)
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            scope.log_loss(loss)
            loss.backward()
            opt.step()
        monkeypatch.setattr(torch.Tensor, "item", real_item)
    assert calls == {"to_host": 4, "item": 0}


def test_every_n_records_one_step_in_n_and_hooks_do_no_work_between():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradscope.watch(model, optimizer=opt, every=3) as scope:
        train(model, opt, steps=10, scope=scope)
    assert scope.history.steps == [0, 3, 6, 9]
    assert all(r.hooks_fired == 5 for r in scope.history.records)


def test_layers_are_ordered_by_first_call_and_shared_modules_count_calls():
    model = TwoHead()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradscope.watch(model, optimizer=opt) as scope:
        train(model, opt, steps=2, scope=scope)
    h = scope.history
    ordered = [h.module_names[j] for j in h.module_order]
    assert ordered == ["body", "act", "shared", "head"]
    assert [layer.name for layer in scope.model_info.layers] == ordered
    assert h.records[0].acts["calls"][h.module_names.index("shared")] == 2
    # the in-place ReLU was measured on its real output
    assert h.records[0].acts["zeros"][h.module_names.index("act")] > 0


def test_frozen_and_tied_parameters():
    model = mlp()
    model[0].weight.requires_grad_(False)
    tied = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 10, bias=False))
    tied[1].weight = tied[0].weight
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    with gradscope.watch(model, optimizer=opt) as scope:
        train(model, opt, steps=2, scope=scope)
    assert "0.weight" not in scope.history.param_names
    assert "0.bias" in scope.history.param_names
    opt2 = torch.optim.SGD(tied.parameters(), lr=0.1)
    with gradscope.watch(tied, optimizer=opt2) as scope2:
        opt2.zero_grad()
        nn.functional.cross_entropy(
            tied(torch.tensor([1, 2, 3])), torch.tensor([1, 2, 3])
        ).backward()
        opt2.step()
    assert scope2.history.param_names == ["0.weight"]
    assert scope2.history.records[0].grads["has_grad"] == [1.0]


def test_gradient_accumulation_reads_the_accumulated_gradient():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradscope.watch(model, optimizer=opt) as scope:
        opt.zero_grad()
        for k in range(3):
            x, y = batch(seed=k)
            nn.functional.cross_entropy(model(x), y).backward()
        expected = float(model[0].weight.grad.norm())
        opt.step()
    rec = scope.history.records[0]
    i = scope.history.param_names.index("0.weight")
    assert rec.grads["grad_l2"][i] == pytest.approx(expected, rel=1e-5)
    assert rec.acts["calls"][scope.history.module_names.index("0")] == 3


def test_lstm_tuple_outputs_are_measured():
    class Seq(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm = nn.LSTM(4, 8, batch_first=True)
            self.fc = nn.Linear(8, 1)

        def forward(self, x):
            out, _ = self.lstm(x)
            return self.fc(out[:, -1])

    model = Seq()
    opt = torch.optim.Adam(model.parameters())
    with gradscope.watch(model, optimizer=opt) as scope:
        opt.zero_grad()
        model(torch.randn(3, 5, 4)).pow(2).mean().backward()
        opt.step()
    rec = scope.history.records[0]
    j = scope.history.module_names.index("lstm")
    assert rec.acts["numel"][j] == 3 * 5 * 8
    assert all(rec.grads["has_grad"])


def test_grad_scaler_gradients_are_read_after_unscaling():
    torch.manual_seed(3)
    model_a, model_b = mlp(), mlp()
    model_b.load_state_dict(model_a.state_dict())
    x, y = batch()
    opt_a = torch.optim.SGD(model_a.parameters(), lr=0.1)
    with gradscope.watch(model_a, optimizer=opt_a) as plain:
        opt_a.zero_grad()
        nn.functional.cross_entropy(model_a(x), y).backward()
        opt_a.step()
    opt_b = torch.optim.SGD(model_b.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    with gradscope.watch(model_b, optimizer=opt_b, scaler=scaler) as scaled:
        opt_b.zero_grad()
        scaler.scale(nn.functional.cross_entropy(model_b(x), y)).backward()
        scaler.step(opt_b)
        scaler.update()
    a = plain.history.records[0].grads["grad_l2"]
    b = scaled.history.records[0].grads["grad_l2"]
    assert b == pytest.approx(a, rel=1e-4)
    assert scaled.history.records[0].scale == 2.0**12


def test_step_without_an_optimizer_and_late_loss():
    model = mlp()
    with gradscope.watch(model) as scope:
        for k in range(3):
            x, y = batch(seed=k)
            model.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            scope.step(loss=loss)
    losses = scope.history.losses()
    assert losses.shape == (3,)
    assert bool(torch.isfinite(losses).all())
    with pytest.raises(RuntimeError, match="records at optimizer.step"):
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        with gradscope.watch(model, optimizer=opt) as s2:
            s2.step()


def test_loss_logged_after_the_optimizer_step_lands_on_that_step():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradscope.watch(model, optimizer=opt) as scope:
        for k in range(3):
            x, y = batch(seed=k)
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            scope.log_loss(loss)
    assert bool(torch.isfinite(scope.history.losses()).all())


def test_history_is_bounded_and_keeps_first_and_recent_steps_and_tallies():
    model = nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x = torch.randn(4, 3)
    with gradscope.watch(model, optimizer=opt, history_size=64) as scope:
        for step in range(3000):
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            if step == 1500:
                model.weight.grad[0, 0] = float("nan")
            opt.step()
            if step == 1500:
                with torch.no_grad():
                    model.weight.nan_to_num_(0.0)
    h = scope.history
    assert len(h) <= 64
    assert h.steps[0] == 0 and h.steps[-1] == 2999
    assert h.recorded == 3000
    assert h.first_nonfinite_grad[h.param_names.index("weight")] == 1500


def test_nonfinite_entries_are_counted_exactly_without_full_mode():
    model = nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    with gradscope.watch(model, optimizer=opt) as scope:
        for step in range(3):
            opt.zero_grad()
            model(torch.randn(4, 3)).pow(2).mean().backward()
            if step == 1:
                model.weight.grad[0, :2] = float("inf")
            opt.step()
            with torch.no_grad():
                model.weight.nan_to_num_(0.0)  # lr * inf made NaN weights: reset them
    counts = scope.history.grad_series("grad_nonfinite")[:, 0].tolist()
    assert counts == [0.0, 2.0, 0.0]


def test_torchs_attention_out_proj_is_a_note_not_a_warning():
    layer = nn.TransformerEncoderLayer(d_model=8, nhead=2, dim_feedforward=16, batch_first=True)
    opt = torch.optim.SGD(layer.parameters(), lr=0.01)
    with warnings.catch_warnings():
        warnings.simplefilter("error", gradscope.GradscopeWarning)
        with gradscope.watch(layer, optimizer=opt) as scope:
            for _ in range(3):
                opt.zero_grad()
                layer(torch.randn(2, 5, 8)).pow(2).mean().backward()
                opt.step()
    report = scope.report()
    assert "self_attn.out_proj" in report.coverage["unseen_modules"]
    assert any("forward hook never fired" in note for note in report.notes)
    assert report.coverage["hooks_fired_per_step"] > 0


class _FunctionalHead(nn.Module):
    """A layer whose weight the forward uses through a function: its hook never fires."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(3, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(self.body(x), self.head.weight, self.head.bias)


def test_a_module_that_runs_but_is_never_seen_is_reported():
    model = _FunctionalHead()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with (
        pytest.warns(gradscope.GradscopeWarning, match="head") as warned,
        gradscope.watch(model, optimizer=opt) as scope,
    ):
        for _ in range(3):
            opt.zero_grad()
            model(torch.randn(2, 3)).pow(2).mean().backward()
            opt.step()
    assert len(warned) == 1  # once, not every step
    assert warned[0].filename == __file__  # pointing at the user's opt.step() line
    report = scope.report()
    assert report.coverage["unseen_modules"] == ["head"]
    assert any("forward hook never fired" in note for note in report.notes)


def test_validation_forwards_under_no_grad_are_not_measured():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradscope.watch(model, optimizer=opt) as scope:
        x, y = batch()
        with torch.no_grad():
            model(x)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    assert scope.history.records[0].acts["calls"][0] == 1


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (
            {"model": [1, 2]},
            TypeError,
            "gradscope.watch() needs a torch.nn.Module, got list; pass the model itself, "
            "e.g. gradscope.watch(model, optimizer=opt).",
        ),
        (
            {"optimizer": "sgd"},
            TypeError,
            "optimizer must be a torch.optim.Optimizer, got str; pass the optimizer you call "
            ".step() on, e.g. torch.optim.SGD(model.parameters()).",
        ),
        (
            {"optimizer": [torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)] * 2},
            TypeError,
            "watch() takes one optimizer, got a list of 2; for a GAN, watch each network with "
            "its own optimizer (with gradscope.watch(G, optimizer=opt_g), gradscope.watch(D, "
            "optimizer=opt_d): ...), and gradscope tells the players apart.",
        ),
        (
            {"optimizer": torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)},
            ValueError,
            "The optimizer does not hold any of this model's trainable parameters; pass the "
            "optimizer built from it, e.g. torch.optim.Adam(model.parameters()).",
        ),
        (
            {"scaler": object()},
            TypeError,
            "scaler must be a torch.amp.GradScaler, got object; pass the scaler you call "
            "scaler.step(optimizer) on, or leave it out.",
        ),
        ({"every": 0}, ValueError, "every must be a whole number of steps >= 1, got 0."),
    ],
)
def test_bad_input_gets_one_sentence_saying_what_to_pass(kwargs, error, message):
    args = {"model": mlp()} | kwargs
    with pytest.raises(error) as info:
        gradscope.watch(**args)
    assert str(info.value) == message


def test_overhead_is_measured_and_reported():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradscope.watch(model, optimizer=opt) as scope:
        train(model, opt, steps=3, scope=scope)
    overhead = scope.report().overhead
    assert overhead["recorded_steps"] == 3
    assert 0 < overhead["seconds_per_step"] < 1
    assert math.isclose(overhead["seconds_total"], overhead["seconds_per_step"] * 3)


def test_budget_spaces_out_activation_statistics_and_reports_what_it_did():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradscope.watch(model, optimizer=opt, budget=1e-6) as tight:
        train(model, opt, steps=30, scope=tight)
    summary = tight.report().overhead
    assert summary["budget"] == 1e-6
    assert summary["activation_interval"] > 1
    assert summary["measured_overhead"] > 0
    records = tight.history.records
    shaped = [not math.isnan(r.acts["sumsq"][0]) for r in records]
    assert shaped[0] and not all(shaped)  # activation statistics at first, then spaced out
    # Even the gradient checks cost more than 1e-6 of a step: the budget records fewer steps.
    assert summary["every_step_overhead"] > 1e-6
    assert summary["record_every"] == 16
    assert tight.history.recorded < 30
    assert "above the budget, so 1 step in 16 is recorded" in tight.report().summary()
    assert all(r.grads["has_grad"][0] == 1.0 for r in tight.history.records)  # grads every step
    with gradscope.watch(model, optimizer=opt, budget=5.0) as loose:
        train(model, opt, steps=6, scope=loose)
    assert loose.report().overhead["activation_interval"] == 1
    assert loose.report().overhead["record_every"] == 1
    assert "overhead budget 500.0%" in str(loose.report())


def _detail_steps(scope: gradscope.Scope) -> list[int]:
    return [r.step for r in scope.history.records if r.detail]


def test_the_default_cadence_is_a_fixed_one_for_the_first_100_recorded_steps():
    """A short run is measured on its first ten steps, then one in five (so its last detail
    step is near its end); an explicit detail_every=10 is kept exactly."""
    from gradscope.budget import AUTO_WARMUP_EVERY

    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradscope.watch(model, optimizer=opt) as auto:
        train(model, opt, steps=101, scope=auto)
    with gradscope.watch(model, optimizer=opt, detail_every=10) as fixed:
        train(model, opt, steps=101, scope=fixed)
    assert _detail_steps(auto) == [*range(WARMUP_RECORDS), *range(10, 101, AUTO_WARMUP_EVERY)]
    assert _detail_steps(fixed) == [*range(WARMUP_RECORDS), *range(10, 101, 10)]
    assert auto.report().overhead["detail_auto"] == 1.0
    assert fixed.report().overhead["detail_auto"] == 0.0
    assert "paced by their cost" not in fixed.report().summary()
    assert "paced by their cost" in auto.report().summary()


def test_an_explicit_detail_every_is_kept_exactly_in_a_long_run():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradscope.watch(model, optimizer=opt, detail_every=10) as scope:
        train(model, opt, steps=230, scope=scope)
    assert _detail_steps(scope) == [*range(WARMUP_RECORDS), *range(10, 230, 10)]
    assert "then 1 in 10" in scope.report().summary()


def test_the_detail_cadence_spaces_detail_steps_by_their_measured_cost():
    """Synthetic step times (no wall clock): the interval keeps the detail steps' extra
    time near 3% of training, in steps of 10, at most 50, never under 10."""
    from gradscope.budget import AUTO_MAX_INTERVAL, AUTO_WARMUP_EVERY, DetailCadence

    def run(light: float, detail: float, records: int = 400) -> DetailCadence:
        cadence, now, chosen = DetailCadence(), 0.0, []
        for recorded in range(records):
            is_detail = cadence.is_detail(recorded)
            now += detail if is_detail else light
            cadence.observe(recorded, is_detail, now, 1)
            if is_detail:
                chosen.append(recorded)
        warm_up = [*range(WARMUP_RECORDS), *range(10, 101, AUTO_WARMUP_EVERY)]
        assert chosen[: len(warm_up)] == warm_up
        return cadence

    costly = run(light=1e-3, detail=3.4e-3)  # a detail step adds 2.4 light steps: 1 in 80+
    assert costly.interval == AUTO_MAX_INTERVAL
    assert costly.summary()["detail_extra_s"] == pytest.approx(2.4e-3)
    cheap = run(light=10e-3, detail=10.5e-3)  # adds 5% of a step: 1 in 10 is within 3%
    assert cheap.interval == 10
    middle = run(light=10e-3, detail=14e-3)  # adds 40%: 14 steps keep it under 3% -> 20
    assert middle.interval == 20


def test_the_detail_cadence_counts_gaps_from_the_last_detail_step():
    from gradscope.budget import DetailCadence

    cadence = DetailCadence(interval=30, last_detail=100)
    assert [r for r in range(101, 200) if cadence.is_detail(r)][:1] == [130]


def test_a_budget_that_is_not_a_fraction_is_refused():
    with pytest.raises(ValueError, match="budget must be a fraction of a training step"):
        gradscope.watch(mlp(), budget=0)


def test_works_under_torch_compile_without_changing_the_numbers():
    torch.manual_seed(5)
    plain_model, model = mlp(), mlp()
    model.load_state_dict(plain_model.state_dict())
    opt_plain = torch.optim.SGD(plain_model.parameters(), lr=0.1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    expected = train(plain_model, opt_plain, steps=WARMUP_RECORDS + 2)
    compiled = torch.compile(model, backend="eager")
    with gradscope.watch(model, optimizer=opt) as scope:
        got = train(compiled, opt, steps=WARMUP_RECORDS + 2, scope=scope)
    assert got == expected
    detail = [step < WARMUP_RECORDS or step % 10 == 0 for step in range(WARMUP_RECORDS + 2)]
    assert not detail[-1]  # the last step is a light one: no module hook fired
    assert [r.hooks_fired for r in scope.history.records] == [5 if d else 0 for d in detail]
    assert scope.report().coverage["unseen_modules"] == []


def _light_records(scope: gradscope.Scope) -> list:
    """Records of steps that took only the every-step statistics (no L1 norms)."""
    return [r for r in scope.history.records if math.isnan(r.grads["grad_l1"][0])]


def test_light_steps_leave_the_module_outputs_alone():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with gradscope.watch(model, optimizer=opt, detail_every=100) as scope:
        train(model, opt, steps=WARMUP_RECORDS + 3, scope=scope)
    light = _light_records(scope)
    assert len(light) == 3  # the first records take every statistic
    for record in light:
        assert all(c == 0 for c in record.acts["calls"])
        assert all(math.isnan(v) for v in record.acts["sumsq"])
        assert all(math.isfinite(v) for v in record.grads["grad_l2"])


def test_detail_l1_parameter_and_update_norms_are_exact_when_small_and_close_when_sampled():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(200, 100), nn.ReLU(), nn.Linear(100, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(64, 200), torch.randint(0, 3, (64,))
    params = dict(model.named_parameters())
    with gradscope.watch(model, optimizer=opt) as scope:
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        before = {n: p.detach().clone() for n, p in params.items()}
        l1 = {n: float(p.grad.abs().sum()) for n, p in params.items()}
        opt.step()
    record = scope.history.records[0]
    for i, name in enumerate(scope.history.param_names):
        expected = (
            l1[name],
            float(before[name].norm()),
            float((params[name].detach() - before[name]).norm()),
        )
        got = tuple(record.grads[c][i] for c in ("grad_l1", "param_norm", "update_norm"))
        if params[name].numel() <= stats.UPDATE_SAMPLE:
            assert got == pytest.approx(expected, rel=1e-4)
        else:  # 20,000 entries, estimated from the first 4,096
            for value, want, rel in zip(got, expected, (0.25, 0.1, 0.25), strict=True):
                assert value == pytest.approx(want, rel=rel)


def test_to_host_keeps_values_across_dtypes_and_shapes():
    tensors = [torch.tensor(1.5), torch.tensor(7), torch.tensor([2.0]), torch.tensor(0.25)]
    assert stats.to_host(tensors) == [1.5, 7.0, 2.0, 0.25]


@pytest.mark.parametrize("options", [{"every": 2}, {"nan_origin": False, "detail_every": 100}])
def test_each_logged_loss_lands_on_its_own_step(options):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with gradscope.watch(model, optimizer=opt, **options) as scope:
        losses = train(model, opt, steps=8, scope=scope)
    recorded = {r.step: r for r in scope.history.records}
    got = scope.history.losses().tolist()
    for (step, _record), loss in zip(sorted(recorded.items()), got, strict=True):
        assert loss == pytest.approx(losses[step])


class BreaksAtStep(nn.Module):
    """Takes sqrt of its input; from call ``at`` on the input is shifted negative: NaN."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at, self.calls = at, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        shift = 10.0 if self.calls > self.at else 0.0
        return torch.sqrt(x.abs() + 1.0 - shift)


def _nan_net(at: int) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(6, 16),
        nn.BatchNorm1d(16),
        nn.ReLU(),
        nn.Dropout(0.2),
        nn.Linear(16, 16),
        BreaksAtStep(at),
        nn.Linear(16, 3),
    )


def test_a_nan_between_detail_steps_is_traced_to_its_module_by_replaying_the_step():
    model = _nan_net(at=7)  # the 8th step is a light one (detail: 0-4, then 10, 20...)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with gradscope.watch(model, optimizer=opt) as scope:
        train(model, opt, steps=9, scope=scope)
    finding = next(f for f in scope.report().findings if f.kind == "nonfinite_gradient")
    assert (finding.layer, finding.step, finding.evidence["where"]) == ("5", 7, "forward")
    assert math.isnan(scope.history.records[7].grads["grad_l1"][0])  # a light step indeed


def test_the_replay_leaves_training_bit_identical():
    plain_model, model = _nan_net(at=12), _nan_net(at=12)
    opt_plain = torch.optim.SGD(plain_model.parameters(), lr=0.01)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    torch.manual_seed(1)
    expected = train(plain_model, opt_plain, steps=14)
    torch.manual_seed(1)
    with gradscope.watch(model, optimizer=opt) as scope:
        got = train(model, opt, steps=14, scope=scope)
    assert any(f.kind == "nonfinite_gradient" for f in scope.report().findings)
    assert str(got) == str(expected)  # NaN != NaN, so compare as text
    watched_state = model.state_dict()
    for name, a in plain_model.state_dict().items():
        assert torch.equal(a.nan_to_num(), watched_state[name].nan_to_num()), name  # buffers too
    assert model[5].calls == plain_model[5].calls + 1  # the replay ran the forward once more


class TwoPart(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.generator = nn.Sequential(nn.Linear(4, 6), nn.Tanh())
        self.discriminator = nn.Sequential(nn.Linear(6, 8), BreaksAtStep(at=6), nn.Linear(8, 1))


def test_the_replay_follows_a_loop_that_calls_the_parts_one_by_one():
    model = TwoPart()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with gradscope.watch(model, optimizer=opt) as scope:
        for step in range(8):
            opt.zero_grad()
            fake = model.generator(torch.randn(5, 4, generator=torch.Generator().manual_seed(step)))
            loss = model.discriminator(fake).mean()
            scope.log_loss(loss)
            loss.backward()
            opt.step()
    finding = next(f for f in scope.report().findings if f.kind == "nonfinite_gradient")
    assert (finding.layer, finding.step) == ("discriminator.1", 6)


def test_without_nan_origin_the_report_says_the_origin_is_unknown_and_how_to_find_it():
    model = _nan_net(at=12)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with gradscope.watch(model, optimizer=opt, nan_origin=False) as scope:
        train(model, opt, steps=14, scope=scope)
    finding = next(f for f in scope.report().findings if f.kind == "nonfinite_gradient")
    assert (finding.layer, finding.step, finding.evidence["where"]) == (None, 12, "unknown")
    assert "run with nan_origin=True (the default) or `gradscope check`" in finding.message


def test_a_live_plugin_can_stop_the_run_before_a_nan_reaches_the_weights():
    from gradscope import hookimpl, plugins

    class StopOnNan:
        @hookimpl
        def gradscope_on_step(self, record, scope):
            if any(count > 0 for count in record.grads["grad_nonfinite"]):
                raise gradscope.StopTraining(f"NaN gradient at step {record.step}")

    model = _nan_net(at=12)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with (
        plugins.registered(StopOnNan()),
        pytest.raises(gradscope.StopTraining, match="NaN gradient at step 12"),
        gradscope.watch(model, optimizer=opt) as scope,
    ):
        train(model, opt, steps=14, scope=scope)
    assert all(bool(p.isfinite().all()) for p in model.parameters())


@pytest.mark.parametrize("spare", [False, True], ids=["every-grad", "a-parameter-unused"])
def test_a_light_step_whose_gradient_jumps_measures_its_update(spare):
    """A blow-up between two detail steps (step 22 of a 30-step run, a loss 1000x larger)
    still has its update measured, exactly; the healthy light steps measure none.  With
    an unused parameter every record takes the general path (gather), which must jump
    the same way."""
    model = mlp()
    if spare:
        model.register_parameter("spare", nn.Parameter(torch.zeros(3)))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    moved = {}
    with gradscope.watch(model, optimizer=opt) as scope:
        for k in range(30):
            x, y = batch(seed=k)
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y) * (1000.0 if k == 22 else 1.0)
            scope.log_loss(loss)
            loss.backward()
            before = model[0].weight.detach().clone()
            opt.step()
            moved[k] = float((model[0].weight.detach() - before).norm())
    records = {r.step: r for r in scope.history.records}
    first = scope.history.param_names.index("0.weight")
    assert not records[22].detail
    assert records[22].grads["update_norm"][first] == pytest.approx(moved[22], rel=1e-4)
    light = [r for r in records.values() if not r.detail and r.step != 22]
    assert light and all(math.isnan(r.grads["update_norm"][first]) for r in light)
    assert scope.overhead()["update_jumps"] == 1.0


def test_a_finite_gradient_whose_norm_overflows_float32_is_not_called_non_finite():
    """Entries of 1e20 are finite, but their squares pass float32's range, so the L2 norm
    comes out inf: measured again in float64, it is finite and no NaN/Inf is reported (an
    ELECTRA initialised to a constant was told "NaN/Inf appeared")."""
    model = nn.Linear(64, 64)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    x = torch.ones(1, 64)
    with gradscope.watch(model, optimizer=opt) as scope:
        for _ in range(12):
            opt.zero_grad()
            loss = model(x).sum() * 1e20
            scope.log_loss(loss)
            loss.backward()
            opt.step()
    records = scope.history.records
    assert records[0].detail and not records[-1].detail  # both ways a record is made
    for record in records:
        assert record.grads["grad_l2"][0] == pytest.approx(1e20 * 64, rel=1e-3)
        assert record.grads["grad_nonfinite"][0] == 0 and not record.nonfinite
    assert "nonfinite_gradient" not in scope.report().kinds()


def _records_of(scope: gradscope.Scope) -> list[tuple]:
    def row(values: list[float]) -> list[float | None]:
        return [None if math.isnan(v) else v for v in values]

    return [
        (
            r.step,
            r.loss,
            r.detail,
            r.nonfinite,
            r.hooks_fired,
            {k: row(v) for k, v in r.grads.items()},
            {k: row(v) for k, v in r.acts.items()},
        )
        for r in scope.history.records
    ]


def test_light_steps_built_in_batches_give_the_records_built_one_by_one(monkeypatch):
    # The default loop defers its light steps' records (docs/architecture.md, "Light steps
    # are deferred"); the records must be those the step-by-step path makes.  90 steps stay
    # in the default cadence's fixed first 100 records, so both runs take the same steps.
    def run() -> gradscope.Scope:
        torch.manual_seed(3)
        model = mlp()
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        with gradscope.watch(model, optimizer=opt) as scope:
            train(model, opt, steps=90, scope=scope)
        return scope

    deferred_steps = []
    defer = gradscope.Scope._defer_light_step

    def counted(self: gradscope.Scope) -> bool:
        took = defer(self)
        deferred_steps.extend([self._step] if took else [])
        return took

    monkeypatch.setattr(gradscope.Scope, "_defer_light_step", counted)
    deferred = run()
    assert len(deferred_steps) > 40  # most light steps were deferred
    assert deferred.overhead()["recorded_steps"] == 90
    monkeypatch.setattr(gradscope.Scope, "_light_steps_deferrable", lambda self: False)
    one_by_one = run()
    assert _records_of(deferred) == _records_of(one_by_one)
    assert [f.kind for f in deferred.report().findings] == [
        f.kind for f in one_by_one.report().findings
    ]


def test_history_read_in_the_middle_of_a_run_holds_every_step_so_far():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with gradscope.watch(model, optimizer=opt) as scope:
        train(model, opt, steps=37, scope=scope)
        assert scope.history.recorded == 37
        assert [r.step for r in scope.history.records] == list(range(37))
        assert all(r.loss is not None for r in scope.history.records)
        train(model, opt, steps=5, scope=scope)
    assert [r.step for r in scope.history.records] == list(range(42))
