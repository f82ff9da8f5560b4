"""`gradscope demo`: train a faulty twin, diagnose it, then train its fix and compare."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gradscope.errors import InputError
from gradscope.models import ModelSpec
from gradscope.reference import available_specs, get_spec
from gradscope.report import Report
from gradscope.scope import watch


@dataclass
class DemoResult:
    """Reports and (start, end) losses of the faulty model and of its fix."""

    spec: ModelSpec
    faulty: Report
    faulty_loss: tuple[float, float] | None
    fixed: Report | None
    fixed_loss: tuple[float, float] | None
    steps: int = 0


def train_spec(spec: ModelSpec, steps: int, seed: int = 0, name: str | None = None) -> Report:
    """Train a fresh, seeded model of ``spec`` for ``steps`` steps under gradscope."""
    torch.manual_seed(seed)
    model = spec.factory()
    optimizer = spec.optimizer(model.parameters())
    batches = [
        spec.example_batch(seed=seed * 100_000 + k)
        for k in range(min(steps, spec.distinct_batches))
    ]
    step = spec.train_step()
    model.train()
    with watch(model, optimizer=optimizer, name=name or spec.name, detail_every=1) as scope:
        for k in range(steps):
            step(model, batches[k % len(batches)], optimizer, scope)
    return scope.report()


def _loss_ends(report: Report) -> tuple[float, float] | None:
    if report.history is None:
        return None
    losses = report.history.losses()
    if losses.numel() == 0:
        return None
    return float(losses[0]), float(losses[-1])


def run_demo(name: str, steps: int | None = None) -> DemoResult:
    """Run the faulty twin ``name`` and its fix, each for ``steps`` (default: the spec's)."""
    spec = get_spec(name)
    if spec.fixed_by is None:
        twins = sorted(n for n, s in available_specs().items() if s.fixed_by)
        raise InputError(
            f"{name!r} is a healthy reference model; demo takes a faulty twin: {', '.join(twins)}."
        )
    steps = steps if steps is not None else spec.demo_steps
    if steps < 2:
        raise InputError(f"--steps must be at least 2 to compare losses, got {steps}.")
    faulty = train_spec(spec, steps)
    fixed_spec = get_spec(spec.fixed_by)
    fixed = train_spec(fixed_spec, steps)
    return DemoResult(spec, faulty, _loss_ends(faulty), fixed, _loss_ends(fixed), steps)
