"""TrialReport: what each fix did when it was trained, as a table, JSON and a figure."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gradscope.findings import Finding, Suggestion, jsonable
from gradscope.report import Report
from gradscope.trials import verdict as V

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from torch import nn


@dataclass
class TrialResult:
    """One suggestion of one finding, applied to a copy of the model and trained.

    Attributes:
        kind: the suggestion kind.
        finding: the finding it addresses.
        suggestion: the suggestion as printed.
        verdict: helps / no effect / hurts / not applicable.
        reason: the verdict in words (the numbers, or why the fix was not applied).
        layers: the layers the fix changed (empty for loop/optimizer fixes).
        change: what was changed, in words.
        loss_before: the baseline's final loss (median of its last losses).
        loss_after: this variant's final loss (None when it was not trained).
        losses: this variant's loss per step.
        findings_gone, findings_remaining, findings_new: "kind@layer", compared with the
            baseline run's warning/error findings.
        needs_code_change: True when the fix is an edit of the user's code (snippet in
            ``suggestion.code``); it was not trained.
        seconds: training time of this variant.
    """

    kind: str
    finding: Finding
    suggestion: Suggestion
    verdict: str
    reason: str
    layers: list[str] = field(default_factory=list)
    change: str = ""
    loss_before: float | None = None
    loss_after: float | None = None
    losses: list[float] = field(default_factory=list)
    findings_gone: list[str] = field(default_factory=list)
    findings_remaining: list[str] = field(default_factory=list)
    findings_new: list[str] = field(default_factory=list)
    needs_code_change: bool = False
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready copy."""
        return jsonable(
            {
                "kind": self.kind,
                "finding": {
                    "kind": self.finding.kind,
                    "layer": self.finding.layer,
                    "severity": self.finding.severity,
                },
                "verdict": self.verdict,
                "reason": self.reason,
                "layers": self.layers,
                "change": self.change,
                "loss_before": self.loss_before,
                "loss_after": self.loss_after,
                "losses": self.losses,
                "findings_gone": self.findings_gone,
                "findings_remaining": self.findings_remaining,
                "findings_new": self.findings_new,
                "needs_code_change": self.needs_code_change,
                "code": self.suggestion.code if self.needs_code_change else None,
                "seconds": self.seconds,
            }
        )


def _rank(result: TrialResult) -> tuple[int, int, float]:
    after = result.loss_after if result.loss_after is not None else math.inf
    return (V.VERDICTS.index(result.verdict), int(result.needs_code_change), after)


def rank_results(results: list[TrialResult]) -> list[TrialResult]:
    """Best first: helps, no effect, hurts, not applicable; lower final loss first in each."""
    return sorted(results, key=_rank)


@dataclass
class TrialReport:
    """Every fix trained against the same baseline, best first.

    Attributes:
        results: one per (finding, suggestion), best first.
        baseline_losses: the unchanged copy's loss per step.
        baseline_findings: its warning/error findings, "kind@layer".
        steps, seed: how every run was trained.
        extended_from: the first round's steps when no fix helped in it and every run
            was trained again for ``steps`` (None when one round was enough).
        margin: how far below the baseline a final loss must be to count as lower.
        cost: time of all variants / time of one baseline run (None if nothing trained).
        notes: what a reader should know ("nothing to fix", fixes that need code).
        best_model: the best helping variant's model (not saved in JSON), or None.
    """

    results: list[TrialResult] = field(default_factory=list)
    baseline_losses: list[float] = field(default_factory=list)
    baseline_findings: list[str] = field(default_factory=list)
    steps: int = 0
    seed: int = 0
    extended_from: int | None = None
    margin: float = 0.0
    cost: float | None = None
    baseline_seconds: float = 0.0
    model_name: str = "model"
    notes: list[str] = field(default_factory=list)
    best_model: nn.Module | None = field(default=None, repr=False)

    @property
    def best(self) -> TrialResult | None:
        """The first result whose verdict is ``helps``, or None."""
        return next((r for r in self.results if r.verdict == "helps"), None)

    @property
    def nothing_to_fix(self) -> bool:
        """True when the report had no warning or error finding."""
        return not self.results

    def result_for(self, finding: Finding, kind: str) -> TrialResult | None:
        """The result of suggestion ``kind`` applied for ``finding``."""
        return next(
            (r for r in self.results if r.finding is finding and r.kind == kind),
            None,
        )

    # -- JSON ------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (non-finite numbers as strings)."""
        return jsonable(
            {
                "model_name": self.model_name,
                "steps": self.steps,
                "extended_from": self.extended_from,
                "seed": self.seed,
                "margin": self.margin,
                "cost": self.cost,
                "baseline_seconds": self.baseline_seconds,
                "baseline": {
                    "loss": V.final_loss(self.baseline_losses) if self.baseline_losses else None,
                    "losses": self.baseline_losses,
                    "findings": self.baseline_findings,
                },
                "results": [r.to_dict() for r in self.results],
                "notes": self.notes,
            }
        )

    def to_json(self, indent: int | None = 2) -> str:
        """Serialise to JSON."""
        return json.dumps(self.to_dict(), indent=indent)

    def save_json(self, path: str | Path) -> Path:
        """Write :meth:`to_json` to ``path``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json(), encoding="utf-8")
        return path

    def attach(self, report: Report) -> Report:
        """Attach to ``report`` so its plots and HTML page include the trial."""
        report.trial = self  # type: ignore[attr-defined]
        return report

    # -- text ------------------------------------------------------------------
    def summary(self) -> str:
        """A plain-text version of the table."""
        if self.nothing_to_fix:
            return f"trial of {self.model_name}: nothing to fix"
        lines = [self._headline()]
        for r in self.results:
            after = _fmt(r.loss_after)
            lines.append(
                f"  {r.verdict:<14} {r.kind:<22} for {r.finding.kind}@{r.finding.layer}: "
                f"loss {_fmt(r.loss_before)} -> {after}; {r.reason}"
            )
        return "\n".join(lines + [f"  note: {n}" for n in self.notes])

    def _headline(self) -> str:
        first = self.extended_from or self.steps
        cost = (
            f"; cost {self.cost:.1f}x one {first}-step baseline run"
            if self.cost is not None
            else ""
        )
        if self.baseline_losses and not math.isfinite(V.final_loss(self.baseline_losses)):
            rule = "the baseline's loss turned non-finite: 'helps' means a finite run"
        else:
            rule = (
                f"'helps' needs a final loss more than {self.margin:.3g} below the "
                "baseline's and the finding gone"
            )
        rounds = (
            f" (a second round: nothing helped after {self.extended_from})"
            if self.extended_from
            else ""
        )
        return (
            f"trial of {self.model_name}: {len(self.results)} fixes, {self.steps} steps "
            f"each{rounds}, seed {self.seed}; {rule}{cost}"
        )

    def print(self, console: Any = None) -> None:
        """Print the results as a rich table (every name escaped)."""
        from rich.console import Console
        from rich.markup import escape
        from rich.table import Table

        console = console or Console()
        if self.nothing_to_fix:
            console.print(f"trial of {escape(self.model_name)}: nothing to fix")
            return
        console.print(escape(self._headline()))
        colours = {"helps": "green", "no effect": "yellow", "hurts": "red"}
        table = Table()
        for column in ("verdict", "fix", "finding", "layers changed", "loss", "new findings"):
            table.add_column(column)
        for r in self.results:
            verdict = "needs a code change" if r.needs_code_change else r.verdict
            colour = colours.get(r.verdict, "dim")
            table.add_row(
                f"[{colour}]{escape(verdict)}[/]",
                escape(r.kind),
                escape(f"{r.finding.kind} in {r.finding.layer or '-'}"),
                escape(", ".join(r.layers) or "-"),
                escape(f"{_fmt(r.loss_before)} -> {_fmt(r.loss_after)}")
                if r.loss_after is not None
                else escape(r.reason),
                escape(", ".join(r.findings_new) or "-"),
            )
        console.print(table)
        for r in self.results:
            if r.needs_code_change:
                console.print(f"\n{escape(r.kind)} needs a code change:", markup=True)
                for line in r.suggestion.code.splitlines():
                    console.print(f"    {line}", markup=False)
        for note in self.notes:
            console.print(f"note: {note}", markup=False)

    def __str__(self) -> str:
        return self.summary()

    # -- plot ------------------------------------------------------------------
    def figure(self) -> Figure:
        """Loss curves of the baseline and every trained variant on one matplotlib Figure."""
        from matplotlib.figure import Figure

        fig = Figure(figsize=(8, 4.5), layout="constrained")
        ax = fig.add_subplot()
        ax.plot(_finite(self.baseline_losses), color="black", linewidth=2.2, label="baseline")
        seen = set()
        for r in self.results:
            if not r.losses or r.kind in seen:
                continue
            seen.add(r.kind)
            ax.plot(_finite(r.losses), linewidth=1.2, label=f"{r.kind} ({r.verdict})")
        rounds = ""
        if self.extended_from:
            ax.axvline(
                self.extended_from - 0.5,
                color="grey",
                linestyle=":",
                label=f"first round's end: no fix helped by step {self.extended_from}",
            )
            rounds = f"; trained again after no fix helped in {self.extended_from}"
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.set_title(f"Fix trials of {self.model_name} ({self.steps} steps each{rounds})")
        shown = [v for r in self.results for v in r.losses] + self.baseline_losses
        if shown and all(v > 0 for v in shown if math.isfinite(v)):
            ax.set_yscale("log")
        ax.legend(fontsize=8)
        return fig

    def save_plot(self, path: str | Path) -> Path:
        """Write :meth:`figure` to ``path`` (PNG, SVG, ... by suffix)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.figure().savefig(path, dpi=110)
        return path


def _finite(values: list[float]) -> list[float]:
    return [v if math.isfinite(v) else math.nan for v in values]


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}"
