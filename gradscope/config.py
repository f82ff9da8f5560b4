"""Threshold overrides: each plugin keeps its defaults in one place and reads overrides here."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def thresholds(config: Mapping[str, Any] | None, plugin: str, defaults: Mapping[str, Any]) -> dict:
    """The plugin's ``defaults`` with the overrides of ``config[plugin]`` applied.

    An override whose name the plugin does not know is an error, so a typo never
    silently leaves a default in force.
    """
    merged = dict(defaults)
    overrides = (config or {}).get(plugin) or {}
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        raise ValueError(
            f"Unknown threshold(s) {unknown} for plugin {plugin!r}; it knows {sorted(defaults)}."
        )
    merged.update(overrides)
    return merged


def parse_overrides(pairs: list[str]) -> dict[str, dict[str, float]]:
    """Turn CLI ``plugin.name=value`` strings into a config dict."""
    config: dict[str, dict[str, float]] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        plugin, dot, name = key.partition(".")
        if not sep or not dot or not plugin or not name:
            raise ValueError(
                f"Threshold override {pair!r} must look like plugin.name=value, "
                "e.g. vanishing.depth_ratio=1e-4."
            )
        try:
            config.setdefault(plugin, {})[name] = float(value)
        except ValueError:
            raise ValueError(f"Threshold override {pair!r} needs a number after '='.") from None
    return config
