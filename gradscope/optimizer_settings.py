"""An optimizer's class and param-group hyper-parameters as plain data, and back.

A report carries these settings so that :func:`gradscope.trial` can train copies of
the model with the same optimizer the report was made with.  Parameters are named
(by ``model.named_parameters()``), so the settings survive JSON and apply to a copy.
"""

from __future__ import annotations

import math
from typing import Any

import torch

#: The key under which the settings name each group's parameters.
PARAMS = "params"


def _plain(value: Any) -> Any:
    """A JSON-ready hyper-parameter, or None when it is not a plain number/flag/string."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, (tuple, list)) and all(isinstance(v, (int, float)) for v in value):
        return list(value)
    return None


def optimizer_settings(
    optimizer: torch.optim.Optimizer | None, model: torch.nn.Module
) -> dict[str, Any]:
    """``{"class": "Adam", "param_groups": [{"lr": ..., "params": [names]}, ...]}`` or {}."""
    if optimizer is None:
        return {}
    names = {id(p): n for n, p in model.named_parameters()}
    groups = []
    for group in optimizer.param_groups:
        settings = {}
        for key, value in group.items():
            if key == PARAMS:
                continue
            plain = _plain(value)
            if plain is not None or value is None:
                settings[key] = plain
        settings[PARAMS] = [names[id(p)] for p in group[PARAMS] if id(p) in names]
        groups.append(settings)
    cls = type(optimizer)
    return {"class": cls.__name__, "module": cls.__module__, "param_groups": groups}


def optimizer_class(settings: dict[str, Any]) -> type[torch.optim.Optimizer] | None:
    """The torch.optim class the settings name (None for any other optimizer)."""
    name = settings.get("class")
    cls = getattr(torch.optim, name, None) if isinstance(name, str) else None
    if isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer):
        return cls
    return None

