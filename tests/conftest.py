"""Shared fixtures: one thread, seeded torch, a fresh plugin manager per test."""

from __future__ import annotations

import pytest
import torch

from gradscope import plugins

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seeded() -> None:
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _fresh_plugins(monkeypatch: pytest.MonkeyPatch):
    """Each test loads the installed plugins anew, so one test's plugin never leaks."""
    monkeypatch.delenv("GRADSCOPE_PLUGINS", raising=False)
    plugins.reset_plugin_manager()
    yield
    plugins.reset_plugin_manager()
