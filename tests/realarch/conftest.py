"""The real-architecture extra: Hugging Face models from tiny configs, nothing downloaded.

Skipped as a whole without ``transformers`` (``pip install -e ".[realarch]"``); every test
here carries the ``realarch`` marker (``-m "not realarch"`` leaves them out).
"""

from __future__ import annotations

import os

import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
torch.set_num_threads(1)


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``realarch`` marker."""
    config.addinivalue_line(
        "markers", "realarch: real architectures from tiny configs (needs transformers)"
    )


@pytest.fixture(autouse=True)
def _needs_transformers() -> None:
    """Skip, not fail, without transformers (a module-level skip in a conftest is an error;
    the test modules also call ``pytest.importorskip`` before importing the recipes)."""
    pytest.importorskip("transformers")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test of this folder ``realarch``."""
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.path).startswith(here):
            item.add_marker(pytest.mark.realarch)
