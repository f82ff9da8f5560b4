"""GradscopeCallback for PyTorch Lightning: findings in the run's log, a report on disk."""

from __future__ import annotations

import csv
import json
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

pl = pytest.importorskip("lightning.pytorch")

import gradscope  # noqa: E402
from gradscope import GradscopeError, GradscopeWarning  # noqa: E402
from gradscope.integrations.lightning import GradscopeCallback  # noqa: E402
from gradscope.models import networks  # noqa: E402
from gradscope.models.data import classification_batch  # noqa: E402

STEPS = 10
BATCH = 64


class Classifier(pl.LightningModule):
    """A network trained with cross-entropy and plain SGD (or the optimizer class given)."""

    def __init__(self, net: nn.Module, lr: float = 0.05, optimizer: type = torch.optim.SGD):
        super().__init__()
        self.net = net
        self.lr = lr
        self.optimizer_class = optimizer
        self.fail_at: int | None = None

    def training_step(self, batch, batch_idx):
        if batch_idx == self.fail_at:
            raise RuntimeError("data loader broke")
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return self.optimizer_class(self.parameters(), lr=self.lr)


class HandWrittenSGD(torch.optim.Optimizer):
    """An optimizer outside torch.optim: the callback records it at on_before_optimizer_step."""

    def __init__(self, params, lr: float):
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.add_(p.grad, alpha=-group["lr"])
        return loss


class GAN(pl.LightningModule):
    """Manual optimization with two optimizers, one per sub-module."""

    def __init__(self):
        super().__init__()
        self.automatic_optimization = False
        self.generator = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 2))
        self.discriminator = nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 1))

    def training_step(self, batch, batch_idx):
        (real,) = batch
        g_opt, d_opt = self.optimizers()
        fake = self.generator(torch.randn(len(real), 8))
        bce = nn.functional.binary_cross_entropy_with_logits
        ones, zeros = torch.ones(len(real), 1), torch.zeros(len(real), 1)
        d_loss = bce(self.discriminator(real), ones) + bce(self.discriminator(fake.detach()), zeros)
        d_opt.zero_grad()
        self.manual_backward(d_loss)
        d_opt.step()
        g_loss = bce(self.discriminator(fake), ones)
        g_opt.zero_grad()
        self.manual_backward(g_loss)
        g_opt.step()

    def configure_optimizers(self):
        return (
            torch.optim.Adam(self.generator.parameters(), 1e-3),
            torch.optim.Adam(self.discriminator.parameters(), 1e-3),
        )


def loader() -> DataLoader:
    x, y = classification_batch(STEPS * BATCH, 32, 4, seed=0)
    return DataLoader(TensorDataset(x, y), batch_size=BATCH)


def make_trainer(
    root: Path, callback: GradscopeCallback, logger=True, epochs=1, **options
) -> pl.Trainer:
    if logger is True:
        logger = pl.loggers.CSVLogger(root)
    return pl.Trainer(
        max_epochs=epochs,
        default_root_dir=root,
        callbacks=[callback],
        logger=logger,
        accelerator="cpu",
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        **options,
    )


def fit(module: pl.LightningModule, root: Path, **options) -> tuple:
    callback = GradscopeCallback(**options)
    trainer = make_trainer(root, callback)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(module, loader())
    ours = [str(w.message) for w in caught if issubclass(w.category, GradscopeWarning)]
    return trainer, callback, ours


def logged_metrics(trainer: pl.Trainer) -> dict[str, float]:
    """The last value of each column of the CSVLogger's metrics.csv."""
    with open(Path(trainer.logger.log_dir) / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    out = {}
    for row in rows:
        out.update({k: float(v) for k, v in row.items() if v != ""})
    return out


def test_vanishing_sigmoid_stack_is_reported_in_the_log_and_saved(tmp_path):
    torch.manual_seed(0)
    trainer, callback, warned = fit(Classifier(networks.deep_sigmoid_mlp()), tmp_path)

    assert any("vanishing_gradient in net.0" in w for w in warned), warned
    metrics = logged_metrics(trainer)
    assert metrics["gradscope/errors"] == 1.0 and metrics["gradscope/ok"] == 0.0
    outdir = Path(trainer.log_dir) / "gradscope"
    assert callback.saved == [outdir]
    saved = json.loads((outdir / "report.json").read_text())
    assert [(f["kind"], f["layer"]) for f in saved["findings"]] == [("vanishing_gradient", "net.0")]
    assert saved["history"]["recorded"] == STEPS
    assert (outdir / "dashboard.png").stat().st_size > 10_000


def test_healthy_relu_net_gets_no_finding(tmp_path):
    torch.manual_seed(0)
    trainer, callback, warned = fit(Classifier(networks.deep_relu_mlp()), tmp_path, plot=False)

    assert warned == []
    assert callback.report.findings == []
    assert callback.report.history.recorded == STEPS
    metrics = logged_metrics(trainer)
    assert metrics["gradscope/errors"] == 0.0 and metrics["gradscope/warnings"] == 0.0
    assert metrics["gradscope/ok"] == 1.0


def test_records_the_same_gradients_and_loss_as_a_hand_written_loop(tmp_path):
    """Lightning runs forward/backward inside optimizer.step(closure): the callback must
    still record *this* step's gradients (not the previous step's) and its update."""
    torch.manual_seed(0)
    net = networks.deep_relu_mlp()
    reference = networks.deep_relu_mlp()
    reference.load_state_dict(net.state_dict())
    _, callback, _ = fit(Classifier(net), tmp_path, plot=False)

    opt = torch.optim.SGD(reference.parameters(), lr=0.05)
    with gradscope.watch(reference, optimizer=opt) as scope:
        for x, y in loader():
            opt.zero_grad()
            loss = nn.functional.cross_entropy(reference(x), y)
            scope.log_loss(loss)
            loss.backward()
            opt.step()

    ours, theirs = callback.scopes[""].history, scope.history
    for column in ("grad_l2", "update_norm"):
        got = torch.tensor(ours.grad_series(column).tolist())
        want = torch.tensor(theirs.grad_series(column).tolist())
        torch.testing.assert_close(got, want, rtol=1e-4, atol=0.0, equal_nan=True)
    torch.testing.assert_close(ours.losses(), theirs.losses(), rtol=1e-5, atol=0.0)


def test_gradient_accumulation_records_optimizer_steps_only(tmp_path):
    torch.manual_seed(0)
    callback = GradscopeCallback(plot=False)
    trainer = make_trainer(tmp_path, callback, logger=False, accumulate_grad_batches=2)
    x, y = classification_batch(2 * STEPS * 32, 32, 4, seed=0)
    batches = DataLoader(TensorDataset(x, y), batch_size=32)
    trainer.fit(Classifier(networks.deep_relu_mlp()), batches)

    assert trainer.global_step == STEPS
    assert callback.report.history.recorded == STEPS
    assert callback.report.findings == []


def test_optimizer_outside_torch_optim_is_recorded_at_on_before_optimizer_step(tmp_path):
    torch.manual_seed(0)
    module = Classifier(networks.deep_sigmoid_mlp(), optimizer=HandWrittenSGD)
    _, callback, warned = fit(module, tmp_path, plot=False)

    assert callback.report.history.recorded == STEPS
    assert [(f.kind, f.layer) for f in callback.report.findings] == [
        ("vanishing_gradient", "net.0")
    ]
    assert any("vanishing_gradient in net.0" in w for w in warned)


def test_each_optimizer_of_a_gan_watches_its_own_sub_module(tmp_path):
    torch.manual_seed(0)
    callback = GradscopeCallback(plot=False)
    trainer = make_trainer(tmp_path, callback, logger=False)
    real = torch.randn(STEPS * 32, 2, generator=torch.Generator().manual_seed(0)) * 0.5 + 2
    trainer.fit(GAN(), DataLoader(TensorDataset(real), batch_size=32))

    assert {name: r.model_name for name, r in callback.reports.items()} == {
        "generator": "GAN.generator",
        "discriminator": "GAN.discriminator",
    }
    for name, report in callback.reports.items():
        assert report.history.recorded == STEPS
        assert report.findings == []
        assert (tmp_path / "gradscope" / name / "report.json").exists()


def test_fail_on_error_stops_after_the_epoch_raises_and_removes_the_hooks(tmp_path, hooks_left):
    torch.manual_seed(0)
    module = Classifier(networks.deep_sigmoid_mlp())
    callback = GradscopeCallback(fail_on="error", report_dir=tmp_path / "reports", plot=False)
    trainer = make_trainer(tmp_path, callback, logger=False, epochs=2)

    with pytest.raises(GradscopeError, match=r"\[error\] vanishing_gradient in net\.0"):
        trainer.fit(module, loader())

    assert callback.report.history.recorded == STEPS  # the second epoch never ran
    assert (tmp_path / "reports" / "report.json").exists()
    assert hooks_left(module, trainer.optimizers[0]) == 0


def test_exception_in_training_detaches_and_saves_what_was_recorded(tmp_path, hooks_left):
    torch.manual_seed(0)
    module = Classifier(networks.deep_relu_mlp())
    module.fail_at = 4
    callback = GradscopeCallback(report_dir=tmp_path / "reports", plot=False)
    trainer = make_trainer(tmp_path, callback, logger=False)

    with pytest.raises(RuntimeError, match="data loader broke"):
        trainer.fit(module, loader())

    assert hooks_left(module, trainer.optimizers[0]) == 0
    saved = json.loads((tmp_path / "reports" / "report.json").read_text())
    assert saved["history"]["recorded"] == 4


def test_fail_on_must_be_a_severity():
    with pytest.raises(ValueError, match=r"fail_on must be one of \('info', 'warning', 'error'\)"):
        GradscopeCallback(fail_on="fatal")


def test_missing_lightning_says_what_to_install(monkeypatch):
    monkeypatch.delitem(sys.modules, "gradscope.integrations.lightning", raising=False)
    monkeypatch.setitem(sys.modules, "lightning.pytorch", None)
    with pytest.raises(ImportError, match="pip install lightning"):
        import gradscope.integrations.lightning  # noqa: F401
