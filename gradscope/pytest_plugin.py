"""pytest plugin: a ``gradscope`` fixture that watches models created in a test.

Registered through the ``pytest11`` entry point.  torch is imported only when the
fixture is used, so suites that never use gradscope start as fast as before.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest


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
