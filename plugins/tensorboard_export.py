"""Export a report to TensorBoard: per-layer statistics per recorded step, findings as text.

Two ways in (both need ``pip install tensorboard``):

- ``export(report, log_dir)`` writes one event file into ``log_dir``;
- ``report.plot(outdir, formats=("png", "tensorboard"))`` also writes one into
  ``outdir/tensorboard``.  Without ``"tensorboard"`` in ``formats`` this renderer does
  nothing, so a plain ``report.plot()`` is unchanged.

Scalars (tag ``gradscope/<statistic>/<layer>``, x axis: the training step each record
was taken at): ``grad_norm`` (L2 norm of the layer's gradient), ``relative_grad``
(``grad_norm / weight norm``), ``update_ratio`` (update size / weight norm, on the steps
where updates were measured), ``param_norm``, per module ``zero_fraction`` and
``saturated_fraction`` (where measured), and ``gradscope/loss``.  Values a step did not
measure are left out rather than written as NaN.  Text: ``gradscope/findings`` (one
Markdown entry per finding with the top fix) and ``gradscope/summary``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from gradscope import Report, hookimpl
from gradscope.signals import layer_signals

#: The ``formats`` entry that turns this renderer on in ``report.plot``.
FORMAT = "tensorboard"
#: Sub-directory of ``report.plot``'s ``outdir`` the event file goes to.
SUBDIR = "tensorboard"
PREFIX = "gradscope"
#: Activation columns written as fractions, with the column that counts their entries.
_FRACTIONS = {
    "zero_fraction": ("zeros", "zero_sampled"),
    "saturated_fraction": ("saturated", "sampled"),
}


def _writer(log_dir: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:  # torch imports tensorboard lazily, here
        raise ImportError(
            "Exporting to TensorBoard needs the tensorboard package: pip install tensorboard"
        ) from exc
    return SummaryWriter(log_dir=str(log_dir))


def _label(name: str) -> str:
    return name or "(model)"


def scalars(report: Report) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series the export writes: tag -> [(step, value), ...]."""
    history = report.history
    out: dict[str, list[tuple[int, float]]] = {}
    if history is None or not history.records:
        return out

    def add(tag: str, step: int, value: float) -> None:
        if not math.isnan(value):  # NaN: not measured on this step
            out.setdefault(f"{PREFIX}/{tag}", []).append((step, value))

    steps = history.steps
    for signal in layer_signals(history):
        series = {
            "grad_norm": signal.grad_norm,
            "relative_grad": signal.relative_grad,
            "update_ratio": signal.update_ratio,
            "param_norm": signal.param_norm,
        }
        for statistic, values in series.items():
            for step, value in zip(steps, values.tolist(), strict=True):
                add(f"{statistic}/{_label(signal.name)}", step, value)
    for statistic, (column, denominator) in _FRACTIONS.items():
        values, counted = history.act_series(column), history.act_series(denominator)
        for j, name in enumerate(history.module_names):
            for t, step in enumerate(steps):
                n = float(counted[t, j])
                if n > 0:
                    add(f"{statistic}/{_label(name)}", step, float(values[t, j]) / n)
    for step, loss in zip(steps, history.losses().tolist(), strict=True):
        add("loss", step, loss)
    return out


def findings_text(report: Report) -> str:
    """The findings as Markdown: one entry per finding with its message and the top fix."""
    if not report.findings:
        return "No findings: gradients, updates and activations look healthy."
    entries = []
    for f in report.findings:
        where = f" in `{f.layer}`" if f.layer else ""
        at = f" (from step {f.step})" if f.step is not None else ""
        entry = f"**[{f.severity}] {f.kind}**{where}{at}: {f.message}"
        if f.suggestions:
            s = f.suggestions[0]
            code = "\n".join(f"    {line}" for line in s.code.splitlines())
            entry += f"\n\nFix ({s.kind}): {s.title}\n\n{code}"
        entries.append(entry)
    return "\n\n---\n\n".join(entries)


def export(report: Report, log_dir: str | Path) -> list[Path]:
    """Write ``report`` as TensorBoard scalars and text into ``log_dir``; returns the files.

    Open it with ``tensorboard --logdir <log_dir>``.
    """
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    before = set(log_dir.glob("events.out.tfevents.*"))
    writer = _writer(log_dir)
    try:
        for tag, points in scalars(report).items():
            for step, value in points:
                writer.add_scalar(tag, value, global_step=step)
        last = report.history.steps[-1] if report.history and report.history.records else 0
        writer.add_text(f"{PREFIX}/findings", findings_text(report), global_step=last)
        summary = report.summary().replace("\n", "  \n")  # Markdown line breaks
        writer.add_text(f"{PREFIX}/summary", summary, global_step=last)
        writer.flush()
    finally:
        writer.close()
    return sorted(set(log_dir.glob("events.out.tfevents.*")) - before)


@hookimpl
def gradscope_render(report: Report, outdir: Path, options: dict) -> list[Path]:
    """If ``options["formats"]`` has ``"tensorboard"``: :func:`export` to ``outdir/tensorboard``."""
    if FORMAT not in (options.get("formats") or ()):
        return []
    return export(report, Path(outdir) / SUBDIR)
