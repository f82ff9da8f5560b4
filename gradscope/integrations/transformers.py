"""Hugging Face ``Trainer``: a callback that watches the model while ``trainer.train()`` runs.

::

    from gradscope.integrations.transformers import GradscopeCallback

    trainer = Trainer(model=model, args=args, train_dataset=ds, callbacks=[GradscopeCallback()])
    trainer.train()  # findings on the Trainer's logger, report in <output_dir>/gradscope/

How the optimizer is found: the Trainer builds its optimizer before ``on_train_begin``
and passes it to every callback event; it is accelerate's ``AcceleratedOptimizer``,
whose ``step()`` calls the ``torch.optim`` optimizer inside it.  gradscope's step
hooks go on that inner optimizer: they fire inside ``self.optimizer.step()``, between
the Trainer's ``on_pre_optimizer_step`` (gradients final, clipped) and
``on_optimizer_step``, and only on real optimizer steps (not on gradient-accumulation
micro-steps).  An optimizer that is not a ``torch.optim.Optimizer`` (DeepSpeed's) is
recorded at ``on_pre_optimizer_step`` instead, without update sizes.  The loss is read
from the model's output (``outputs.loss``) by a forward hook, without a host sync.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

try:
    from transformers import TrainerCallback
    from transformers.utils import logging as hf_logging
except ImportError as exc:  # pragma: no cover - depends on what is installed
    raise ImportError(
        "gradscope.integrations.transformers needs Hugging Face transformers: "
        "pip install transformers accelerate"
    ) from exc

import torch

import gradscope
from gradscope.integrations import common
from gradscope.report import Report
from gradscope.scope import Scope

#: The Trainer's own logger: findings appear where the Trainer's messages do.
logger: logging.Logger = hf_logging.get_logger("transformers.trainer")


class GradscopeCallback(TrainerCallback):
    """Watch the Trainer's model with :func:`gradscope.watch` during ``train()``.

    Args:
        fail_on: ``"info"``, ``"warning"`` or ``"error"``: when findings reach this
            severity, training stops at the end of the epoch and ``train()`` raises
            :class:`gradscope.GradscopeError` (after the report is saved).  ``None``
            (default) only reports.
        report_dir: where the report goes; default ``<args.output_dir>/gradscope``.
        plot: also render the dashboard PNG, the other views and ``report.html`` next to
            ``report.json`` (rendering takes a few seconds); ``False`` writes the JSON only.
        **watch_options: passed to :func:`gradscope.watch` (``every``, ``budget``,
            ``config``, ``full``, ...).

    At each epoch's end the counts of findings per severity are appended to
    ``state.log_history`` (``gradscope/errors``, ``gradscope/warnings``,
    ``gradscope/infos``, ``gradscope/ok``, with ``step`` and ``epoch``).  At the end of
    training each finding is logged as a warning on the ``transformers.trainer``
    logger and the report is written as ``report.json`` with the dashboard PNG and the
    other views.  ``TrainerCallback`` has no event for a failed ``train()``: if it
    raises, call :meth:`close` to remove the hooks.
    """

    def __init__(
        self,
        *,
        fail_on: str | None = None,
        report_dir: str | Path | None = None,
        plot: bool = True,
        **watch_options: Any,
    ) -> None:
        self.fail_on = common.check_fail_on(fail_on)
        self.report_dir = Path(report_dir) if report_dir is not None else None
        self.plot = plot
        self.watch_options = watch_options
        #: The live scope while training runs.
        self.scope: Scope | None = None
        #: The final report, once training has ended.
        self.report: Report | None = None
        #: The directory the report was written to.
        self.saved: Path | None = None
        self._by_hook = False
        self._loss_handle: Any = None

    # -- attaching -------------------------------------------------------------------
    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Attach to the model and to the torch optimizer inside the Trainer's."""
        self.close()
        self.report, self.saved = None, None
        model = kwargs.get("model")
        if not isinstance(model, torch.nn.Module):
            logger.warning("gradscope: the Trainer passed no model to its callbacks; not watching.")
            return
        optimizer = common.unwrap_optimizer(kwargs.get("optimizer"))
        options = {"name": type(model).__name__, **self.watch_options}
        if optimizer is not None:
            self.scope = gradscope.watch(model, optimizer=optimizer, **options)
        else:
            self.scope = gradscope.watch(model, **options)
            self._by_hook = True
        self._loss_handle = model.register_forward_hook(self._read_loss)

    def _read_loss(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        if self.scope is None or not torch.is_grad_enabled():
            return  # evaluation runs under no_grad and is not a training step
        loss = output.get("loss") if isinstance(output, dict) else getattr(output, "loss", None)
        if isinstance(loss, torch.Tensor) and loss.numel() == 1:
            self.scope.log_loss(loss)

    def close(self) -> None:
        """Remove every hook; safe to call twice (call it when ``train()`` raised)."""
        if self.scope is not None:
            self.scope.detach()
        if self._loss_handle is not None:
            self._loss_handle.remove()
            self._loss_handle = None
        self._by_hook = False

    # -- recording -------------------------------------------------------------------
    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Record here only when the optimizer's own step hooks cannot be used."""
        if self._by_hook and self.scope is not None and self.scope.attached:
            self.scope.step()

    # -- reporting -------------------------------------------------------------------
    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        """Add the finding counts to ``state.log_history``; stop when ``fail_on`` is hit."""
        if self.scope is None or not self.scope.attached:
            return None
        report = self.scope.report()
        state.log_history.append(
            {**common.metrics(report), "epoch": state.epoch, "step": state.global_step}
        )
        if common.failing([report], self.fail_on):
            control.should_training_stop = True
        return control

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Detach, log each finding (infos at INFO level), save the report; raise if
        ``fail_on`` is hit."""
        if self.scope is None:
            return
        self.close()
        self.report = report = self.scope.report()
        if not state.is_world_process_zero:
            return
        for finding in report.findings:
            # An info is a property that does not hurt training: not a warning in the log.
            log = logger.info if finding.severity == "info" else logger.warning
            log(common.finding_line(finding))
        self.saved = self.report_dir or Path(args.output_dir) / common.REPORT_SUBDIR
        common.save_report(report, self.saved, self.plot)
        bad = common.failing([report], self.fail_on)
        if bad:
            raise common.failure(bad, self.fail_on or "error", [self.saved])
