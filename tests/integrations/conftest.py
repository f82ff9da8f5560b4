"""Integration tests: Lightning, the Hugging Face Trainer and the TensorBoard exporter.

Every test here is marked ``integration`` (``pytest -m "not integration"`` leaves them
out) and each module skips cleanly when its framework is not installed
(``pip install -e ".[integrations]"`` brings them all).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

HERE = Path(__file__).parent


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "integration: trains through a framework (Lightning, HF Trainer, TensorBoard)"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)


def _hooks_left(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None) -> int:
    count = sum(len(m._forward_hooks) for m in model.modules())
    if optimizer is not None:
        count += len(optimizer._optimizer_step_pre_hooks)
        count += len(optimizer._optimizer_step_post_hooks)
    return count


@pytest.fixture
def hooks_left():
    """``hooks_left(model, optimizer)``: forward hooks on the model plus optimizer step hooks."""
    return _hooks_left
