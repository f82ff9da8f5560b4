"""Cadences that follow measured cost: the ``budget=`` mode and the default's detail pacing.

:class:`StepMeter` is the measurement both share: gradscope's own time per recorded
step (smoothed, apart for detail and light steps), the plain step's time (the time
between two recorded steps, less gradscope's own), and the wall time of each kind of
step (the last few, for medians).

:class:`DetailCadence` paces the default's detail steps: the first :data:`AUTO_WARMUP`
recorded steps keep a fixed cadence (the first ten, then one in five), so a short run is
seen close to its end whatever its cost; from then on the detail steps are spaced so that
their measured extra wall time stays near :data:`AUTO_SHARE` of the training time, one in
10, 20, ... at most :data:`AUTO_MAX_INTERVAL` recorded steps.

The budget (``budget=0.03``, opt-in, :class:`Budget`):

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

import math
import statistics
from collections import deque
from dataclasses import dataclass, field

from gradscope.statistics import SHARE_OF

#: The longest gap between two activation measurements.
MAX_INTERVAL = 1024
#: The most steps between two recorded steps that a budget may choose.
MAX_RECORD_EVERY = 16
#: Weight of the newest measurement in the running averages.
SMOOTHING = 0.2


#: Recorded steps at the start that always take every statistic (every cadence but a budget).
WARMUP_RECORDS = 10
#: Recorded steps of the default cadence that keep a fixed pacing (1 in
#: :data:`AUTO_WARMUP_EVERY` after the first ten) before the detail steps follow their cost.
AUTO_WARMUP = 100
#: The default's pacing during the warm-up: denser than later, so that a short run (most
#: runs judged for a bug are 30-100 steps) is seen close to its end.
AUTO_WARMUP_EVERY = 5
#: The fixed pacing of the warm-up, and the step of the intervals chosen after it.
AUTO_BASE = 10
#: The share of training time the detail steps' measured extra time may take after it.
AUTO_SHARE = 0.03
#: The longest gap (recorded steps) between two detail steps of the default cadence.
AUTO_MAX_INTERVAL = 50
#: A detail step whose share of saturated or zero activations moved by this much (in
#: some module) since the last detail step makes the next :data:`SHIFT_DETAILS` recorded
#: steps detail steps too (default cadence only): the change is seen as it happens.
ACTIVITY_SHIFT = 0.25
#: How many recorded steps after such a shift take the detail statistics.
SHIFT_DETAILS = 4
#: A light step whose gradient norm is this many times the median of a recent block of
#: recorded steps also measures its update (see :class:`GradientJump`).
JUMP_FACTOR = 10.0
#: The recorded steps of a block that median is taken over.
JUMP_WINDOW = 8
#: Wall times kept per kind of step for the medians (detail steps are rare: fewer).
_LIGHT_WINDOW = 33
_DETAIL_WINDOW = 9


def _ema(old: float | None, new: float) -> float:
    return new if old is None else (1 - SMOOTHING) * old + SMOOTHING * new


@dataclass
class StepMeter:
    """What recorded steps cost: gradscope's own seconds per step (smoothed, detail and
    light steps apart), the plain step's seconds, and each kind's last wall times.

    A step's wall time runs from the end of the recorded step before it to its own end,
    divided by the training steps in between; it includes everything gradscope added
    (hook dispatch, module hooks put on and taken off, cache effects), which its own
    timers do not see.  :attr:`last_step_end` is reset on attaching (time spent detached
    is not a training step): to None for the budget, to the attach time for the detail
    cadence (so a loop that attaches per block of steps still times each block's first
    step, which may be its detail step).
    """

    own_full: float | None = None
    own_light: float | None = None
    plain: float | None = None
    total_own: float = 0.0
    total_plain: float = 0.0
    last_step_end: float | None = None
    steps: int = 0
    wall_full: deque = field(default_factory=lambda: deque(maxlen=_DETAIL_WINDOW))
    wall_light: deque = field(default_factory=lambda: deque(maxlen=_LIGHT_WINDOW))

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
        self.time(full, now, steps)

    def time(self, full: bool, now: float, steps: int = 1) -> None:
        """Only the wall time of a recorded step that ended at ``now`` (what the detail
        cadence needs, a few operations per step)."""
        last, self.last_step_end = self.last_step_end, now
        if last is not None:
            (self.wall_full if full else self.wall_light).append((now - last) / steps)

    def detail_extra(self) -> tuple[float, float] | None:
        """(extra seconds of a detail step, seconds of a light step): medians of the last
        wall times, or None before both kinds were timed."""
        if not self.wall_full or not self.wall_light:
            return None
        light = statistics.median(self.wall_light)
        return max(statistics.median(self.wall_full) - light, 0.0), light


@dataclass
class DetailCadence:
    """The default's detail steps: fixed for :data:`AUTO_WARMUP` recorded steps, then
    spaced by their measured cost (see the module docstring).  An explicit
    ``detail_every=`` never uses this."""

    meter: StepMeter = field(default_factory=StepMeter)
    interval: int = AUTO_WARMUP_EVERY
    last_detail: int = 0
    detail_steps: int = 0
    share: float = math.nan
    #: The last recorded step that an activity shift made a detail step (see
    #: :meth:`follow_shift`).
    shifted_until: int = -1
    #: Activity shifts seen (each made the next steps detail steps).
    shifts: int = 0

    def follow_shift(self, recorded: int, before: dict, after: dict) -> bool:
        """After detail step ``recorded``: when some module's share of saturated or zero
        activations moved by :data:`ACTIVITY_SHIFT` since the detail step before (``before``
        and ``after`` are their records' activation columns), the next
        :data:`SHIFT_DETAILS` recorded steps take the detail statistics too.  Units that
        saturate or die between two sparse detail steps are then measured as they do, not
        on one or two records (a run's second half may hold only four)."""
        if recorded <= self.shifted_until or activity_shift(before, after) < ACTIVITY_SHIFT:
            return False
        self.shifted_until = recorded + SHIFT_DETAILS
        self.shifts += 1
        return True

    def is_detail(self, recorded: int) -> bool:
        """Whether the recorded step number ``recorded`` takes the detail statistics."""
        if recorded <= self.shifted_until:
            return True
        if recorded <= AUTO_WARMUP:
            return recorded < WARMUP_RECORDS or recorded % AUTO_WARMUP_EVERY == 0
        return recorded - self.last_detail >= self.interval

    def observe(self, recorded: int, detail: bool, now: float, steps: int) -> None:
        """Account recorded step number ``recorded`` (it just ended at ``now``); after a
        detail step from the end of the warm-up on, choose the next interval."""
        self.meter.time(detail, now, steps)
        if not detail:
            return
        self.last_detail = recorded
        self.detail_steps += 1
        if recorded < AUTO_WARMUP:
            return
        measured = self.meter.detail_extra()
        if measured is None:
            return
        extra, light = measured
        self.share = extra / (self.interval * light) if light > 0 else math.nan
        needed = extra / (AUTO_SHARE * light) if light > 0 else float(AUTO_MAX_INTERVAL)
        steps_of_base = max(1, math.ceil(needed / AUTO_BASE))
        self.interval = min(AUTO_MAX_INTERVAL, AUTO_BASE * steps_of_base)

    def summary(self) -> dict[str, float]:
        """The interval in use, the detail steps so far and the last measured extra time."""
        measured = self.meter.detail_extra()
        return {
            "detail_interval": float(self.interval),
            "activity_shifts": float(self.shifts),
            "detail_auto": 1.0,
            "detail_steps": float(self.detail_steps),
            "detail_extra_s": measured[0] if measured else math.nan,
            "light_step_s": measured[1] if measured else math.nan,
        }


@dataclass
class GradientJump:
    """Spots the recorded steps whose gradient norm jumped :data:`JUMP_FACTOR` times above
    the median of a recent block of :data:`JUMP_WINDOW` steps: such a step also measures
    its update.

    A run that blows up late (a GAN whose players escalate, a learning rate raised
    mid-run) takes its few steps larger than the weights between two detail steps; the
    gradient norm, read on every step, shows them coming.  A healthy run rarely jumps
    10x, so this costs a copy of the weights on a handful of steps at most.  The median
    is taken once per block, so a step pays a comparison and an append.
    """

    block: list = field(default_factory=list)
    limit: float = math.inf
    jumps: int = 0

    def observe(self, size: float) -> bool:
        """Account one recorded step's gradient size; whether it jumped."""
        if not math.isfinite(size):
            return False
        jumped = size > self.limit
        block = self.block
        block.append(size)
        if len(block) == JUMP_WINDOW:
            self.limit = JUMP_FACTOR * sorted(block)[JUMP_WINDOW // 2]
            block.clear()
        self.jumps += jumped
        return jumped


@dataclass
class Budget(StepMeter):
    """Keeps gradscope's own time per step under ``fraction`` of a plain step."""

    fraction: float = 0.03
    interval: int = 1
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
        """Account one recorded step (see :meth:`StepMeter.observe`) and choose again."""
        super().observe(own, full, now, steps)
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


def activity_shift(before: dict, after: dict) -> float:
    """The largest change, over modules, of the share of saturated outputs
    (``saturated / sampled``) or of zero outputs (``zeros / zero_sampled``) between two
    detail records' activation columns (0 where either did not measure it)."""
    largest = 0.0
    for count, size in SHARE_OF.items():
        pairs = zip(before[count], before[size], after[count], after[size], strict=True)
        for c0, n0, c1, n1 in pairs:
            if n0 > 0 and n1 > 0 and c0 == c0 and c1 == c1:  # measured (not NaN) in both
                largest = max(largest, abs(c1 / n1 - c0 / n0))
    return largest
