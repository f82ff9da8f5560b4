"""Whether gradients are reset between optimizer steps (``zero_grad()`` forgotten).

``backward()`` adds into ``param.grad``; without ``optimizer.zero_grad()`` (or
``model.zero_grad()``) between steps, every step's gradient is the running sum of all
the previous ones.  No statistic of the gradient alone shows it, but one parameter's
gradients do, exactly: after a step, keep that parameter's gradient (``previous``) and
sum what backward adds to it during the next step (``incoming``, a tensor hook that sees
each gradient before it is accumulated).  At the next ``optimizer.step()`` the gradient
is ``c * incoming`` when it was reset, and ``c * (previous + incoming)`` when it was not
(``c``: gradient clipping or a GradScaler's unscaling, applied to the whole sum).  A
gradient that arrives while ``.grad`` is None (``zero_grad(set_to_none=True)``, the
default, came in between) starts ``incoming`` afresh: a second loss's backward through the
parameter before that reset (a GAN generator's step through the discriminator) is gone
from ``.grad`` and must not count.

The check runs after detail steps only (a copy of one parameter of at most
:data:`LARGEST` entries and a hook on it), never under DDP or FSDP (their all-reduce
rewrites the gradient between backward and the step).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

#: What a report says when the check cannot run (DDP/FSDP2).
OFF_NOTE = (
    "whether the loop resets the gradients between steps (stale_gradient) was not "
    "checked: DDP/FSDP2 rewrite the gradient between backward and the optimizer step"
)
#: The largest parameter the check copies (entries); a larger one is used only if it is
#: the only one.
LARGEST = 65_536
#: A hypothesis fits when what it leaves unexplained is below this share of the gradient
#: (float32 rounding of a sum leaves ~1e-7).
FITS = 1e-3
#: ...and the other one must leave at least this share unexplained.
MISFITS = 1e-2


def carried_share(grad: Tensor, incoming: Tensor, previous: Tensor) -> float:
    """The share of ``grad``'s norm that is the previous step's gradient: 0.0 when ``grad``
    is a multiple of ``incoming`` (reset), ``|c * previous| / |grad|`` when it is a
    multiple of ``previous + incoming`` (not reset), NaN when neither fits or both do
    (``previous`` parallel to ``incoming``: the same batch every step).  One host
    transfer."""
    g, new, old = (t.detach().double().reshape(-1) for t in (grad, incoming, previous))
    summed = old + new
    size, reset, kept, scale, old_size = torch.stack(
        [g.norm(), _unexplained(g, new), _unexplained(g, summed), _projection(g, summed),
         old.norm()]
    ).tolist()  # fmt: skip
    if not math.isfinite(size) or size == 0.0:
        return math.nan
    reset, kept = reset / size, kept / size
    if kept < FITS and reset > MISFITS:
        return min(abs(scale) * old_size / size, 1.0)
    if reset < FITS and kept > MISFITS:
        return 0.0
    return math.nan


def _projection(target: Tensor, basis: Tensor) -> Tensor:
    """The best multiple of ``basis`` for ``target`` (0 when ``basis`` is 0)."""
    energy = basis @ basis
    return torch.where(energy > 0, (target @ basis) / energy.clamp_min(1e-300), 0.0)


def _unexplained(target: Tensor, basis: Tensor) -> Tensor:
    """The norm of what is left of ``target`` after its best multiple of ``basis``."""
    return (target - _projection(target, basis) * basis).norm()


def pick(params: list[Tensor], stepped: set[int] | None = None) -> int | None:
    """The parameter to check: the largest one with a gradient and at most
    :data:`LARGEST` entries (the smallest one when every one is larger), or None.  With
    ``stepped`` (the ids of the optimizer's parameters) only those count: a trainable
    parameter the optimizer does not hold is never reset by its ``zero_grad()``, and its
    gradient is never used either."""
    with_grad = [
        (p.numel(), i)
        for i, p in enumerate(params)
        if p.grad is not None
        and p.grad.layout is torch.strided  # not sparse embeddings
        and (stepped is None or id(p) in stepped)
    ]
    if not with_grad:
        return None
    fitting = [pair for pair in with_grad if pair[0] <= LARGEST]
    return max(fitting)[1] if fitting else min(with_grad)[1]


class CarryCheck:
    """One parameter's gradient followed from one optimizer step to the next."""

    def __init__(self) -> None:
        self._index: int | None = None
        self._param: Tensor | None = None
        self._previous: Tensor | None = None
        self._incoming: Tensor | None = None
        self._handle: torch.utils.hooks.RemovableHandle | None = None
        #: (parameter index, carried share) of the last check, until the recorder takes it.
        self.result: tuple[int, float] | None = None

    @property
    def armed(self) -> bool:
        """Whether a check is waiting for the next ``optimizer.step()``."""
        return self._handle is not None

    def arm(self, params: list[Tensor], optimizer: torch.optim.Optimizer | None) -> None:
        """After ``optimizer.step()``: keep one gradient (of a parameter ``optimizer``
        updates, when given) and start summing what comes."""
        self.disarm()
        stepped = None
        if optimizer is not None:
            stepped = {id(p) for group in optimizer.param_groups for p in group["params"]}
        index = pick(params, stepped)
        if index is None:
            return
        param = params[index]
        self._index = index
        self._param = param
        self._previous = param.grad.detach().float().clone()
        self._handle = param.register_hook(self._add)

    def _add(self, grad: Tensor) -> None:
        if grad.layout is not torch.strided:
            return
        if self._param is not None and self._param.grad is None:
            # zero_grad(set_to_none=True) since the last gradient arrived: what came
            # before it (another loss's backward through this parameter, such as a GAN
            # generator's step through the discriminator) is no longer in .grad.
            self._incoming = None
        grad = grad.detach().float()
        self._incoming = grad.clone() if self._incoming is None else self._incoming + grad

    def settle(self, params: list[Tensor]) -> None:
        """At the next ``optimizer.step()``, before it: judge what the gradient holds."""
        index, previous, incoming = self._index, self._previous, self._incoming
        self.disarm()
        if index is None or previous is None or incoming is None or index >= len(params):
            return
        grad = params[index].grad
        if grad is None or grad.layout is not torch.strided:
            return
        if grad.shape != previous.shape or incoming.shape != previous.shape:
            return
        self.result = (index, carried_share(grad, incoming, previous))

    def disarm(self) -> None:
        """Forget a check in progress and remove its hook, leaving the parameter as it was:
        an empty hook dict left on a leaf still calls into Python at every backward, so
        it goes too when the check's hook was the only one."""
        if self._handle is not None:
            self._handle.remove()
            hooks = self._param._backward_hooks if self._param is not None else None
            if hooks is not None and not hooks:
                self._param._backward_hooks = None
        self._handle = None
        self._param = self._index = self._previous = self._incoming = None
