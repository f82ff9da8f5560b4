"""PyTorch Lightning: a callback that watches the LightningModule while ``trainer.fit`` runs.

::

    from gradscope.integrations.lightning import GradscopeCallback

    trainer = lightning.Trainer(max_epochs=5, callbacks=[GradscopeCallback(fail_on="error")])
    trainer.fit(model, loader)  # findings as warnings, report in <log_dir>/gradscope/

How the optimizer is found: at ``on_fit_start`` Lightning has built the optimizers
(``trainer.optimizers``, the plain ``torch.optim`` objects that ``step()`` finally runs
on).  Each gets its own scope; with several (manual optimization, a GAN) each scope
watches the smallest sub-module holding that optimizer's parameters.  Lightning calls
``optimizer.step(closure=...)`` and runs forward and backward *inside* the closure, so
a step pre-hook would see last step's gradients; for ``torch.optim`` optimizers the
callback runs the closure just ahead of the step (:func:`~gradscope.integrations.common.
closure_first_hook`), and gradscope then reads this step's gradients (after clipping)
and the update the step makes.  Other optimizers are recorded at Lightning's
``on_before_optimizer_step`` instead (no update sizes then).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

try:
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import Callback
    from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
except ImportError as exc:  # pragma: no cover - depends on what is installed
    raise ImportError(
        "gradscope.integrations.lightning needs PyTorch Lightning: pip install lightning"
    ) from exc

import torch

import gradscope
from gradscope.errors import GradscopeWarning
from gradscope.integrations import common
from gradscope.report import Report
from gradscope.scope import Scope


class GradscopeCallback(Callback):
    """Watch the LightningModule with :func:`gradscope.watch` during ``fit``.

    Args:
        fail_on: ``"info"``, ``"warning"`` or ``"error"``: when findings reach this
            severity, training stops at the end of the epoch and ``fit`` raises
            :class:`gradscope.GradscopeError` (after the report is saved).  ``None``
            (default) only reports.
        report_dir: where the report goes; default ``<trainer.log_dir>/gradscope``
            (the logger's version directory, or ``default_root_dir`` without a logger).
        plot: also render the dashboard PNG, the other views and ``report.html`` next to
            ``report.json`` (rendering takes a few seconds); ``False`` writes the JSON only.
        **watch_options: passed to :func:`gradscope.watch` (``every``, ``budget``,
            ``config``, ``full``, ...).

    At each training epoch's end the counts of findings per severity are logged with
    ``pl_module.log`` (``gradscope/errors``, ``gradscope/warnings``, ``gradscope/infos``,
    ``gradscope/ok``).  At fit end every warning and error becomes a
    :class:`GradscopeWarning` (through ``rank_zero_warn``; infos go to ``rank_zero_info``)
    and the report is written as ``report.json`` with the
    dashboard PNG and the other views.  The hooks are removed at fit end and when fit
    raises.
    """

    def __init__(
        self,
        *,
        fail_on: str | None = None,
        report_dir: str | Path | None = None,
        plot: bool = True,
        **watch_options: Any,
    ) -> None:
        super().__init__()
        self.fail_on = common.check_fail_on(fail_on)
        self.report_dir = Path(report_dir) if report_dir is not None else None
        self.plot = plot
        self.watch_options = watch_options
        #: One scope per optimizer, keyed by the watched sub-module's name ("" = whole module).
        self.scopes: dict[str, Scope] = {}
        #: The final reports, keyed like :attr:`scopes`; filled at fit end.
        self.reports: dict[str, Report] = {}
        #: Directories the reports were written to.
        self.saved: list[Path] = []
        self._by_optimizer: dict[int, Scope] = {}
        self._recorded_by_hook: set[int] = set()
        self._handles: list[Any] = []
        self._outdir: Path | None = None

    @property
    def report(self) -> Report | None:
        """The report of the (first) scope, once fit has ended."""
        return next(iter(self.reports.values()), None)

    # -- attaching -------------------------------------------------------------------
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Attach one scope per optimizer of the fit."""
        self._detach()
        self.scopes, self.reports, self.saved = {}, {}, []
        self._outdir = self.report_dir or (
            Path(trainer.log_dir or trainer.default_root_dir) / common.REPORT_SUBDIR
        )
        optimizers = [common.unwrap_optimizer(o) for o in trainer.optimizers]
        optimizers = [o for o in optimizers if o is not None]
        if not optimizers:
            rank_zero_warn(
                "gradscope: this fit has no torch optimizer, so no step is recorded.",
                category=GradscopeWarning,
            )
            return
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        scaler = scaler if isinstance(scaler, torch.amp.GradScaler) else None
        try:
            for optimizer in optimizers:
                self._attach(pl_module, optimizer, scaler, single=len(optimizers) == 1)
        except BaseException:
            self._detach()
            raise

    def _attach(
        self, pl_module: pl.LightningModule, optimizer: Any, scaler: Any, single: bool
    ) -> None:
        name, module = ("", pl_module) if single else common.module_for(pl_module, optimizer)
        label = type(pl_module).__name__ + (f".{name}" if name else "")
        options = {"name": label, **self.watch_options}
        if common.steps_with_torch_closure(optimizer):
            # Registered before gradscope's hooks, so it runs first.
            self._handles.append(optimizer.register_step_pre_hook(common.closure_first_hook))
            scope = gradscope.watch(module, optimizer=optimizer, scaler=scaler, **options)
        else:
            scope = gradscope.watch(module, **options)
            self._recorded_by_hook.add(id(optimizer))
        self.scopes[name] = scope
        self._by_optimizer[id(optimizer)] = scope

    def _detach(self) -> None:
        for scope in self.scopes.values():
            scope.detach()
        while self._handles:
            self._handles.pop().remove()
        self._by_optimizer.clear()
        self._recorded_by_hook.clear()

    # -- recording -------------------------------------------------------------------
    def on_before_backward(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor
    ) -> None:
        """Give the step's loss to the scopes (read later, without a sync)."""
        for scope in self.scopes.values():
            scope.log_loss(loss)

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any
    ) -> None:
        """Record here only for optimizers whose own step hooks cannot be used."""
        inner = common.unwrap_optimizer(optimizer)
        if inner is not None and id(inner) in self._recorded_by_hook:
            self._by_optimizer[id(inner)].step()

    # -- reporting -------------------------------------------------------------------
    def _judge(self) -> dict[str, Report]:
        return {name: scope.report() for name, scope in self.scopes.items()}

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Log the finding counts; stop training when they reach ``fail_on``."""
        if not self.scopes:
            return
        reports = self._judge()
        totals: dict[str, float] = {}
        for report in reports.values():
            for key, value in common.metrics(report).items():
                totals[key] = totals.get(key, 0.0) + value
        totals["gradscope/ok"] = float(all(report.ok for report in reports.values()))
        for key, value in totals.items():
            pl_module.log(key, value, on_step=False, on_epoch=True, batch_size=1)
        if common.failing(reports.values(), self.fail_on):
            trainer.should_stop = True

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Detach, warn about each finding, save the reports; raise if ``fail_on`` is hit."""
        self._finish(trainer, warn=True)
        bad = common.failing(self.reports.values(), self.fail_on)
        if bad:
            raise common.failure(bad, self.fail_on or "error", self.saved)

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        """Detach and save what was recorded up to the failure."""
        if self.scopes and not self.reports:
            self._finish(trainer, warn=False)

    def _finish(self, trainer: pl.Trainer, warn: bool) -> None:
        if not self.scopes:
            return
        self._detach()
        self.reports = self._judge()
        if not trainer.is_global_zero:
            return
        if warn:
            for report in self.reports.values():
                for finding in report.findings:
                    if finding.severity == "info":  # does not hurt training: not a warning
                        rank_zero_info(common.finding_line(finding))
                    else:
                        rank_zero_warn(common.finding_line(finding), category=GradscopeWarning)
        assert self._outdir is not None
        dirs = common.report_dirs(self._outdir, self.reports)
        for outdir, report in zip(dirs, self.reports.values(), strict=True):
            common.save_report(report, outdir, self.plot)
        self.saved = dirs
