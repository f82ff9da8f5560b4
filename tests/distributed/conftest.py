"""Multi-process tests: two gloo ranks on 127.0.0.1, CPU only, one thread each."""

from __future__ import annotations

import pytest
import torch.distributed as dist


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "distributed: spawns two torch.distributed (gloo) processes on 127.0.0.1"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    skip = pytest.mark.skip(reason="torch.distributed with gloo is not available")
    for item in items:
        if "distributed" in item.keywords and not (
            dist.is_available() and dist.is_gloo_available()
        ):
            item.add_marker(skip)
