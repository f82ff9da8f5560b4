"""diagnose(): a short instrumented training run that returns a Report."""

from __future__ import annotations

import contextlib
import copy
import itertools
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch

from gradscope.errors import InputError
from gradscope.report import Report
from gradscope.scope import Scope


def _as_batches(batches: Any) -> Iterator[tuple[Any, Any]]:
    """Cycle over ``batches``: one (input, target) pair, or an iterable of them."""
    if isinstance(batches, tuple) and len(batches) == 2 and not isinstance(batches[0], tuple):
        return itertools.repeat(batches)
    if isinstance(batches, torch.Tensor) or not isinstance(batches, Iterable):
        raise InputError(
            "batches must be an (input, target) pair or an iterable of such pairs, "
            f"got {type(batches).__name__}."
        )
    seen: list[tuple[Any, Any]] = []

    def cycle() -> Iterator[tuple[Any, Any]]:
        for batch in batches:
            seen.append(_pair(batch))
            yield seen[-1]
        if not seen:
            raise InputError("batches is empty: give at least one (input, target) pair.")
        while True:
            yield from seen

    return cycle()


def _pair(batch: Any) -> tuple[Any, Any]:
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    raise InputError(
        f"Each batch must be an (input, target) pair, got {type(batch).__name__}"
        + (f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else "")
        + "."
    )


def _call(model: torch.nn.Module, x: Any) -> Any:
    if isinstance(x, dict):
        return model(**x)
    if isinstance(x, (tuple, list)):
        return model(*x)
    return model(x)


def _train_mode(model: torch.nn.Module) -> None:
    # torch.export programs refuse train(): they keep the mode they were exported in.
    with contextlib.suppress(NotImplementedError):
        model.train()


def diagnose(
    model: torch.nn.Module,
    batches: Any,
    loss_fn: Callable[[Any, Any], torch.Tensor],
    optimizer: torch.optim.Optimizer | None = None,
    steps: int = 20,
    *,
    lr: float = 0.01,
    config: dict[str, Any] | None = None,
    progress: Callable[[int], None] | None = None,
    **watch_options: Any,
) -> Report:
    """Train for ``steps`` instrumented steps and return the :class:`Report`.

    Without an optimizer, a deep copy of the model is trained with SGD(lr) so the
    caller's model is untouched; with one, the model itself is trained by it.

    Args:
        model: the model to check.
        batches: an (input, target) pair, or an iterable of pairs (cycled).  A tuple or
            dict input is unpacked into the model's arguments.
        loss_fn: called as ``loss_fn(output, target)``.
        optimizer: train ``model`` in place with this optimizer instead of a copy.
        steps: how many steps to run.
        lr: learning rate of the default SGD.
        config: threshold overrides for the plugins.
        progress: called with the step index after each step (for progress bars).
    """
    own_optimizer = optimizer is None
    model, optimizer = _prepare(model, loss_fn, optimizer, steps, lr)
    _train_mode(model)
    source = _as_batches(batches)
    # A short diagnostic run measures every statistic on every step.
    watch_options.setdefault("detail_every", 1)
    with Scope(model, optimizer=optimizer, config=config, **watch_options) as scope:
        for step in range(steps):
            x, y = next(source)
            optimizer.zero_grad(set_to_none=True)
            loss = _loss_of(model, loss_fn, x, y, step)
            scope.log_loss(loss)
            loss.backward()
            optimizer.step()
            if progress is not None:
                progress(step)
    report = scope.report()
    if own_optimizer and report.at_least("warning"):
        report.notes.append(
            f"trained with diagnose's own SGD(lr={lr}) for {steps} steps, as no optimizer was "
            "given: a loss that does not fall here may be that optimizer's doing (a "
            "Transformer barely moves under plain SGD in so few steps); pass optimizer= "
            "to judge your own recipe"
        )
    return report


def _prepare(
    model: Any, loss_fn: Any, optimizer: torch.optim.Optimizer | None, steps: int, lr: float
) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """Check the arguments; without an optimizer, a deep copy trained by SGD(lr)."""
    if not isinstance(model, torch.nn.Module):
        raise InputError(
            f"diagnose() needs a torch.nn.Module, got {type(model).__name__}; pass the model."
        )
    if not callable(loss_fn):
        raise InputError(
            f"loss_fn must be callable as loss_fn(output, target), got {type(loss_fn).__name__}."
        )
    if steps < 1:
        raise InputError(f"steps must be at least 1, got {steps}.")
    if optimizer is None:
        model = copy.deepcopy(model)
        trainable = [p for p in model.parameters() if p.requires_grad]
        if not trainable:
            raise InputError("The model has no trainable parameters (all requires_grad=False).")
        optimizer = torch.optim.SGD(trainable, lr=lr)
    return model, optimizer


def _loss_of(model: torch.nn.Module, loss_fn: Any, x: Any, y: Any, step: int) -> torch.Tensor:
    """The step's loss, or a one-sentence InputError saying which part failed."""
    try:
        output = _call(model, x)
    except Exception as exc:
        raise InputError(f"The model failed on the input batch at step {step}: {exc}") from exc
    try:
        loss = loss_fn(output, y)
    except Exception as exc:
        raise InputError(
            f"The loss function failed on the model output at step {step}: {exc}"
        ) from exc
    if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
        is_tensor = isinstance(loss, torch.Tensor)
        got = f"shape {tuple(loss.shape)}" if is_tensor else type(loss).__name__
        raise InputError(
            f"loss_fn must return a scalar tensor (reduce it with .mean()), got {got}."
        )
    if not loss.requires_grad:
        raise InputError(
            "The loss does not depend on any trainable parameter (it has no grad_fn), so "
            "there is no gradient to diagnose: is it computed from argmax/round/.item() "
            "values (a 0-1 loss is not differentiable), or under torch.no_grad()?"
        )
    return loss
