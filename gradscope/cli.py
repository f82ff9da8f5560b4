"""The ``gradscope`` command line: demo, models, plugins, report (and check, see checkpoint.py).

Exit codes: 0 healthy, 1 findings at or above ``--fail-on``, 2 usage or input error.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import torch

from gradscope.errors import GradscopeError
from gradscope.report import SEVERITIES, Report

EXIT_FINDINGS = 1
EXIT_INPUT = 2


class _Exit(click.ClickException):
    """A one-sentence error with exit code 2."""

    exit_code = EXIT_INPUT

    def show(self, file: Any = None) -> None:
        click.echo(f"Error: {self.message}", err=True)


def _console(no_color: bool = False) -> Any:
    from rich.console import Console

    # Off a terminal, a wide page keeps tables whole and code lines pasteable.
    width = None if sys.stdout.isatty() else 160
    return Console(highlight=False, no_color=no_color or None, soft_wrap=True, width=width)


@contextlib.contextmanager
def _friendly_errors(debug: bool) -> Iterator[None]:
    """Turn expected errors into one sentence and exit code 2; ``--debug`` shows tracebacks."""
    try:
        yield
    except (GradscopeError, ValueError, TypeError, FileNotFoundError, KeyError) as exc:
        if debug:
            raise
        message = str(exc).strip().strip('"') or type(exc).__name__
        raise _Exit(message) from exc


def print_report(report: Report, console: Any, suggestions: int = 1) -> None:
    """The findings as a table, then each finding's message and top fixes."""
    from rich.table import Table

    colours = {"error": "bold red", "warning": "yellow", "info": "cyan"}
    verdict = "healthy" if not report.findings else report._verdict()
    types = (
        dict(zip(report.history.module_names, report.history.module_types, strict=True))
        if report.history is not None
        else {}
    )
    console.print(f"[bold]gradscope[/bold] report for [bold]{report.model_name}[/bold]: {verdict}")
    for note in report.notes:
        console.print(f"  note: {note}")
    if report.overhead.get("seconds_per_step"):
        console.print(
            f"  {int(report.overhead.get('recorded_steps', 0))} recorded steps, "
            f"gradscope's own time {report.overhead['seconds_per_step'] * 1e3:.2f} ms per step"
        )
    if report.findings:
        table = Table(show_lines=False)
        for column in ("severity", "finding", "layer", "step", "top fix"):
            table.add_column(column)
        for f in report.findings:
            table.add_row(
                f"[{colours[f.severity]}]{f.severity}[/]",
                f.kind,
                f"{f.layer} ({types[f.layer]})" if f.layer in types else (f.layer or "-"),
                str(f.step) if f.step is not None else "-",
                f.suggestions[0].kind if f.suggestions else "-",
            )
        console.print(table)
    for f in report.findings:
        console.print(f"\n[{colours[f.severity]}]{f.kind}[/] in [bold]{f.layer or '-'}[/]")
        console.print(f"  {f.message}", markup=False)
        for s in f.suggestions[:suggestions]:
            console.print(f"  [green]fix ({s.kind})[/]: {s.title}")
            console.print(f"  why: {s.why}", markup=False)
            for line in s.code.splitlines():
                console.print(f"      {line}", markup=False)
    for err in report.plugin_errors:
        console.print(
            f"[red]plugin {err['plugin']} failed in {err['hook']} and was disabled:[/] "
            f"{err['error']}",
            markup=True,
        )


def _exit_code(report: Report, fail_on: str) -> int:
    return EXIT_FINDINGS if report.at_least(fail_on) else 0


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="gradscope")
def main() -> None:
    """Find out why a PyTorch model is not training, layer by layer, and what to change.

    \b
    Examples:
      gradscope demo deep_sigmoid_mlp      # see a vanishing gradient found and fixed
      gradscope check model.pt --model cnn # diagnose a checkpoint
      gradscope models                     # the built-in reference models
    """


@main.command()
@click.argument("name")
@click.option("--steps", default=40, show_default=True, help="Training steps for each model.")
@click.option("--plot", "plot_dir", type=click.Path(file_okay=False), help="Write plots here.")
@click.option("--json", "as_json", is_flag=True, help="Print the faulty model's report as JSON.")
@click.option("--suggestions", default=3, show_default=True, help="Fixes shown per finding.")
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
def demo(
    name: str, steps: int, plot_dir: str | None, as_json: bool, suggestions: int, debug: bool
) -> None:
    """Train a faulty reference model, show what gradscope finds, then train its fix.

    NAME is a faulty twin from `gradscope models` (for example deep_sigmoid_mlp).
    Both runs are seeded; the loss at the start and end of each shows whether the fix
    works.

    \b
    Example:
      gradscope demo deep_sigmoid_mlp --plot out/
    """
    from gradscope.demo import run_demo

    _set_threads()
    with _friendly_errors(debug):
        result = run_demo(name, steps=steps)
        if as_json:
            click.echo(result.faulty.to_json())
            return
        console = _console()
        print_report(result.faulty, console, suggestions=suggestions)
        console.print("")
        for label, curve in (("faulty", result.faulty_loss), ("fixed", result.fixed_loss)):
            if curve is None:
                continue
            model_name = result.spec.name if label == "faulty" else result.spec.fixed_by
            console.print(
                f"loss of {label} model {model_name}: {curve[0]:.4f} -> {curve[1]:.4f} "
                f"over {steps} steps"
            )
        if result.fixed is not None:
            console.print(
                f"fixed model ({result.spec.fix}): "
                + ("healthy" if not result.fixed.findings else result.fixed._verdict())
            )
        if plot_dir:
            paths = result.faulty.plot(plot_dir)
            for path in paths:
                console.print(f"wrote {path}")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def models(as_json: bool) -> None:
    """List the reference models and faulty twins (including those added by plugins).

    \b
    Example:
      gradscope models
    """
    from gradscope.models import available_specs

    specs = available_specs()
    rows = [
        {
            "name": spec.name,
            "input_shape": list(spec.input_shape()),
            "loss": spec.loss_name,
            "problem": spec.problem,
            "fixed_by": spec.fixed_by,
            "task": spec.task,
        }
        for spec in specs.values()
    ]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    from rich.table import Table

    table = Table()
    for column in ("name", "input", "loss", "shows", "fixed by", "task"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            row["name"],
            "x".join(str(d) for d in row["input_shape"]),
            row["loss"],
            row["problem"] or "-",
            row["fixed_by"] or "-",
            row["task"],
        )
    _console().print(table)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def plugins(as_json: bool) -> None:
    """List the loaded plugins, where each came from and the hooks it implements.

    GRADSCOPE_PLUGINS=name1,name2 limits what loads; an empty value loads none.

    \b
    Example:
      GRADSCOPE_PLUGINS=vanishing gradscope plugins
    """
    from gradscope.plugins import list_plugins

    infos = list_plugins()
    if as_json:
        click.echo(json.dumps([info.__dict__ for info in infos], indent=2))
        return
    if not infos:
        click.echo("no plugins loaded (GRADSCOPE_PLUGINS is set to an empty list?)")
    for info in infos:
        click.echo(f"{info.name}  [{info.source}]")
        click.echo(f"    hooks: {', '.join(info.hooks)}")


@main.command()
@click.argument("run_json", type=click.Path(dir_okay=False))
@click.option("--plot", "plot_dir", type=click.Path(file_okay=False), help="Write plots here.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON again.")
@click.option(
    "--fail-on",
    type=click.Choice(SEVERITIES),
    default="error",
    show_default=True,
    help="Exit 1 when a finding is at least this severe.",
)
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
def report(run_json: str, plot_dir: str | None, as_json: bool, fail_on: str, debug: bool) -> None:
    """Show (and re-render) a report saved with `--json` or report.to_json().

    \b
    Example:
      gradscope report run.json --plot plots/
    """
    with _friendly_errors(debug):
        path = Path(run_json)
        if not path.exists():
            raise FileNotFoundError(f"No such report file: {path}.")
        loaded = Report.from_json(path.read_text())
        if as_json:
            click.echo(loaded.to_json())
        else:
            print_report(loaded, _console())
        if plot_dir:
            for written in loaded.plot(plot_dir):
                click.echo(f"wrote {written}")
    sys.exit(_exit_code(loaded, fail_on))


def _set_threads() -> None:
    # Small models run faster and steadier on one thread of a shared CPU.
    if torch.get_num_threads() > 1 and not torch.cuda.is_available():
        torch.set_num_threads(1)


if __name__ == "__main__":  # pragma: no cover
    main()
