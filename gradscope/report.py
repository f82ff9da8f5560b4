"""Finding, Suggestion and Report: what a diagnosis says, in a versioned JSON form."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gradscope.history import History

#: Bumped whenever the JSON layout changes incompatibly.
SCHEMA_VERSION = 1
SEVERITIES = ("info", "warning", "error")
_SEVERITY_RANK = {name: rank for rank, name in enumerate(SEVERITIES)}


@dataclass
class Suggestion:
    """A fix to try: ``kind`` from the suggestion vocabulary, ``code`` to paste."""

    kind: str
    title: str
    why: str
    code: str


@dataclass
class Finding:
    """One problem seen in training, with the numbers behind it and fixes, best first."""

    kind: str
    layer: str | None
    severity: str
    step: int | None
    message: str
    evidence: dict[str, Any] = field(default_factory=dict)
    suggestions: list[Suggestion] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(
                f"Finding severity must be one of {SEVERITIES}, got {self.severity!r}."
            )

    @property
    def rank(self) -> int:
        """0 for info, 1 for warning, 2 for error."""
        return _SEVERITY_RANK[self.severity]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready copy."""
        data = asdict(self)
        data["evidence"] = _jsonable(self.evidence)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Finding:
        """Inverse of :meth:`to_dict`."""
        return cls(
            kind=data["kind"],
            layer=data["layer"],
            severity=data["severity"],
            step=data["step"],
            message=data["message"],
            evidence=data.get("evidence", {}),
            suggestions=[Suggestion(**s) for s in data.get("suggestions", [])],
        )


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):
        return _jsonable(value.item())
    return value


def sort_findings(findings: list[Finding]) -> list[Finding]:
    """Most severe first; then earliest step; then depth order is kept as given."""
    return sorted(
        findings,
        key=lambda f: (-f.rank, f.step if f.step is not None else math.inf),
    )


@dataclass
class Report:
    """The result of watching or diagnosing a model.

    Attributes:
        findings: most severe first.
        model_name: the model's class name (or the name it was given).
        history: the recorded statistics the findings were judged from.
        plugin_errors: plugins that raised, with the hook and the error; they were disabled.
        coverage: how many hooks fired per recorded step, and modules that ran unseen.
        overhead: gradscope's own measured time per recorded step, in seconds.
        config: the threshold overrides in force.
    """

    findings: list[Finding] = field(default_factory=list)
    model_name: str = "model"
    history: History | None = None
    plugin_errors: list[dict[str, str]] = field(default_factory=list)
    coverage: dict[str, Any] = field(default_factory=dict)
    overhead: dict[str, float] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no finding has severity ``error``."""
        return not any(f.severity == "error" for f in self.findings)

    def at_least(self, severity: str) -> list[Finding]:
        """Findings of ``severity`` or worse."""
        return [f for f in self.findings if f.rank >= _SEVERITY_RANK[severity]]

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
            "coverage": _jsonable(self.coverage),
            "overhead": _jsonable(self.overhead),
            "config": _jsonable(self.config),
            "notes": self.notes,
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
        except json.JSONDecodeError as exc:
            raise ValueError(f"This is not a gradscope report: invalid JSON ({exc}).") from exc
        if not isinstance(data, dict) or "schema_version" not in data:
            raise ValueError("This is not a gradscope report: it has no schema_version.")
        if data["schema_version"] > SCHEMA_VERSION:
            raise ValueError(
                f"This report uses schema version {data['schema_version']}, newer than this "
                f"gradscope understands ({SCHEMA_VERSION}); upgrade gradscope to read it."
            )
        history = data.get("history")
        return cls(
            findings=[Finding.from_dict(f) for f in data["findings"]],
            model_name=data.get("model_name", "model"),
            history=History.from_dict(history) if history else None,
            plugin_errors=data.get("plugin_errors", []),
            coverage=data.get("coverage", {}),
            overhead=data.get("overhead", {}),
            config=data.get("config", {}),
            notes=data.get("notes", []),
        )

    # -- rendering -------------------------------------------------------------
    def plot(self, outdir: str | Path, formats: tuple[str, ...] = ("png",)) -> list[Path]:
        """Write every view the loaded renderer plugins make; returns the written paths.

        ``formats`` may add ``"svg"`` next to ``"png"``.  A renderer that fails is named in
        :attr:`plugin_errors` and skipped; plotting never raises for it.
        """
        from gradscope.plugins import PluginRunner

        outdir = Path(outdir)
        outdir.mkdir(parents=True, exist_ok=True)
        runner = PluginRunner()
        written = runner.render(self, outdir, {"formats": list(formats)})
        self.plugin_errors.extend(e for e in runner.errors if e not in self.plugin_errors)
        return written

    def save_html(self, path: str | Path) -> Path:
        """Write a self-contained HTML report (plots inlined) to ``path``."""
        import shutil
        import tempfile

        path = Path(path)
        with tempfile.TemporaryDirectory() as tmp:
            written = {p.name: p for p in self.plot(tmp)}
            if "report.html" not in written:
                raise RuntimeError(
                    "No loaded renderer writes report.html (is the html_report plugin "
                    "excluded by GRADSCOPE_PLUGINS?)."
                )
            path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(written["report.html"], path)
        return path

    def summary(self, suggestions: int = 1) -> str:
        """A plain-text table of the findings with the top ``suggestions`` fixes each."""
        lines = [f"gradscope report for {self.model_name}: " + self._verdict()]
        if self.history is not None and self.history.recorded:
            lines.append(f"  {self.history.recorded} recorded steps")
        if self.overhead.get("seconds_per_step") is not None:
            lines.append(
                f"  gradscope's own time: {self.overhead['seconds_per_step'] * 1e3:.2f} ms "
                "per recorded step (measured)"
            )
        if self.overhead.get("budget") is not None:
            lines.append(
                f"  overhead budget {self.overhead['budget']:.1%}: measured "
                f"{self.overhead['measured_overhead']:.1%}, activation statistics every "
                f"{int(self.overhead['activation_interval'])} step(s)"
            )
            floor = self.overhead.get("every_step_overhead", 0.0)
            every = int(self.overhead.get("record_every", 1))
            if every > 1:
                lines.append(
                    f"  the gradient checks alone take {floor:.1%} of a step, above the "
                    f"budget, so 1 step in {every} is recorded"
                )
        for note in self.notes:
            lines.append(f"  note: {note}")
        types = (
            dict(zip(self.history.module_names, self.history.module_types, strict=True))
            if self.history is not None
            else {}
        )
        for f in self.findings:
            kind_of = f" ({types[f.layer]})" if f.layer in types else ""
            where = f" in {f.layer}{kind_of}" if f.layer else ""
            at = f" (from step {f.step})" if f.step is not None else ""
            lines.append("")
            lines.append(f"[{f.severity.upper()}] {f.kind}{where}{at}")
            lines.append(f"  {f.message}")
            for s in f.suggestions[:suggestions]:
                lines.append(f"  fix ({s.kind}): {s.title}")
                lines.append(f"    why: {s.why}")
                for code_line in s.code.splitlines():
                    lines.append(f"      {code_line}")
        for err in self.plugin_errors:
            lines.append(
                f"  plugin {err['plugin']} failed in {err['hook']} and was disabled: {err['error']}"
            )
        return "\n".join(lines)

    def _verdict(self) -> str:
        if not self.findings:
            return "healthy: no findings"
        counts = {s: sum(f.severity == s for f in self.findings) for s in reversed(SEVERITIES)}
        parts = [f"{n} {s}{'s' if n != 1 else ''}" for s, n in counts.items() if n]
        return ", ".join(parts)

    def __str__(self) -> str:
        return self.summary()
