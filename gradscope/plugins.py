"""Plugin manager: the built-in plugins from a default list, third-party ones from entry points.

The built-in plugins are registered from :data:`DEFAULT_PLUGINS` (as datasette and llm
register theirs), so they load even when the package's entry points are missing (a
checkout on PYTHONPATH, stale metadata, a vendored copy).  Third-party plugins plug in
through the ``gradscope`` entry-point group.  ``GRADSCOPE_PLUGINS`` limits what loads,
from both sources: unset loads everything, an empty string loads none,
``vanishing,exploding`` loads just those.  Plugins registered in-process with
:func:`register` always take part.
"""

from __future__ import annotations

import contextlib
import importlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import pluggy

from gradscope import hookspecs
from gradscope.version import __version__

ENV_VAR = "GRADSCOPE_PLUGINS"
#: The built-in plugins: name -> module.  Each is an ordinary plugin module.
DEFAULT_PLUGINS = {
    "vanishing": "gradscope_plugins.vanishing",
    "exploding": "gradscope_plugins.exploding",
    "nonfinite": "gradscope_plugins.nonfinite",
    "no_gradient": "gradscope_plugins.no_gradient",
    "dead_relu": "gradscope_plugins.dead_relu",
    "saturation": "gradscope_plugins.saturation",
    "symmetry": "gradscope_plugins.symmetry",
    "stale_gradient": "gradscope_plugins.stale_gradient",
    "tiny_updates": "gradscope_plugins.tiny_updates",
    "loss_input": "gradscope_plugins.loss_input",
    "reference_models": "gradscope_plugins.reference_models",
    "plots": "gradscope_plugins.plots",
    "html_report": "gradscope_plugins.html_report",
    "tensorboard_export": "gradscope_plugins.tensorboard_export",
    "trial_plot": "gradscope_plugins.trial_plot",
}
BUILTIN_SOURCE = "built-in"
_manager: pluggy.PluginManager | None = None
_sources: dict[str, str] = {}


class StopTraining(Exception):  # noqa: N818 - reads as an instruction at the raise site
    """Raise from ``gradscope_on_step`` to stop training on purpose; it is not swallowed."""


@dataclass
class PluginInfo:
    """One loaded plugin: its name, where it came from and the hooks it implements."""

    name: str
    source: str
    hooks: list[str]


def _allowed_names() -> set[str] | None:
    raw = os.environ.get(ENV_VAR)
    if raw is None:
        return None
    return {name.strip() for name in raw.split(",") if name.strip()}


def _load_defaults(pm: pluggy.PluginManager) -> None:
    allowed = _allowed_names()
    for name, module in DEFAULT_PLUGINS.items():
        if allowed is not None and name not in allowed:
            continue
        pm.register(importlib.import_module(module), name=name)
        _sources[name] = f"gradscope {__version__} ({BUILTIN_SOURCE}: {module})"


def _load_entry_points(pm: pluggy.PluginManager) -> None:
    allowed = _allowed_names()
    for ep in metadata.entry_points(group=hookspecs.PROJECT):
        if allowed is not None and ep.name not in allowed:
            continue
        if pm.get_plugin(ep.name) is not None:
            continue
        plugin = ep.load()
        pm.register(plugin, name=ep.name)
        dist = ep.dist
        _sources[ep.name] = (
            f"{dist.metadata['Name']} {dist.version} ({ep.value})" if dist else ep.value
        )


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, created and loaded on first use."""
    global _manager
    if _manager is None:
        pm = pluggy.PluginManager(hookspecs.PROJECT)
        pm.add_hookspecs(hookspecs)
        _load_defaults(pm)
        _load_entry_points(pm)
        _manager = pm
    return _manager


def reset_plugin_manager() -> None:
    """Forget the loaded plugins; the next use reloads them (honours a changed env var)."""
    global _manager
    _manager = None
    _sources.clear()


def register(plugin: object, name: str | None = None) -> str:
    """Register a plugin object or module for this process; returns its name."""
    pm = get_plugin_manager()
    registered = pm.register(plugin, name=name)
    if registered is None:
        raise ValueError(f"Plugin {name or plugin!r} is already registered.")
    _sources.setdefault(registered, "registered in-process")
    return registered


def unregister(name_or_plugin: str | object) -> None:
    """Remove a plugin registered with :func:`register`."""
    pm = get_plugin_manager()
    if isinstance(name_or_plugin, str):
        pm.unregister(name=name_or_plugin)
        _sources.pop(name_or_plugin, None)
    else:
        name = pm.get_name(name_or_plugin)
        pm.unregister(name_or_plugin)
        if name is not None:
            _sources.pop(name, None)


@contextlib.contextmanager
def registered(plugin: object, name: str | None = None) -> Iterator[str]:
    """Register ``plugin`` for the duration of a ``with`` block."""
    plugin_name = register(plugin, name)
    try:
        yield plugin_name
    finally:
        unregister(plugin_name)


def list_plugins() -> list[PluginInfo]:
    """What is loaded, where it came from, and which hooks each implements."""
    pm = get_plugin_manager()
    infos = []
    for name, plugin in sorted(pm.list_name_plugin(), key=lambda item: item[0]):
        hooks = sorted(caller.name for caller in (pm.get_hookcallers(plugin) or []))
        infos.append(PluginInfo(name=name, source=_sources.get(name, "unknown"), hooks=hooks))
    return infos


class PluginRunner:
    """Calls hooks one implementation at a time, so a plugin that raises is isolated.

    The failing plugin is named in :attr:`errors` and skipped for the rest of this
    runner's life; the other plugins still run.
    """

    def __init__(self, pm: pluggy.PluginManager | None = None) -> None:
        self.pm = pm or get_plugin_manager()
        self.disabled: set[str] = set()
        self.errors: list[dict[str, str]] = []

    def call(self, hook_name: str, **kwargs: Any) -> list[Any]:
        """Call every enabled implementation of ``hook_name``; returns their non-None results."""
        caller = getattr(self.pm.hook, hook_name)
        results = []
        # pluggy calls the last registered first; keep that order.
        for impl in reversed(caller.get_hookimpls()):
            if impl.plugin_name in self.disabled:
                continue
            args = {name: kwargs[name] for name in impl.argnames}
            try:
                result = impl.function(**args)
            except StopTraining:
                raise
            except Exception as exc:  # noqa: BLE001 - a plugin must never kill training
                self.disabled.add(impl.plugin_name)
                self.errors.append(
                    {
                        "plugin": impl.plugin_name,
                        "hook": hook_name,
                        "error": f"{type(exc).__name__}: {exc}",
                    }
                )
                continue
            if result is not None:
                results.append(result)
        return results

    def render(
        self, report: Any, outdir: Path, options: dict[str, Any] | None = None
    ) -> list[Path]:
        """Run every renderer; returns the paths written."""
        paths: list[Path] = []
        options = {"formats": ["png"], **(options or {})}
        for result in self.call("gradscope_render", report=report, outdir=outdir, options=options):
            paths.extend(Path(p) for p in result)
        return paths


def detector_plugins(pm: pluggy.PluginManager | None = None) -> dict[str, Any]:
    """Name -> plugin of every loaded plugin that implements ``gradscope_detect``."""
    pm = pm or get_plugin_manager()
    return {impl.plugin_name: impl.plugin for impl in pm.hook.gradscope_detect.get_hookimpls()}
