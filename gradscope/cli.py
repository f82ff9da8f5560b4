"""The ``gradscope`` command line: demo, models, plugins, report (and check, see checkpoint.py).

Exit codes: 0 healthy, 1 findings at or above ``--fail-on``, 2 usage or input error.
"""

from __future__ import annotations

import contextlib
import copy
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import torch

from gradscope.config import parse_overrides
from gradscope.errors import GradscopeError, InputError
from gradscope.findings import SEVERITIES
from gradscope.judge import rejudge, validate_config
from gradscope.render import print_console, verdict
from gradscope.report import Report

LOSS_NAMES = ("cross_entropy", "nll", "mse", "l1", "smooth_l1", "bce", "bce_logits", "hinge")
OPTIMIZER_NAMES = ("sgd", "momentum", "adagrad", "rmsprop", "adam", "adamw")
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
    """Turn every error into one sentence and exit code 2; ``--debug`` shows tracebacks.

    Exit code 1 means "findings" and nothing else, so an unexpected exception must not
    escape as a traceback (Python's exit code 1).
    """
    try:
        yield
    except click.ClickException:
        raise
    except (GradscopeError, ValueError, TypeError, FileNotFoundError, KeyError) as exc:
        if debug:
            raise
        message = str(exc).strip().strip('"') or type(exc).__name__
        raise _Exit(plain(message.splitlines()[0] if message else message)) from exc
    except OSError as exc:
        if debug:
            raise
        where = f" ({_where(str(exc.filename))})" if exc.filename else ""
        raise _Exit(plain(f"{exc.strerror or exc}{where}.")) from exc
    except RecursionError as exc:
        if debug:
            raise
        raise _Exit("The input is nested too deeply to read (Python's recursion limit).") from exc
    except MemoryError as exc:
        if debug:
            raise
        raise _Exit("Ran out of memory; try a smaller --input-shape or batch.") from exc
    except Exception as exc:  # noqa: BLE001 - anything else is still one sentence, exit 2
        if debug:
            raise
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        raise _Exit(
            plain(
                f"gradscope failed unexpectedly ({type(exc).__name__}: {first}); "
                "rerun with --debug for the traceback."
            )
        ) from exc


_CONTROL = dict.fromkeys([*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0)])


def plain(text: object) -> str:
    """``text`` with control characters (ESC, CR, ...) shown as ``\\xNN`` escapes, so a
    name from a model or a file can never drive the terminal."""
    value = str(text)
    if not any(ord(ch) in _CONTROL for ch in value):
        return value
    return "".join(f"\\x{ord(ch):02x}" if ord(ch) in _CONTROL else ch for ch in value)


def safe(text: object) -> str:
    """``text`` ready for rich markup: control characters escaped, ``[...]`` printed as is."""
    from rich.markup import escape

    return escape(plain(text))


def terminal_safe(report: Report) -> Report:
    """A copy of ``report`` whose texts cannot drive the terminal: control characters in
    names, messages and code (ESC, CR, ...) become visible ``\\xNN`` escapes.  (Rich
    markup in them is escaped when printed.)"""
    from dataclasses import replace

    def lines(text: str) -> str:
        return "\n".join(plain(line) for line in text.split("\n"))

    findings = [
        replace(
            f,
            kind=plain(f.kind),
            layer=plain(f.layer) if f.layer else f.layer,
            message=lines(f.message),
            suggestions=[
                replace(s, kind=plain(s.kind), title=plain(s.title), why=lines(s.why),
                        code=lines(s.code))
                for s in f.suggestions
            ],
        )
        for f in report.findings
    ]
    history = report.history
    if history is not None:
        history = copy.copy(history)
        history.module_names = [plain(n) for n in history.module_names]
        history.module_types = [plain(t) for t in history.module_types]
    return replace(
        report,
        model_name=plain(report.model_name),
        findings=findings,
        history=history,
        notes=[lines(n) for n in report.notes],
        not_judged=[lines(n) for n in report.not_judged],
        plugin_errors=[{k: lines(str(v)) for k, v in e.items()} for e in report.plugin_errors],
    )


plot_option = click.option(
    "--plot", "plot_dir", type=click.Path(file_okay=False), help="Write plots here."
)
svg_option = click.option("--svg", is_flag=True, help="With --plot: write SVG next to each PNG.")
html_option = click.option(
    "--html",
    "html_file",
    type=click.Path(dir_okay=False),
    help="Write a self-contained HTML report here.",
)
fail_on_option = click.option(
    "--fail-on",
    type=click.Choice(SEVERITIES),
    default="error",
    show_default=True,
    help="Exit 1 when a finding is at least this severe.",
)
set_option = click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="PLUGIN.NAME=VALUE",
    help="Override a threshold, e.g. --set vanishing.depth_ratio=1e-4.",
)
debug_option = click.option(
    "--debug", is_flag=True, help="Show tracebacks instead of one-line errors."
)
try_fixes_option = click.option(
    "--try-fixes",
    is_flag=True,
    help="Train each suggested fix on a copy and judge it again (when no fix helps "
    "within the run's steps, every run is trained again four times as long).",
)


def _exit_code(report: Report, fail_on: str) -> int:
    """2 when a check did not run (never "healthy" unjudged), 1 for findings, else 0."""
    if report.not_judged:
        click.echo(plain(f"Error: not judged: {report.not_judged[0]}."), err=True)
        return EXIT_INPUT
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
@click.option(
    "--steps", type=int, default=None, help="Training steps for each model [default: the model's]."
)
@plot_option
@click.option(
    "--html",
    "html_file",
    type=click.Path(dir_okay=False),
    help="Write the faulty model's report as HTML here.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the faulty model's report as JSON.")
@click.option("--suggestions", default=3, show_default=True, help="Fixes shown per finding.")
@try_fixes_option
@debug_option
def demo(
    name: str,
    steps: int | None,
    plot_dir: str | None,
    html_file: str | None,
    as_json: bool,
    suggestions: int,
    try_fixes: bool,
    debug: bool,
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
        print_console(terminal_safe(result.faulty), console, suggestions=suggestions)
        console.print("")
        for label, curve in (("faulty", result.faulty_loss), ("fixed", result.fixed_loss)):
            if curve is None:
                continue
            model_name = result.spec.name if label == "faulty" else result.spec.fixed_by
            console.print(
                f"loss of {label} model {model_name}: {curve[0]:.4f} -> {curve[1]:.4f} "
                f"over {result.steps} steps"
            )
        if result.fixed is not None:
            console.print(
                f"fixed model ({result.spec.fix}): "
                + verdict(result.fixed)
            )
        if try_fixes:
            from gradscope.trials.cli import trial_for_demo

            console.print("")
            trial_for_demo(name, result.faulty, result.steps).print(console)
        _write_outputs(result.faulty, plot_dir, False, html_file, quiet=False)


@main.command()
@click.argument("checkpoint", type=click.Path(dir_okay=True))
@click.option("--model", "model_name", help="A reference model name (see `gradscope models`).")
@click.option("--model-factory", help="package.module:function that builds the model.")
@click.option("--input-shape", help="Shape of a synthetic input batch, e.g. 8,1,28,28.")
@click.option(
    "--batch",
    "batch_file",
    type=click.Path(dir_okay=False),
    help="A torch.save'd (input, target) pair to train on instead of synthetic data.",
)
@click.option("--loss", type=click.Choice(sorted(LOSS_NAMES)), help="Loss to train with.")
@click.option("--steps", default=20, show_default=True, help="Instrumented training steps.")
@click.option("--lr", default=0.01, show_default=True, help="Learning rate.")
@click.option(
    "--optimizer", type=click.Choice(sorted(OPTIMIZER_NAMES)), default="sgd", show_default=True
)
@click.option(
    "--target", "target_spec", help="Synthetic target: a class count (e.g. 10) or a shape (8,1)."
)
@plot_option
@svg_option
@html_option
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@fail_on_option
@set_option
@try_fixes_option
@click.option(
    "--save-fixed",
    type=click.Path(dir_okay=False),
    help="With --try-fixes: write the best variant's state_dict here (safetensors).",
)
@click.option(
    "--unsafe-load",
    is_flag=True,
    help="Allow checkpoints that run code when loaded: pickles of arbitrary objects, "
    "TorchScript and torch.export (.pt2) programs. This EXECUTES code from the file: only "
    "for files you trust.",
)
@debug_option
def check(
    checkpoint: str,
    model_name: str | None,
    model_factory: str | None,
    input_shape: str | None,
    batch_file: str | None,
    loss: str | None,
    steps: int,
    lr: float,
    optimizer: str,
    target_spec: str | None,
    plot_dir: str | None,
    svg: bool,
    html_file: str | None,
    as_json: bool,
    fail_on: str,
    overrides: tuple[str, ...],
    try_fixes: bool,
    save_fixed: str | None,
    unsafe_load: bool,
    debug: bool,
) -> None:
    """Diagnose a checkpoint: load it, train a copy for a few steps, report the findings.

    CHECKPOINT is a state_dict (.pt/.pth, also nested under state_dict/model/
    model_state_dict, with Lightning/DDP prefixes stripped), a .safetensors file,
    a TorchScript file or a torch.export program (.pt2). The last two carry their
    architecture; weights alone need --model or --model-factory.
    Weights (state_dicts, safetensors) load without running code; pickled objects,
    TorchScript and torch.export programs run code, so they need --unsafe-load.

    \b
    Examples:
      gradscope check cnn.pt --model cnn
      gradscope check weights.safetensors --model-factory mypkg.nets:build --input-shape 8,3,32,32
      gradscope check scripted.pt --unsafe-load --input-shape 16,10 --loss mse --fail-on warning
      gradscope check cnn.pt --model cnn --try-fixes --save-fixed fixed.safetensors
    """
    from gradscope.check import CheckOptions, parse_shape

    _set_threads()
    with _friendly_errors(debug):
        options = CheckOptions(
            checkpoint=Path(checkpoint),
            model=model_name,
            model_factory=model_factory,
            input_shape=parse_shape(input_shape) if input_shape else None,
            batch=Path(batch_file) if batch_file else None,
            loss=loss,
            steps=steps,
            lr=lr,
            optimizer=optimizer,
            unsafe_load=unsafe_load,
            config=_overrides(overrides),
            target=target_spec,
        )
        if steps < 1:
            raise ValueError(f"--steps must be at least 1, got {steps}.")
        if save_fixed and not try_fixes:
            raise ValueError("--save-fixed needs --try-fixes.")
        result, trial = _check_and_trial(options, try_fixes)
        if as_json:
            data = result.to_dict()
            if trial is not None:
                data["trial"] = trial.to_dict()
            click.echo(json.dumps(data, indent=2))
        else:
            print_console(terminal_safe(result), _console(), suggestions=2)
        if trial is not None:
            from gradscope.trials.cli import show_trial

            show_trial(trial, _console(), save_fixed, as_json)
        _write_outputs(result, plot_dir, svg, html_file, quiet=as_json)
    sys.exit(_exit_code(result, fail_on))


def _check_and_trial(options: Any, try_fixes: bool) -> tuple[Report, Any]:
    """Run the check under its progress bar, then (with ``try_fixes``) the trial under
    its own: rich shows one live display at a time."""
    from gradscope.check import run_check

    with _progress_bar(options.steps) as advance:
        if not try_fixes:
            return run_check(options, progress=advance), None
        from gradscope.trials.cli import check_for_trial, trial_for_check

        result, prepared, pristine = check_for_trial(options, advance)
    return result, trial_for_check(pristine, prepared, result, options.steps)


def _overrides(pairs: tuple[str, ...]) -> dict[str, dict[str, float]]:
    """The --set overrides, parsed and validated before anything loads or trains."""
    config = parse_overrides(list(pairs))
    validate_config(config)
    return config


def _write_outputs(
    report: Report, plot_dir: str | None, svg: bool, html_file: str | None, quiet: bool
) -> None:
    """Plots and HTML as asked; each written path is named (on stderr with --json).

    A place that cannot be written is one sentence (exit 2), never a traceback or a
    silently missing file.
    """
    if plot_dir:
        before = len(report.plugin_errors)
        try:
            written = report.plot(plot_dir, formats=("png", "svg") if svg else ("png",))
        except OSError as exc:
            raise InputError(f"Cannot write plots to {_where(plot_dir)}: {_reason(exc)}.") from exc
        for path in written:
            click.echo(f"wrote {plain(path)}", err=quiet)
        failed = [e for e in report.plugin_errors[before:] if e.get("hook") == "gradscope_render"]
        if failed:
            raise InputError(
                f"Plots in {_where(plot_dir)} were not all written: plugin "
                f"{failed[0]['plugin']} failed ({failed[0]['error']})."
            )
    if html_file:
        try:
            written_html = report.save_html(html_file)
        except OSError as exc:
            raise InputError(
                f"Cannot write the HTML report to {_where(html_file)}: {_reason(exc)}."
            ) from exc
        click.echo(f"wrote {plain(written_html)}", err=quiet)


def _where(path: str) -> str:
    text = plain(path)
    return text if len(text) <= 100 else f"{text[:50]}...{text[-30:]}"


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__


@contextlib.contextmanager
def _progress_bar(total: int) -> Iterator[Any]:
    """A progress bar on stderr when it is a terminal; silent otherwise."""
    from rich.console import Console
    from rich.progress import Progress

    console = Console(stderr=True)
    with Progress(console=console, transient=True, disable=not console.is_terminal) as bar:
        task = bar.add_task("training", total=total)
        yield lambda step: bar.update(task, completed=step + 1)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def models(as_json: bool) -> None:
    """List the reference models and faulty twins (including those added by plugins).

    \b
    Example:
      gradscope models
    """
    from gradscope.reference import available_specs

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
@plot_option
@svg_option
@html_option
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON again.")
@set_option
@fail_on_option
@debug_option
def report(
    run_json: str,
    plot_dir: str | None,
    svg: bool,
    html_file: str | None,
    as_json: bool,
    overrides: tuple[str, ...],
    fail_on: str,
    debug: bool,
) -> None:
    """Show, re-render, or judge again a report saved with `--json` or report.to_json().

    With --set, the saved statistics are judged again with those thresholds (the
    report's own overrides are kept unless --set replaces them).

    \b
    Examples:
      gradscope report run.json --plot plots/ --html run.html
      gradscope report run.json --set vanishing.depth_ratio=1e-4
    """
    with _friendly_errors(debug):
        path = Path(run_json)
        if not path.exists():
            raise FileNotFoundError(f"No such report file: {path}.")
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"Cannot read report file {_where(run_json)}: {exc}.") from exc
        try:
            loaded = Report.from_json(text)
        except RecursionError as exc:
            raise InputError(
                f"{_where(run_json)} is nested too deeply to be a gradscope report."
            ) from exc
        if overrides:
            loaded = rejudge(loaded, parse_overrides(list(overrides)))
        if as_json:
            click.echo(loaded.to_json())
        else:
            print_console(terminal_safe(loaded), _console())
        _write_outputs(loaded, plot_dir, svg, html_file, quiet=as_json)
    sys.exit(_exit_code(loaded, fail_on))


def _set_threads() -> None:
    # Small models run faster and steadier on one thread of a shared CPU.
    if torch.get_num_threads() > 1 and not torch.cuda.is_available():
        torch.set_num_threads(1)


if __name__ == "__main__":  # pragma: no cover
    main()
