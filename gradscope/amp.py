"""GradScaler: notice the optimizer steps the scaler skipped because gradients overflowed.

``scaler.step(opt)`` does not call ``opt.step()`` when the unscaled gradients hold an
Inf/NaN, so the optimizer's step hooks never fire on such a step.  :class:`SkipCounter`
wraps ``scaler.update()`` on the scaler instance while the scope is attached (restored
on detach): just before the real update it reads the scaler's own found-inf flags for
the watched optimizer and calls back when the step was skipped.

A skip is normal with float16 (the scale starts high and is lowered until the gradients
fit), so skips are reported as a note, not a model fault, **unless they persist**:
:data:`PERSISTENT_SKIPS` skips in a row once the scale is at or below torch's default
starting scale (a scaler started at 2**40 backs off through 20 and more skips while
healthy), or a skip at a scale of 1 or below (the gradients overflow without any
scaling, so the model itself makes the Inf/NaN).  From then on, skipped steps are
recorded like any other step so the non-finite detector sees them (and names the module
that made the NaN).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

#: Skipped steps in a row after which overflow counts as the model's fault...
PERSISTENT_SKIPS = 20
#: ...once the scale is at or below this (``torch.amp.GradScaler``'s default ``init_scale``):
#: above it the scaler is still backing off from a start chosen higher.
BACKED_OFF_SCALE = 2.0**16


class SkipCounter:
    """Counts the steps ``scaler`` skipped for ``optimizer``; calls ``on_skip(persistent)``."""

    def __init__(
        self, scaler: Any, optimizer: torch.optim.Optimizer, on_skip: Callable[[bool], None]
    ) -> None:
        self.scaler = scaler
        self.optimizer = optimizer
        self.on_skip = on_skip
        self.skipped = 0
        self.in_a_row = 0
        self.longest_run = 0
        self.first_skip: int | None = None
        self.persistent_from: int | None = None
        #: The first step of the unbroken run of skips that became persistent.
        self.overflow_from: int | None = None
        self.steps_seen = 0
        #: Skips whose loss was already NaN/Inf: the forward made it, not the scaling.
        self.model_faults = 0
        self._patched = False

    @classmethod
    def for_scope(
        cls, scaler: Any, optimizer: torch.optim.Optimizer | None, on_skip: Callable[[bool], None]
    ) -> SkipCounter | None:
        """A counter when a scope has both a scaler and an optimizer, else None."""
        if scaler is None or optimizer is None:
            return None
        return cls(scaler, optimizer, on_skip)

    def attach(self) -> None:
        """Wrap ``scaler.update`` on this instance (a no-op for a disabled scaler)."""
        if self._patched or not self.scaler.is_enabled():
            return
        original = type(self.scaler).update.__get__(self.scaler)

        def update(new_scale: Any = None) -> None:
            self._before_update()
            original(new_scale)

        self.scaler.update = update
        self._patched = True

    def detach(self) -> None:
        """Put the scaler's own ``update`` back."""
        if self._patched:
            self.scaler.__dict__.pop("update", None)
            self._patched = False

    def _before_update(self) -> None:
        state = self.scaler._per_optimizer_states.get(id(self.optimizer))
        found = state.get("found_inf_per_device") if state else None
        if not found:
            return  # scaler.step() was not called for this optimizer since the last update
        self.steps_seen += 1
        if not sum(float(v.item()) for v in found.values()):
            self.in_a_row = 0
            return
        self.skipped += 1
        self.in_a_row += 1
        self.longest_run = max(self.longest_run, self.in_a_row)
        step = self.steps_seen - 1
        if self.first_skip is None:
            self.first_skip = step
        scale = float(self.scaler.get_scale())
        persistent = scale <= 1.0 or (
            self.in_a_row >= PERSISTENT_SKIPS and scale <= BACKED_OFF_SCALE
        )
        if persistent and self.persistent_from is None:
            self.persistent_from = step
            self.overflow_from = step - self.in_a_row + 1  # the run of skips it ends
        self.on_skip(persistent)

    def blame_model(self) -> None:
        """The last skip's loss was NaN/Inf: a model fault, judged like one (see notes)."""
        self.model_faults += 1

    def notes(self) -> list[str]:
        """One sentence for the report when the scaler skipped any step."""
        if not self.skipped:
            return []
        if self.persistent_from is not None:
            return [
                f"overflow skipped by the scaler on {self.skipped} of {self.steps_seen} steps "
                f"and persisting from step {self.persistent_from} ({PERSISTENT_SKIPS} skips in "
                "a row at a scale of 65536 or below, or a skip at scale <= 1): the gradients "
                "are NaN/Inf without any scaling, so those steps are judged as model faults"
            ]
        faults = (
            f"; on {self.model_faults} of them the loss itself was NaN/Inf, which no scaling "
            "makes: the forward made it, and those steps are judged as model faults"
            if self.model_faults
            else ""
        )
        if self.model_faults == self.skipped:
            return [
                f"the scaler skipped {self.skipped} of {self.steps_seen} steps (first at step "
                f"{self.first_skip}) whose loss itself was NaN/Inf, which no scaling makes: "
                "the forward made it, and those steps are judged as model faults"
            ]
        return [
            f"overflow skipped by the scaler on {self.skipped} of {self.steps_seen} steps "
            f"(first at step {self.first_skip}, at most {self.longest_run} in a row): the "
            "scaler lowered its scale and training went on, which is normal with float16 "
            f"and not a model fault{faults}"
        ]
