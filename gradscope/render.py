"""Rendering a report: the verdict, the console summary, and the entry points to plots/HTML.

The one place that turns a :class:`~gradscope.report.Report` into something a person reads.
The CLI, ``print(report)`` and the plot renderers all take the verdict from :func:`verdict`.
Pictures and documents are drawn by renderer plugins (``gradscope_render``);
:func:`plot` and :func:`save_html` call them.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from pathlib import Path
from typing import Any, Protocol

from gradscope.budget import AUTO_WARMUP, AUTO_WARMUP_EVERY, SHIFT_DETAILS, WARMUP_RECORDS
from gradscope.findings import SEVERITIES, Finding
from gradscope.history import History
from gradscope.plugins import PluginRunner


class ReportLike(Protocol):
    """What rendering reads of a report (a :class:`gradscope.report.Report`)."""

    findings: list[Finding]
    model_name: str
    history: History | None
    plugin_errors: list[dict[str, str]]
    overhead: dict[str, float]
    notes: list[str]
    not_judged: list[str]


def verdict(report: ReportLike) -> str:
    """One line: "healthy: no findings", "2 errors, 1 warning", or why it was not judged."""
    if report.not_judged:
        return f"NOT JUDGED: {len(report.not_judged)} check(s) did not run"
    if not report.findings:
        return "healthy: no findings"
    counts = {s: sum(f.severity == s for f in report.findings) for s in reversed(SEVERITIES)}
    return ", ".join(f"{n} {s}{'s' if n != 1 else ''}" for s, n in counts.items() if n)


def layer_types(report: ReportLike) -> dict[str, str]:
    """Module name -> class name, from the report's history."""
    history = report.history
    if history is None:
        return {}
    return dict(zip(history.module_names, history.module_types, strict=True))


def _overhead_lines(overhead: dict[str, float]) -> list[str]:
    lines = []
    if overhead.get("seconds_per_step") is not None:
        lines.append(
            f"  gradscope's own time: {overhead['seconds_per_step'] * 1e3:.2f} ms "
            "per recorded step (measured)"
        )
    if overhead.get("budget") is not None:
        lines.append(
            f"  overhead budget {overhead['budget']:.1%}: measured "
            f"{overhead['measured_overhead']:.1%}, activation statistics every "
            f"{int(overhead['activation_interval'])} step(s)"
        )
        floor = overhead.get("every_step_overhead", 0.0)
        every = int(overhead.get("record_every", 1))
        if every > 1:
            lines.append(
                f"  the gradient checks alone take {floor:.1%} of a step, above the "
                f"budget, so 1 step in {every} is recorded"
            )
    elif overhead.get("detail_interval") is not None:
        lines.append(_cadence_line(overhead))
    return lines


def _cadence_line(overhead: dict[str, float]) -> str:
    """Which recorded steps took the detail statistics (the default's pacing, or a fixed
    ``detail_every``)."""
    interval = int(float(overhead["detail_interval"]))
    if not float(overhead.get("detail_auto", 0.0)):
        if interval == 1:
            return "  detail statistics on every recorded step"
        first = f"  detail statistics on the first {WARMUP_RECORDS} recorded steps"
        return f"{first}, then 1 in {interval}"
    line = (
        f"  detail statistics on the first {WARMUP_RECORDS} recorded steps, then 1 in "
        f"{AUTO_WARMUP_EVERY}; after {AUTO_WARMUP} recorded steps paced by their cost: 1 in "
        f"{interval}"
    )
    extra, light = (float(overhead.get(k, math.nan)) for k in ("detail_extra_s", "light_step_s"))
    if math.isfinite(extra) and math.isfinite(light) and light > 0:
        line += f" (a detail step adds {extra * 1e3:.2f} ms to a {light * 1e3:.2f} ms step)"
    shifts = int(float(overhead.get("activity_shifts", 0.0)))
    if shifts:
        line += (
            f"; {shifts} fast change(s) of saturated or silent units took "
            f"{SHIFT_DETAILS} more detail steps each"
        )
    return line


def _code_lines(s: Any, layer: str | None, shown: dict[str, str]) -> list[str]:
    """A suggestion's code, indented; once per report: a fix whose code was printed for an
    earlier finding (constant initialisation names every layer) points back to it."""
    if s.code in shown:  # printed already, for this layer's other finding or another layer
        return [f"      (the same code as for {shown[s.code]} above)"]
    shown[s.code] = layer or "-"
    return [f"      {code_line}" for code_line in s.code.splitlines()]


def _finding_lines(
    f: Finding, types: dict[str, str], suggestions: int, shown: dict[str, str]
) -> list[str]:
    kind_of = f" ({types[f.layer]})" if f.layer in types else ""
    where = f" in {f.layer}{kind_of}" if f.layer else ""
    at = f" (from step {f.step})" if f.step is not None else ""
    lines = ["", f"[{f.severity.upper()}] {f.kind}{where}{at}", f"  {f.message}"]
    for s in f.suggestions[:suggestions]:
        lines.append(f"  fix ({s.kind}): {s.title}")
        lines.append(f"    why: {s.why}")
        lines.extend(_code_lines(s, f.layer, shown))
    return lines


def summary(report: ReportLike, suggestions: int = 1) -> str:
    """A plain-text account: verdict, notes, each finding with its top ``suggestions`` fixes."""
    lines = [f"gradscope report for {report.model_name}: " + verdict(report)]
    if report.history is not None and report.history.recorded:
        lines.append(f"  {report.history.recorded} recorded steps")
    lines.extend(_overhead_lines(report.overhead))
    lines.extend(f"  not judged: {reason}" for reason in report.not_judged)
    lines.extend(f"  note: {note}" for note in report.notes)
    types = layer_types(report)
    shown: dict[str, str] = {}
    for f in report.findings:
        lines.extend(_finding_lines(f, types, suggestions, shown))
    for err in report.plugin_errors:
        lines.append(
            f"  plugin {err['plugin']} failed in {err['hook']} and was disabled: {err['error']}"
        )
    return "\n".join(lines)


_COLOURS = {"error": "bold red", "warning": "yellow", "info": "cyan"}


def print_console(report: ReportLike, console: Any, suggestions: int = 1) -> None:
    """The report on a rich console: verdict, a table of findings, then messages and fixes."""
    from rich.markup import escape
    from rich.table import Table

    console.print(
        f"[bold]gradscope[/bold] report for [bold]{escape(report.model_name)}[/bold]: "
        f"{escape(verdict(report))}"
    )
    for reason in report.not_judged:
        console.print(f"  not judged: {reason}", markup=False, style="red")
    for note in report.notes:
        console.print(f"  note: {note}", markup=False)
    if report.overhead.get("seconds_per_step"):
        console.print(
            f"  {int(report.overhead.get('recorded_steps', 0))} recorded steps, "
            f"gradscope's own time {report.overhead['seconds_per_step'] * 1e3:.2f} ms per step"
        )
    types = layer_types(report)
    if report.findings:
        table = Table(show_lines=False)
        for column in ("severity", "finding", "layer", "step", "top fix"):
            table.add_column(column)
        for f in report.findings:
            layer = f"{f.layer} ({types[f.layer]})" if f.layer in types else (f.layer or "-")
            table.add_row(
                f"[{_COLOURS[f.severity]}]{f.severity}[/]",
                escape(f.kind),
                escape(layer),
                str(f.step) if f.step is not None else "-",
                escape(f.suggestions[0].kind) if f.suggestions else "-",
            )
        console.print(table)
    shown: dict[str, str] = {}
    for f in report.findings:
        console.print(f"\n[{_COLOURS[f.severity]}]{escape(f.kind)}[/] in ", end="")
        console.print(f.layer or "-", markup=False, style="bold")
        console.print(f"  {f.message}", markup=False)
        for s in f.suggestions[:suggestions]:
            console.print(f"  [green]fix ({escape(s.kind)})[/]: {escape(s.title)}")
            console.print(f"  why: {s.why}", markup=False)
            for line in _code_lines(s, f.layer, shown):
                console.print(line, markup=False)
    for err in report.plugin_errors:
        console.print(
            f"plugin {err['plugin']} failed in {err['hook']} and was disabled: {err['error']}",
            markup=False,
            style="red",
        )


def plot(report: Any, outdir: str | Path, formats: tuple[str, ...] = ("png",)) -> list[Path]:
    """Write every view the loaded renderer plugins make into ``outdir``; returns the paths.

    ``formats`` may add ``"svg"`` next to ``"png"``.  A renderer that fails is named in
    ``report.plugin_errors`` and skipped; plotting never raises for it.
    """
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    runner = PluginRunner()
    written = runner.render(report, outdir, {"formats": list(formats)})
    report.plugin_errors.extend(e for e in runner.errors if e not in report.plugin_errors)
    return written


def save_html(report: Any, path: str | Path) -> Path:
    """Write a self-contained HTML report (plots inlined) to ``path``."""
    path = Path(path)
    with tempfile.TemporaryDirectory() as tmp:
        written = {p.name: p for p in plot(report, tmp)}
        if "report.html" not in written:
            raise RuntimeError(
                "No loaded renderer writes report.html (is the html_report plugin "
                "excluded by GRADSCOPE_PLUGINS?)."
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(written["report.html"], path)
    return path
