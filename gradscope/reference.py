"""The reference models every loaded plugin offers (``gradscope_reference_models``)."""

from __future__ import annotations

from gradscope.errors import InputError
from gradscope.models.spec import ModelSpec
from gradscope.plugins import PluginRunner


def available_specs() -> dict[str, ModelSpec]:
    """Every spec offered through the ``gradscope_reference_models`` hook."""
    specs: dict[str, ModelSpec] = {}
    for result in PluginRunner().call("gradscope_reference_models"):
        for name, spec in result.items():
            specs.setdefault(name, spec)
    return specs


def get_spec(name: str) -> ModelSpec:
    """The spec called ``name``, or an error listing the known names."""
    specs = available_specs()
    if name not in specs:
        raise InputError(
            f"Unknown model {name!r}; known models: {', '.join(sorted(specs)) or '(none loaded)'}."
        )
    return specs[name]
