"""Renderer: the loss curves of a fix trial attached to the report (``trial.png``).

Writes nothing unless a :class:`gradscope.TrialReport` was attached with
``trial_report.attach(report)`` (``gradscope check/demo --try-fixes`` do).  The HTML
report inlines every PNG in the output directory, so the page shows it too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gradscope import Report, hookimpl

STEM = "trial"


@hookimpl
def gradscope_render(report: Report, outdir: Path, options: dict[str, Any]) -> list[Path]:
    """trial.png (and .svg when asked) with the baseline's and every variant's loss."""
    trial = getattr(report, "trial", None)
    if trial is None or trial.nothing_to_fix:
        return []
    figure = trial.figure()
    written = []
    for fmt in options.get("formats", ["png"]):
        path = Path(outdir) / f"{STEM}.{fmt}"
        figure.savefig(path, dpi=110)
        written.append(path)
    return written
