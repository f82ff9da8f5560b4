"""Train one variant (or the baseline) for the trial: same seed, data order and optimizer."""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from gradscope.diagnosis import _call, _train_mode
from gradscope.errors import GradscopeWarning
from gradscope.optimizer_settings import PARAMS, optimizer_class
from gradscope.report import Report
from gradscope.scope import watch
from gradscope.trials.fixes import Change

#: (model, batch, optimizer, scope) -> loss, already backpropagated (a custom training step).
TrainStep = Callable[[nn.Module, Any, torch.optim.Optimizer, Any], torch.Tensor]
OptimizerFactory = Callable[[list[nn.Parameter]], torch.optim.Optimizer]


class ModelFailed(Exception):
    """The variant could not run its first step (the change does not fit the model)."""


@dataclass
class Run:
    """One trained variant: its loss per step, its report and its time."""

    losses: list[float]
    report: Report
    seconds: float
    model: nn.Module
    notes: list[str] = field(default_factory=list)

    @property
    def finite(self) -> bool:
        """True when every step's loss was finite."""
        return all(math.isfinite(v) for v in self.losses)


def default_optimizer(
    settings: dict[str, Any], model: nn.Module, group_of: dict[int, int]
) -> torch.optim.Optimizer:
    """The report's optimizer class and param groups rebuilt on ``model`` (SGD lr 0.01 if none).

    ``group_of`` maps id(parameter) of ``model`` to the group it belongs to; parameters a
    fix added join group 0.
    """
    trainable = [p for p in model.parameters() if p.requires_grad]
    cls = optimizer_class(settings)
    groups_settings = settings.get("param_groups") or []
    if cls is None or not groups_settings:
        return torch.optim.SGD(trainable, lr=0.01)
    groups: list[dict[str, Any]] = []
    for hyper in groups_settings:
        values = {k: v for k, v in hyper.items() if k != PARAMS and v is not None}
        if isinstance(values.get("betas"), list):
            values["betas"] = tuple(values["betas"])
        values.pop("initial_lr", None)
        groups.append({PARAMS: [], **values})
    for p in trainable:
        groups[min(group_of.get(id(p), 0), len(groups) - 1)][PARAMS].append(p)
    return cls([g for g in groups if g[PARAMS]])


def group_map(settings: dict[str, Any], model: nn.Module) -> dict[int, int]:
    """id(parameter) -> index of its param group in ``settings``, by parameter name."""
    index = {}
    for k, group in enumerate(settings.get("param_groups") or []):
        for name in group.get(PARAMS, []):
            index[name] = k
    return {id(p): index[n] for n, p in model.named_parameters() if n in index}


def _adjust(optimizer: torch.optim.Optimizer, change: Change) -> None:
    for group in optimizer.param_groups:
        if change.lr_factor != 1.0:
            group["lr"] = group["lr"] * change.lr_factor
        if change.weight_decay is not None:
            current = float(group.get("weight_decay") or 0.0)
            group["weight_decay"] = current * 10 if current > 0 else change.weight_decay
        if change.weight_decay_factor is not None:
            group["weight_decay"] = float(group.get("weight_decay") or 0.0) * (
                change.weight_decay_factor
            )


def _clip_hook(model: nn.Module, max_norm: float) -> Callable[..., None]:
    params = [p for p in model.parameters() if p.requires_grad]

    def hook(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        nn.utils.clip_grad_norm_(params, max_norm)

    return hook


def train(
    model: nn.Module,
    change: Change | None,
    batches: list[Any],
    loss_fn: Callable[[Any, Any], torch.Tensor] | None,
    make_optimizer: Callable[[nn.Module], torch.optim.Optimizer],
    steps: int,
    seed: int,
    train_step: TrainStep | None = None,
    name: str = "variant",
) -> Run:
    """Train ``model`` for ``steps`` steps under gradscope.watch and return the run.

    Raises :class:`ModelFailed` when the first step fails (the change does not fit).
    """
    torch.manual_seed(seed)
    _train_mode(model)
    optimizer = make_optimizer(model)
    if change is not None:
        _adjust(optimizer, change)
        if change.clip is not None:
            # Registered before gradscope's own hook: it sees the clipped gradients,
            # as it would in a loop that clips between backward() and step().
            optimizer.register_step_pre_hook(_clip_hook(model, change.clip))
    normalize = change.normalize if change is not None else None
    if change is not None and change.loss_fn is not None:
        loss_fn = change.loss_fn
    if change is not None and change.train_step is not None:
        train_step = change.train_step
    losses: list[float] = []
    notes: list[str] = []
    start = time.perf_counter()
    # The user saw gradscope's warnings about this model in their own run already.
    with (
        warnings.catch_warnings(),
        watch(model, optimizer=optimizer, detail_every=1, name=name) as scope,
    ):
        warnings.simplefilter("ignore", GradscopeWarning)
        for step in range(steps):
            x, y = batches[step % len(batches)]
            try:
                if train_step is not None:
                    loss = train_step(model, (x, y), optimizer, scope)
                else:
                    if normalize is not None:
                        x = (x - normalize[0]) / normalize[1]
                    optimizer.zero_grad(set_to_none=True)
                    loss = loss_fn(_call(model, x), y)  # type: ignore[misc]
                    scope.log_loss(loss)
                    loss.backward()
                    optimizer.step()
            except Exception as exc:  # noqa: BLE001 - a variant's failure is its verdict
                if step == 0:
                    raise ModelFailed(f"{type(exc).__name__}: {str(exc).splitlines()[0]}") from exc
                notes.append(f"stopped at step {step}: {type(exc).__name__}: {exc}")
                losses.append(math.inf)
                break
            losses.append(float(loss.detach()))
        report = scope.report()
    return Run(losses, report, time.perf_counter() - start, model, notes)
