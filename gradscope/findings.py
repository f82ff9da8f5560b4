"""Finding and Suggestion: what a diagnosis says about one problem, and how to fix it.

Plain data with a JSON form; the hook contract (``hookspecs``) and the report use them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

SEVERITIES = ("info", "warning", "error")
#: 0 for info, 1 for warning, 2 for error.
SEVERITY_RANK = {name: rank for rank, name in enumerate(SEVERITIES)}


@dataclass
class Suggestion:
    """A fix to try: ``kind`` from the suggestion vocabulary, ``code`` to paste, and the
    values the code uses that ``trial`` applies as printed (``{"lr_factor": 1e-5}``)."""

    kind: str
    title: str
    why: str
    code: str
    settings: dict[str, float] = field(default_factory=dict)


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
        return SEVERITY_RANK[self.severity]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready copy."""
        data = asdict(self)
        data["evidence"] = jsonable(self.evidence)
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


def jsonable(value: Any) -> Any:
    """``value`` with non-finite floats as strings and tensors as numbers, for JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):
        return jsonable(value.item())
    return value


def sort_findings(findings: list[Finding]) -> list[Finding]:
    """Most severe first; then earliest step; then depth order is kept as given."""
    return sorted(
        findings,
        key=lambda f: (-f.rank, f.step if f.step is not None else math.inf),
    )
