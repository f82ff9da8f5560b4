"""pytest plugin: gradient health in a model's test suite.

- the ``gradscope`` fixture: ``scope = gradscope(model, optimizer)``; hooks go at teardown;
- the marker ``@pytest.mark.gradscope(fail_on="warning", ignore=[...])``: every scope the
  fixture made in that test is judged after the test body, and findings fail the test;
- ``--gradscope-report DIR``: for each failing test, the reports it produced are written
  to DIR as JSON and a dashboard PNG (a CI artifact a person can look at);
- ``--gradscope-update-snapshots``: rewrite the profiles of ``assert_gradient_profile``.

Registered through the ``pytest11`` entry point.  torch is imported only when a test
uses gradscope, so suites that never do start as fast as before.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

MARKER_HELP = (
    "gradscope(fail_on='warning', ignore=[]): fail the test when a model watched through "
    "the gradscope fixture shows findings at or above fail_on (ignore: kinds or layers)"
)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("gradscope", "gradient health checks")
    group.addoption(
        "--gradscope-report",
        metavar="DIR",
        default=None,
        help="write the gradscope reports (JSON + dashboard PNG) of failing tests to DIR",
    )
    group.addoption(
        "--gradscope-update-snapshots",
        action="store_true",
        default=False,
        help="store the current gradient profiles as the new snapshots",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER_HELP)
    from gradscope import testing_state

    testing_state.configure(
        update_snapshots=config.getoption("--gradscope-update-snapshots"),
        rootpath=config.rootpath,
    )


class ScopeFactory:
    """Creates scopes for models in a test and detaches them all at teardown."""

    def __init__(self) -> None:
        self.scopes: list[Any] = []

    def __call__(self, model: Any, optimizer: Any = None, **options: Any) -> Any:
        """``gradscope(model, optimizer)`` -> an attached Scope."""
        from gradscope.scope import watch

        scope = watch(model, optimizer=optimizer, **options)
        self.scopes.append(scope)
        return scope

    def reports(self) -> list[Any]:
        """A report of every scope this test made."""
        return [scope.report() for scope in self.scopes]

    def close(self) -> None:
        """Remove every hook the test's scopes registered."""
        for scope in self.scopes:
            scope.detach()


@pytest.fixture
def gradscope() -> Iterator[ScopeFactory]:
    """A scope factory: ``scope = gradscope(model, optimizer)``; hooks go at teardown."""
    factory = ScopeFactory()
    try:
        yield factory
    finally:
        factory.close()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # A marked test gets the fixture even when it does not ask for it by name.
    for item in items:
        if item.get_closest_marker("gradscope") and "gradscope" not in getattr(
            item, "fixturenames", ["gradscope"]
        ):
            item.fixturenames.append("gradscope")  # type: ignore[attr-defined]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    from gradscope import testing_state

    testing_state.start_test()
    result = yield
    marker = item.get_closest_marker("gradscope")
    factory = getattr(item, "funcargs", {}).get("gradscope")
    if marker is not None and isinstance(factory, ScopeFactory):
        from gradscope.testing import check_report

        __tracebackhide__ = True
        for report in factory.reports():
            testing_state.remember(report)
            check_report(
                report,
                ignore=marker.kwargs.get("ignore", ()),
                fail_on=marker.kwargs.get("fail_on", "warning"),
            )
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[Any]:
    report = yield
    outdir = item.config.getoption("--gradscope-report")
    if outdir and call.when == "call" and report.failed:
        _write_reports(item, Path(outdir))
    return report


def _write_reports(item: pytest.Item, outdir: Path) -> None:
    from gradscope import testing_state

    reports = list(testing_state.current_reports())
    factory = getattr(item, "funcargs", {}).get("gradscope")
    if isinstance(factory, ScopeFactory) and not reports:
        reports = factory.reports()
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", item.nodeid).strip("_")
    for k, report in enumerate(reports):
        target = outdir / (safe if len(reports) == 1 else f"{safe}_{k}")
        target.mkdir(parents=True, exist_ok=True)
        (target / "report.json").write_text(report.to_json())
        report.plot(target)
