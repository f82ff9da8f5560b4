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


#: The largest learning rate in common use for each optimizer (their defaults and the
#: usual ranges: SGD 0.01-0.1, the Adam family and RMSprop 1e-4-1e-3, Adagrad 0.01).
USUAL_MAX_LR = {
    "SGD": 0.1,
    "Adam": 1e-3,
    "AdamW": 1e-3,
    "NAdam": 1e-3,
    "RAdam": 1e-3,
    "Adamax": 2e-3,
    "RMSprop": 1e-3,
    "Adagrad": 0.01,
}


#: Optimizers whose step grows with the loss's scale (the adaptive ones divide it out).
SCALE_SENSITIVE = frozenset({"SGD"})


def lower_lr_factor(
    optimizer: str | None, lr: float | None, loss_multiplier: float | None = None
) -> float:
    """What ``lower_lr`` multiplies the learning rate by: 1/10, or down to the optimizer's
    :data:`USUAL_MAX_LR` when a tenth would still be above it (SGD at 18 goes to 0.1,
    not 1.8; AdamW at 3.0 to 1e-3).  Under SGD a loss multiplied by a constant multiplies
    every step by it too: the rate is judged as ``lr * loss_multiplier``."""
    usual = USUAL_MAX_LR.get(optimizer or "")
    if usual is None or lr is None or not lr > 0 or not math.isfinite(lr):
        return 0.1
    scaled = loss_multiplier is not None and math.isfinite(loss_multiplier)
    effective = lr
    if optimizer in SCALE_SENSITIVE and scaled and loss_multiplier > 1:
        effective = lr * loss_multiplier
    return min(0.1, usual / effective)
