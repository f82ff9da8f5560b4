"""Parameters that appear after ``watch()``: lazy modules materialising, layers added later.

A scope fixes its list of parameters when it is created.  ``nn.LazyLinear`` and friends
have no shape until their first forward, and a training script may add a head (and an
optimizer param group) mid-run.  This module finds such parameters and grows a
:class:`~gradscope.history.History` to include them, padding the records already kept
("no gradient measured") so every column stays aligned.
"""

from __future__ import annotations

import math

import torch
from torch.nn.parameter import UninitializedParameter

from gradscope.history import History


def is_uninitialized(p: torch.Tensor) -> bool:
    """True for a lazy module's parameter that has no shape yet."""
    return isinstance(p, UninitializedParameter)


def trainable(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    """The model's trainable parameters that already have a shape."""
    return [
        (n, p) for n, p in model.named_parameters() if p.requires_grad and not is_uninitialized(p)
    ]


def has_uninitialized(model: torch.nn.Module) -> bool:
    """Whether some parameter still waits for a lazy module's first forward."""
    return any(is_uninitialized(p) for p in model.parameters())


def optimizer_size(optimizer: torch.optim.Optimizer | None) -> int:
    """How many parameters the optimizer holds (cheap: a few groups)."""
    if optimizer is None:
        return 0
    size = 0
    for group in optimizer.param_groups:  # a loop: no generator on every step
        size += len(group["params"])
    return size


def outside_optimizer(
    optimizer: torch.optim.Optimizer | None, names: list[str], params: list[torch.Tensor]
) -> list[str]:
    """The watched parameters (``names`` of ``params``) that ``optimizer`` does not hold:
    updated by other means if at all (an EMA target network), never by its steps.  Empty
    without an optimizer, and when it holds none of them (an optimizer of another model, or
    a wrapper whose groups hold copies): then nothing is known to be left out on purpose."""
    groups = getattr(optimizer, "param_groups", None)
    if not groups:
        return []
    held = {id(p) for group in groups for p in group.get("params", [])}
    outside = [name for name, p in zip(names, params, strict=True) if id(p) not in held]
    return outside if len(outside) < len(names) else []


#: A detail step walks the model's modules for parameters once in this many; in between
#: it looks at the parameter list of the last walk (unfrozen ones), which costs ~1/10th.
WALK_EVERY = 8


class Lookout:
    """Whether a parameter may have appeared since ``watch()``, cheaply enough for every
    detail step of a model of 1,000 layers: parameters unfrozen since are seen at once,
    modules added without touching the optimizer at the next walk (``WALK_EVERY``).
    Parameters added to the optimizer are found by its size, lazy ones by their ids."""

    def __init__(self, model: torch.nn.Module, known: list[torch.Tensor]) -> None:
        self.model = model
        self.params = list(model.parameters())
        self.known = {id(p) for p in known}
        self.looks = 0

    def maybe_new(self) -> bool:
        """True when some trainable parameter is not known yet."""
        self.looks += 1
        if self.looks % WALK_EVERY == 0:
            self.params = list(self.model.parameters())
        known = self.known
        return any(p.requires_grad and id(p) not in known for p in self.params)

    def add(self, params: list[torch.Tensor]) -> None:
        """Note parameters now watched."""
        self.known.update(id(p) for p in params)
        self.params = list(self.model.parameters())


def new_parameters(
    model: torch.nn.Module, known: list[torch.Tensor]
) -> list[tuple[str, torch.nn.Parameter]]:
    """Trainable, materialised parameters of ``model`` that are not in ``known``."""
    ids = {id(p) for p in known}
    return [(n, p) for n, p in trainable(model) if id(p) not in ids]


def extend_history(
    history: History, names: list[str], modules: list[str], ndims: list[int]
) -> None:
    """Add parameters to ``history``; records kept so far read "not measured" for them."""
    history.settle()  # flush the running tallies, which are per parameter
    if len(history.param_ndims) == len(history.param_names):
        history.param_ndims.extend(ndims)
    history.param_names.extend(names)
    history.param_modules.extend(modules)
    history.grad_seen.extend([0] * len(names))
    history.first_nonfinite_grad.extend([None] * len(names))
    for record in history.records:  # new lists: records share their read-only columns
        record.grads = {
            column: [*values, *[_fill(column)] * len(names)]
            for column, values in record.grads.items()
        }


def _fill(column: str) -> float:
    """What a record that did not measure a parameter holds in ``column``."""
    return 0.0 if column in ("has_grad", "numel") else math.nan
