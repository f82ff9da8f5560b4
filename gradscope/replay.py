"""NaN origin at no cost on healthy steps: keep the step's top-level calls, replay on a bad one.

Summing every module's output on every step would name the first module whose output
turns NaN/Inf, but it costs a reduction and a Python call per module per step.  Instead,
:class:`CallRecorder` keeps *references* to the inputs of the step's top-level module
calls (the model's own forward, or its direct children when the loop calls them one by
one, as a GAN loop does).  When a step's gradients or loss come out non-finite, before
the optimizer applies them, :func:`replay` runs those calls again under ``no_grad`` on
the same weights and inputs, with the random state and the buffers (BatchNorm running
statistics) put back afterwards, so training is unchanged.

Memory: only the last :data:`MAX_CALLS` top-level calls are kept, and the scope clears
them at every optimizer step, so forwards that never reach a recorded step (evaluation
with gradients on, an optimizer re-created after ``watch()``) cannot pile up inputs.

What the replay runs again: the modules' ``forward`` code (Python-side effects in it,
such as a call counter, happen once more) with gradscope's own hooks only; the
user's forward hooks, forward pre-hooks and global module hooks are switched off
for the replay and put back afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

Call = tuple[torch.nn.Module, tuple, dict]

#: Top-level calls kept between two steps (a GAN step makes three or four).
MAX_CALLS = 8
_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks_with_kwargs",
)


class CallRecorder:
    """Keeps the inputs of the top-level module calls made with gradients enabled."""

    def __init__(self, model: torch.nn.Module, wrap: Callable[[Any], Any]) -> None:
        self.model = model
        self.calls: list[Call] = []
        self.active = True
        self._wrap = wrap
        self._depth = 0
        self._watched: set[int] = set()
        self._handles: list[Any] = []

    def attach(self, own_hooks: bool = True) -> None:
        """Watch the model's own forward (its children are added by :meth:`watch_child`);
        ``own_hooks=False``: the caller's root hooks call :meth:`before` and :meth:`after`."""
        self._watched.clear()
        if own_hooks:
            self._watch(self.model)
        else:
            self._watched.add(id(self.model))

    def detach(self) -> None:
        """Remove the hooks and forget the calls."""
        while self._handles:
            self._handles.pop().remove()
        self.calls.clear()
        self._depth = 0

    def watch_child(self, qualified_name: str) -> None:
        """Also watch the direct child of the model that contains ``qualified_name``,
        because a module inside it ran while no watched call was in progress."""
        top = qualified_name.split(".")[0]
        child = dict(self.model.named_children()).get(top)
        if child is not None and id(child) not in self._watched:
            self._watch(child)

    @property
    def outside_calls(self) -> bool:
        """True while no watched call is running: a module running now was called directly."""
        return self._depth == 0

    def _watch(self, module: torch.nn.Module) -> None:
        self._watched.add(id(module))
        if isinstance(module, torch.jit.ScriptModule):
            return  # TorchScript refuses hooks; its NaN origin stays unknown
        self._handles.append(
            module.register_forward_pre_hook(self._wrap(self.before), with_kwargs=True)
        )
        self._handles.append(
            module.register_forward_hook(self._wrap(self.after), always_call=True)
        )

    def before(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        """Forward pre-hook (with kwargs): keep a top-level call's inputs."""
        if self._depth == 0 and self.active and torch.is_grad_enabled():
            if len(self.calls) >= MAX_CALLS:
                del self.calls[0]  # forwards without a step: keep the latest only
            self.calls.append((module, args, kwargs))
        self._depth += 1

    def after(self, module: torch.nn.Module, args: tuple, output: Any) -> None:
        """Forward hook (always called): the call is over."""
        self._depth = max(self._depth - 1, 0)


@contextmanager
def _untouched(model: torch.nn.Module) -> Iterator[None]:
    """Put the random state and every buffer back as they were."""
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    if device.type == "cpu":
        fork = torch.random.fork_rng(devices=[])
    else:
        fork = torch.random.fork_rng(devices=[device.index or 0], device_type=device.type)
    try:
        with fork:
            yield
    finally:
        with torch.no_grad():
            for buffer, saved in buffers:
                buffer.copy_(saved)


def _torchs_own(hook: Any) -> bool:
    """Hooks torch itself installs (FSDP2 gathers its sharded parameters in them): the
    forward cannot run without them, so the replay keeps them."""
    target = getattr(hook, "func", hook)  # functools.partial
    module = getattr(target, "__module__", None) or getattr(
        getattr(target, "__func__", None), "__module__", ""
    )
    return str(module).startswith("torch.")


def _sharded(owner: Any) -> bool:
    """A module managed by FSDP2 (``fully_shard`` gives it an FSDP class)."""
    return any(cls.__name__.startswith("FSDP") for cls in type(owner).__mro__)


@contextmanager
def _only_hooks(model: torch.nn.Module, keep: set[int] | None) -> Iterator[None]:
    """Switch off every forward (pre-)hook whose handle id is not in ``keep``, and the
    global module hooks, then put them all back."""
    if keep is None:
        yield
        return
    from torch.nn.modules import module as module_mod

    saved: list[tuple[Any, str, Any]] = []
    owners = [*model.modules(), module_mod]
    try:
        for owner in owners:
            if owner is not module_mod and _sharded(owner):
                continue  # its hooks gather the sharded parameters: all of them stay
            for attr in _HOOK_DICTS if owner is not module_mod else ():
                hooks = getattr(owner, attr, None)
                if hooks:
                    saved.append((owner, attr, hooks))
                    kept = ((k, v) for k, v in hooks.items() if k in keep or _torchs_own(v))
                    setattr(owner, attr, type(hooks)(kept))
        for attr in ("_global_forward_hooks", "_global_forward_pre_hooks"):
            hooks = getattr(module_mod, attr, None)
            if hooks:
                saved.append((module_mod, attr, hooks))
                setattr(module_mod, attr, type(hooks)())
        yield
    finally:
        for owner, attr, hooks in reversed(saved):
            setattr(owner, attr, hooks)


def replay(model: torch.nn.Module, calls: list[Call], keep: set[int] | None = None) -> str | None:
    """Run ``calls`` again under ``no_grad``, leaving the model and random state unchanged.

    Returns None, or a one-line reason when the replay could not run.  The scope's
    forward hooks see the outputs as they would during training; with ``keep`` (hook
    handle ids), every other forward hook is off during the replay.
    """
    try:
        with _untouched(model), _only_hooks(model, keep), torch.no_grad():
            for module, args, kwargs in calls:
                module(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - a failed replay must never stop training
        return f"{type(exc).__name__}: {exc}"
    return None


class ContainerWatch:
    """Forward hooks, for one replay, on the modules gradscope does not hook (containers
    such as a custom layer holding a Linear): which one's own code made the NaN/Inf.

    A container whose inputs were finite but whose output was not made it in its own
    forward(), after its children ran (a division by a node's degree of 0 after its
    ``lin``).  Checked only on a replayed, already non-finite step: no cost otherwise."""

    def __init__(self, model: torch.nn.Module, hooked: set[int]) -> None:
        self.seen: list[tuple[str, bool, bool]] = []  # (name, inputs finite, output finite)
        self._handles = [
            module.register_forward_hook(self._hook(name))
            for name, module in model.named_modules()
            if name and id(module) not in hooked
        ]
        self.ids = {h.id for h in self._handles}

    def _hook(self, name: str) -> Callable[..., None]:
        def hook(module: torch.nn.Module, args: tuple, output: Any) -> None:
            self.seen.append((name, _finite(args), _finite(output)))

        return hook

    def first_made_nonfinite(self) -> str | None:
        """The first container, in the order their calls completed, with finite inputs and
        a non-finite output (None if none)."""
        return next((name for name, given, made in self.seen if given and not made), None)

    def remove(self) -> None:
        """Take the hooks off again."""
        for handle in self._handles:
            handle.remove()


def _finite(value: Any) -> bool:
    """Whether every floating-point tensor in ``value`` (nested in tuples, lists, dicts)
    is finite."""
    if isinstance(value, torch.Tensor):
        return not value.is_floating_point() or bool(torch.isfinite(value).all())
    if isinstance(value, (tuple, list)):
        return all(_finite(v) for v in value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    return True
