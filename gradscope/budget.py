"""An overhead budget: measure gradscope's own time per step and space out the costly part.

Gradient norms and the non-finite check run on every recorded step.  Activation
statistics (and the other costly ones) run on one recorded step in ``interval``;
the interval is the smallest power of two whose predicted cost stays within the
budget, re-chosen after every step from measured times.  The summary
states the every-step floor: what the gradient checks alone cost.
"""

from __future__ import annotations

from dataclasses import dataclass

#: The longest gap between two activation measurements.
MAX_INTERVAL = 1024
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

    def __post_init__(self) -> None:
        if not 0 < self.fraction < 10:
            raise ValueError(
                f"budget must be a fraction of a training step, e.g. 0.03 for 3%, "
                f"got {self.fraction!r}."
            )

    def measures_activations(self, recorded: int) -> bool:
        """Whether the recorded step number ``recorded`` takes the costly statistics."""
        return recorded % self.interval == 0

    def observe(self, own: float, full: bool, now: float) -> None:
        """Account one recorded step: gradscope's own seconds, and the step's end time."""
        if full:
            self.own_full = _ema(self.own_full, own)
        else:
            self.own_light = _ema(self.own_light, own)
        if self.last_step_end is not None:
            plain = max(now - self.last_step_end - own, 1e-9)
            self.plain = _ema(self.plain, plain)
            self.total_own += own
            self.total_plain += plain
            self.steps += 1
        self.last_step_end = now
        self.interval = self._choose()

    def _choose(self) -> int:
        if self.plain is None or self.own_full is None:
            return self.interval
        light = self.own_light if self.own_light is not None else self.own_full / 4
        allowed = self.fraction * self.plain
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
        }
