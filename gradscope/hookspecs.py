"""The plugin contract: every hook gradscope calls, documented one by one.

A plugin is any module or object with functions marked ``@gradscope.hookimpl``
whose names are the hooks below.  Register one for a process with
``gradscope.plugins.register(obj)``, or for everyone who installs your package
with an entry point::

    [project.entry-points.gradscope]
    myplugin = "my_package.my_module"

A plugin that raises is reported by name in ``report.plugin_errors`` and disabled
for the rest of the run; training goes on.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pluggy

# Only plain-data modules: the contract must not depend on the code that calls it.
if TYPE_CHECKING:
    from gradscope.findings import Finding, Suggestion
    from gradscope.history import History, StepRecord
    from gradscope.modelinfo import ModelInfo
    from gradscope.models.spec import ModelSpec

PROJECT = "gradscope"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def gradscope_detect(
    history: History, model_info: ModelInfo, config: dict[str, Any]
) -> list[Finding]:
    """Judge the recorded statistics and return the problems seen.

    Called by :func:`gradscope.judge.judge` when a report is made (``scope.report()``,
    the end of ``diagnose``, ``gradscope report RUN.json --set ...``).  A detector module
    may name the statistics it reads in a module attribute ``NEEDS`` (names from
    :data:`gradscope.statistics.STATISTICS`); when one was never measured the detector is
    not called and the report says so.  Threshold defaults live in a module attribute
    ``DEFAULTS`` (with the plugin's ``NAME``), so overrides are checked before training.

    :param history: the recorded steps; columns are read with ``history.grad_series``
        and ``history.act_series``, and :mod:`gradscope.signals` turns them into
        per-layer signals in forward (depth) order.
    :param model_info: the model's layers, parameters, optimizer and loss settings.
    :param config: threshold overrides, keyed by plugin name
        (``config["vanishing"]["depth_ratio"]``); read them with
        ``gradscope.config.thresholds``.
    :return: a list of :class:`~gradscope.Finding` (may be empty); leave ``suggestions``
        empty, the ``gradscope_suggest`` hook fills them in.
    """


@hookspec
def gradscope_suggest(finding: Finding, model_info: ModelInfo) -> list[Suggestion]:
    """Propose fixes for one finding, best first.

    Called once per finding after detection.  Suggestions from all plugins are joined
    in plugin call order; the first one of each ``kind`` is kept.

    :param finding: the finding to fix.
    :param model_info: the model, so snippets can name real modules.
    :return: a list of :class:`~gradscope.Suggestion`, best first (may be empty).
    """


@hookspec
def gradscope_on_step(record: StepRecord, scope: Any) -> None:
    """React live to a recorded step (warn, log, or raise to stop training).

    Called right after each recorded step is brought to the host: from the
    optimizer's step pre-hook on most steps, so raising on a NaN stops the run
    before ``optimizer.step()`` applies it, and after the step on detail steps
    (their update sizes need it).  Raising :class:`gradscope.StopTraining` stops
    the run on purpose; any other exception disables the plugin.

    :param record: the step's statistics (host floats).
    :param scope: the running :class:`gradscope.Scope` (``scope.history``,
        ``scope.model_info``).
    """


@hookspec
def gradscope_render(report: Any, outdir: Path, options: dict[str, Any]) -> list[Path]:
    """Write pictures or documents of a report into ``outdir``.

    Called by ``report.plot(outdir)``, ``report.save_html(path)`` and the CLI's
    ``--plot``/``--html``.  Must not need a display.  A renderer marked
    ``@hookimpl(trylast=True)`` runs after the others and can use what they wrote.

    :param report: the :class:`gradscope.Report`, live or loaded from JSON.
    :param outdir: an existing directory to write into.
    :param options: rendering options; ``options["formats"]`` lists the image formats
        wanted (``["png"]`` by default, ``"svg"`` may be added).
    :return: the paths written.
    """


@hookspec
def gradscope_reference_models() -> dict[str, ModelSpec]:
    """Offer named models (with example batches and losses) to the CLI and tests.

    :return: a mapping from model name to :class:`gradscope.models.ModelSpec`.
    """


#: The names of all hooks, in the order the README documents them.
HOOK_NAMES = (
    "gradscope_detect",
    "gradscope_suggest",
    "gradscope_on_step",
    "gradscope_render",
    "gradscope_reference_models",
)
