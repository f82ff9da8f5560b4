"""What `gradscope check/demo --try-fixes` run: the trial for a checkpoint or a twin."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from gradscope.report import Report
from gradscope.trials.report import TrialReport
from gradscope.trials.session import trial


def check_for_trial(options: Any, progress: Any) -> tuple[Report, Any, torch.nn.Module]:
    """`gradscope check`, keeping what the trial needs: the report, the prepared check
    and the model as it was loaded (before check trained it)."""
    import copy

    from gradscope.check import prepare_check, run_check

    prepared = prepare_check(options)
    pristine = copy.deepcopy(prepared.model)
    report = run_check(options, progress=progress, prepared=prepared)
    return report, prepared, pristine


@contextlib.contextmanager
def trial_bar() -> Iterator[Any]:
    """A progress bar for the trial's runs on stderr when it is a terminal (silent
    otherwise), as ``trial``'s ``progress`` callback."""
    from rich.console import Console
    from rich.progress import Progress

    console = Console(stderr=True)
    with Progress(console=console, transient=True, disable=not console.is_terminal) as bar:
        task = bar.add_task("trying fixes", total=None)

        def update(done: int, total: int, label: str) -> None:
            bar.update(task, completed=done, total=total, description=f"trying fixes: {label}")

        yield update


def show_trial(result: TrialReport, console: Any, save_to: str | None, quiet: bool) -> None:
    """The table (unless ``quiet``: JSON was printed), then ``--save-fixed``'s file."""
    import click

    if not quiet:
        result.print(console)
    if save_to:
        for line in save_fixed(result, save_to):
            click.echo(line, err=quiet)


def trial_for_check(
    pristine: torch.nn.Module, prepared: Any, report: Report, steps: int
) -> TrialReport:
    """Trial on the checkpoint's model as loaded, with check's batch, loss and optimizer."""
    with trial_bar() as progress:
        result = trial(
            pristine,
            (prepared.x, prepared.y),
            prepared.loss_fn,
            report,
            steps=steps,
            progress=progress,
        )
    result.attach(report)
    return result


def trial_for_demo(name: str, report: Report, steps: int) -> TrialReport:
    """Trial on a fresh twin ``name``, seeded and fed exactly as the demo trained it."""
    from gradscope.reference import get_spec

    spec = get_spec(name)
    torch.manual_seed(0)
    model = spec.factory()
    batches = [spec.example_batch(seed=k) for k in range(min(steps, spec.distinct_batches))]
    with trial_bar() as progress:
        result = trial(
            model,
            batches,
            spec.loss_fn,
            report,
            steps=steps,
            train_step=spec.step,
            progress=progress,
        )
    result.attach(report)
    return result


def save_fixed(result: TrialReport, path: str | Path) -> list[str]:
    """Write the best variant's trained state_dict as safetensors; lines saying what changed.

    Returns the lines to print; nothing is written when no fix helps.
    """
    best = result.best
    if best is None or result.best_model is None:
        return ["no fix helps: nothing saved"]
    from safetensors.torch import save_model

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_model(result.best_model, str(path))
    lines = [
        f"wrote {path}: the weights after {result.steps} steps of the best variant "
        f"({best.kind}: {best.change})"
    ]
    if best.layers:
        lines.append(f"  layers changed: {', '.join(best.layers)}")
    else:
        lines.append("  the change is in the training loop or optimizer, not the layers")
    return lines
