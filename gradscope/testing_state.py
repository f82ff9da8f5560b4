"""What the pytest plugin shares with gradscope.testing during a run (no torch import)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

_state: dict[str, Any] = {"update_snapshots": False, "rootpath": None, "reports": []}


def configure(update_snapshots: bool, rootpath: Path | None) -> None:
    """Called by the pytest plugin at start-up."""
    _state["update_snapshots"] = update_snapshots
    _state["rootpath"] = rootpath


def update_snapshots() -> bool:
    """Whether --gradscope-update-snapshots was given."""
    return bool(_state["update_snapshots"])


def rootpath() -> Path | None:
    """pytest's rootdir, when running under pytest."""
    return _state["rootpath"]


def start_test() -> None:
    """Forget the reports of the previous test."""
    _state["reports"] = []


def remember(report: Any) -> None:
    """Keep a report made during the current test (for --gradscope-report)."""
    _state["reports"].append(report)


def current_reports() -> list[Any]:
    """Reports made during the current test."""
    return list(_state["reports"])
