"""Report: what a diagnosis says about a run, as plain data in a versioned JSON form.

Rendering (console text, plots, HTML) lives in :mod:`gradscope.render`; judging in
:mod:`gradscope.judge`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gradscope.findings import (
    SEVERITY_RANK,
    Finding,
    jsonable,
)
from gradscope.history import History
from gradscope.modelinfo import ModelInfo

#: Bumped whenever the JSON layout changes incompatibly.
SCHEMA_VERSION = 1


@dataclass
class Report:
    """The result of watching or diagnosing a model: plain data.

    Attributes:
        findings: most severe first.
        model_name: the model's class name (or the name it was given).
        history: the recorded statistics the findings were judged from.
        plugin_errors: plugins that raised, with the hook and the error; they were disabled.
        coverage: how many hooks fired per recorded step, and modules that ran unseen.
        overhead: gradscope's own measured time per recorded step, in seconds.
        config: the threshold overrides in force.
        notes: sentences a reader should see (what was not measured, and why).
        model_info: the model as the detectors saw it; with ``history`` it is what
            :func:`gradscope.judge.judge` needs to judge a saved run again.
        not_judged: checks that did not run (no detector loaded, a detector that raised,
            a statistic a detector needs that was never measured), one sentence each.
    """

    findings: list[Finding] = field(default_factory=list)
    model_name: str = "model"
    history: History | None = None
    plugin_errors: list[dict[str, str]] = field(default_factory=list)
    coverage: dict[str, Any] = field(default_factory=dict)
    overhead: dict[str, float] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    model_info: ModelInfo | None = None
    not_judged: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every check ran and no finding has severity ``error``."""
        if self.not_judged:
            return False
        return not any(f.severity == "error" for f in self.findings)

    def at_least(self, severity: str) -> list[Finding]:
        """Findings of ``severity`` or worse."""
        return [f for f in self.findings if f.rank >= SEVERITY_RANK[severity]]

    def kinds(self) -> set[str]:
        """The distinct finding kinds present."""
        return {f.kind for f in self.findings}

    def kinds_at_least(self, severity: str) -> set[str]:
        """The distinct kinds of the findings of ``severity`` or worse."""
        return {f.kind for f in self.at_least(severity)}

    # -- JSON ------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict carrying the schema version."""
        return {
            "schema_version": SCHEMA_VERSION,
            "model_name": self.model_name,
            "ok": self.ok,
            "findings": [f.to_dict() for f in self.findings],
            "plugin_errors": self.plugin_errors,
            "coverage": jsonable(self.coverage),
            "overhead": jsonable(self.overhead),
            "config": jsonable(self.config),
            "notes": self.notes,
            "not_judged": self.not_judged,
            "model_info": self.model_info.to_dict() if self.model_info is not None else None,
            "history": self.history.to_dict() if self.history is not None else None,
        }

    def to_json(self, indent: int | None = 2) -> str:
        """Serialise to JSON (non-finite numbers are written as strings)."""
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls, text: str) -> Report:
        """Load a report written by :meth:`to_json`."""
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise ValueError(f"This is not a gradscope report: invalid JSON ({exc}).") from exc
        if not isinstance(data, dict) or "schema_version" not in data:
            raise ValueError("This is not a gradscope report: it has no schema_version.")
        if data["schema_version"] > SCHEMA_VERSION:
            raise ValueError(
                f"This report uses schema version {data['schema_version']}, newer than this "
                f"gradscope understands ({SCHEMA_VERSION}); upgrade gradscope to read it."
            )
        history = data.get("history")
        info = data.get("model_info")
        return cls(
            findings=[Finding.from_dict(f) for f in data["findings"]],
            model_name=data.get("model_name", "model"),
            history=History.from_dict(history) if history else None,
            plugin_errors=data.get("plugin_errors", []),
            coverage=data.get("coverage", {}),
            overhead=data.get("overhead", {}),
            config=data.get("config", {}),
            notes=data.get("notes", []),
            not_judged=data.get("not_judged", []),
            model_info=ModelInfo.from_dict(info) if info else None,
        )

    # -- conveniences: each is one call into gradscope.render ------------------
    def plot(self, outdir: str | Path, formats: tuple[str, ...] = ("png",)) -> list[Path]:
        """Write every view the loaded renderer plugins make; see :func:`gradscope.render.plot`."""
        from gradscope import render

        return render.plot(self, outdir, formats)

    def save_html(self, path: str | Path) -> Path:
        """Write a self-contained HTML report; see :func:`gradscope.render.save_html`."""
        from gradscope import render

        return render.save_html(self, path)

    def summary(self, suggestions: int = 1) -> str:
        """A plain-text account of the findings; see :func:`gradscope.render.summary`."""
        from gradscope import render

        return render.summary(self, suggestions)

    def __str__(self) -> str:
        return self.summary()
