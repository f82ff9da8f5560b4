"""An overhead budget: measure gradscope's own time per step and space out the costly part.

Gradient norms and the non-finite check run on every recorded step.  Activation
statistics (and the other costly ones) run on one recorded step in ``interval``;
the interval is the smallest power of two whose predicted cost stays within the
budget, re-chosen after every step from measured times.

If the every-step gradient checks alone cost more than the budget (a small model
whose step takes a few milliseconds), the budget wins: one step in ``record_every``
is recorded (a power of two, at most :data:`MAX_RECORD_EVERY`), and the summary
says so.  A NaN on a skipped step is then seen on the next recorded one.
"""

from __future__ import annotations

from dataclasses import dataclass

#: The longest gap between two activation measurements.
MAX_INTERVAL = 1024
#: The most steps between two recorded steps that a budget may choose.
MAX_RECORD_EVERY = 16
#: Weight of the newest measurement in the running averages.
SMOOTHING = 0.2


def _ema(old: float | None, new: float) -> float:
    return new if old is None else (1 - SMOOTHING) * old + SMOOTHING * new


@dataclass
class Budget:
    """Keeps gradscope's own time per step under ``fraction`` of a plain step."""

    fraction: float
    interval: int = 1
    own_full: float | None = None
    own_light: float | None = None
    plain: float | None = None
    total_own: float = 0.0
    total_plain: float = 0.0
    last_step_end: float | None = None
    steps: int = 0
    record_every: int = 1

    def __post_init__(self) -> None:
        if not 0 < self.fraction < 10:
            raise ValueError(
                f"budget must be a fraction of a training step, e.g. 0.03 for 3%, "
                f"got {self.fraction!r}."
            )

    def measures_activations(self, recorded: int) -> bool:
        """Whether the recorded step number ``recorded`` takes the costly statistics."""
        return recorded % self.interval == 0

    def observe(self, own: float, full: bool, now: float, steps: int = 1) -> None:
        """Account one recorded step: gradscope's own seconds, the step's end time, and how
        many training steps passed since the last recorded one."""
        if full:
            self.own_full = _ema(self.own_full, own)
        else:
            self.own_light = _ema(self.own_light, own)
        if self.last_step_end is not None:
            plain = max(now - self.last_step_end - own, 1e-9)
            self.plain = _ema(self.plain, plain / max(steps, 1))
            self.total_own += own
            self.total_plain += plain
            self.steps += 1
        self.last_step_end = now
        self.record_every = self._choose_record_every()
        self.interval = self._choose()

    def _choose_record_every(self) -> int:
        if self.plain is None or self.own_light is None:
            return self.record_every
        k = 1
        while k < MAX_RECORD_EVERY and self.own_light / k > self.fraction * self.plain:
            k *= 2
        return max(k, self.record_every)  # never back: no flip-flopping

    def _choose(self) -> int:
        if self.plain is None or self.own_full is None:
            return self.interval
        light = self.own_light if self.own_light is not None else self.own_full / 4
        allowed = self.fraction * self.plain * self.record_every
        k = 1
        while k < MAX_INTERVAL and (self.own_full + (k - 1) * light) / k > allowed:
            k *= 2
        return k

    def summary(self) -> dict[str, float]:
        """The budget, the overhead measured so far and the interval it settled on."""
        floor = self.own_light / self.plain if self.own_light and self.plain else 0.0
        return {
            "budget": self.fraction,
            "measured_overhead": self.total_own / self.total_plain if self.total_plain else 0.0,
            "activation_interval": float(self.interval),
            "budget_steps": float(self.steps),
            "every_step_overhead": floor,
            "record_every": float(self.record_every),
        }
