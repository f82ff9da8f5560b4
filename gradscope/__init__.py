"""gradscope: find out why a PyTorch model is not training, and what to change.

The public names load on first use, so ``import gradscope`` (and the pytest plugin,
which lives in this package) does not import torch until something needs it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from gradscope.version import __version__

_EXPORTS = {
    "Finding": "gradscope.findings",
    "Report": "gradscope.report",
    "Suggestion": "gradscope.findings",
    "GradscopeError": "gradscope.errors",
    "InputError": "gradscope.errors",
    "GradscopeWarning": "gradscope.errors",
    "History": "gradscope.history",
    "StepRecord": "gradscope.history",
    "hookimpl": "gradscope.hookspecs",
    "LayerInfo": "gradscope.modelinfo",
    "ModelInfo": "gradscope.modelinfo",
    "StopTraining": "gradscope.plugins",
    "Scope": "gradscope.scope",
    "watch": "gradscope.scope",
    "diagnose": "gradscope.diagnosis",
    "trial": "gradscope.trials",
    "TrialReport": "gradscope.trials",
}
_SUBMODULES = {
    "plugins",
    "testing",
    "signals",
    "models",
    "config",
    "stats",
    "judge",
    "render",
    "recorder",
}

__all__ = [
    "Finding",
    "GradscopeError",
    "GradscopeWarning",
    "History",
    "InputError",
    "LayerInfo",
    "ModelInfo",
    "Report",
    "Scope",
    "StepRecord",
    "StopTraining",
    "Suggestion",
    "TrialReport",
    "__version__",
    "diagnose",
    "hookimpl",
    "trial",
    "watch",
]

if TYPE_CHECKING:
    from gradscope.diagnosis import diagnose
    from gradscope.errors import GradscopeError, GradscopeWarning, InputError
    from gradscope.findings import Finding, Suggestion
    from gradscope.history import History, StepRecord
    from gradscope.hookspecs import hookimpl
    from gradscope.modelinfo import LayerInfo, ModelInfo
    from gradscope.plugins import StopTraining
    from gradscope.report import Report
    from gradscope.scope import Scope, watch
    from gradscope.trials import TrialReport, trial


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f"gradscope.{name}")
    raise AttributeError(f"module 'gradscope' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*__all__, *_SUBMODULES])
