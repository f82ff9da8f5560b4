"""gradscope: find out why a PyTorch model is not training, and what to change."""

from gradscope.diagnose import diagnose
from gradscope.errors import GradscopeError, InputError
from gradscope.history import History, StepRecord
from gradscope.hookspecs import hookimpl
from gradscope.modelinfo import LayerInfo, ModelInfo
from gradscope.plugins import StopTraining
from gradscope.report import Finding, Report, Suggestion
from gradscope.scope import Scope, watch

__version__ = "0.1.0"

__all__ = [
    "Finding",
    "GradscopeError",
    "History",
    "InputError",
    "LayerInfo",
    "ModelInfo",
    "Report",
    "Scope",
    "StepRecord",
    "StopTraining",
    "Suggestion",
    "__version__",
    "diagnose",
    "hookimpl",
    "watch",
]
