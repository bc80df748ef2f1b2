"""The plugin manager: built-ins and entry-point plugins, loaded lazily and once.

Built-in components live in ordinary plugin modules (``DEFAULT_PLUGINS``) that are
registered on the same :class:`pluggy.PluginManager` as third-party plugins found
through the entry-point group ``invfp``. Nothing is loaded at import time.

Environment:
    INVFP_LOAD_PLUGINS: comma-separated entry-point names to load; when set (even to
        an empty string) only those external plugins load. Unset: all of them. The
        test suite sets it to "" so installed plugins never leak into tests.
"""

from __future__ import annotations

import importlib
import os
import threading
import warnings
from importlib import metadata
from types import ModuleType
from typing import Any

import pluggy

from invfp import hookspecs
from invfp.components import closest
from invfp.errors import PluginError
from invfp.registry import KINDS, Registry

ENTRY_POINT_GROUP = "invfp"
ENV_LOAD = "INVFP_LOAD_PLUGINS"

DEFAULT_PLUGINS: tuple[str, ...] = (
    "invfp.builtins.representations",
    "invfp.builtins.optimizers",
    "invfp.builtins.models",
    "invfp.builtins.validators",
)

HOOKS: dict[str, str] = {
    "representation": "register_representations",
    "optimizer": "register_optimizers",
    "model": "register_models",
    "validator": "register_validators",
}

_lock = threading.RLock()
_pm: pluggy.PluginManager | None = None
_loaded = False
_registry: Registry | None = None
_versions: dict[str, str] = {}


class PluginLoadWarning(UserWarning):
    """A plugin could not be loaded; invfp goes on without it."""


def _invfp_version() -> str:
    from invfp import __version__

    return __version__


def get_plugin_manager() -> pluggy.PluginManager:
    """The plugin manager, with built-in and (allowed) entry-point plugins loaded."""
    global _pm, _loaded
    with _lock:
        if _pm is None:
            _pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
            _pm.add_hookspecs(hookspecs)
        if not _loaded:
            _loaded = True
            for module_name in DEFAULT_PLUGINS:
                module = importlib.import_module(module_name)
                _register(module, module_name, _invfp_version())
            _load_entry_points()
        return _pm


def _allowed_external() -> set[str] | None:
    raw = os.environ.get(ENV_LOAD)
    if raw is None:
        return None
    return {part.strip() for part in raw.split(",") if part.strip()}


def _load_entry_points() -> None:
    allowed = _allowed_external()
    if allowed is not None and not allowed:
        return
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if allowed is not None and ep.name not in allowed:
            continue
        if _pm is not None and _pm.get_plugin(ep.name) is not None:
            continue
        version = ep.dist.version if ep.dist is not None else "unknown"
        try:
            plugin = ep.load()
            _register(plugin, ep.name, version)
        except Exception as exc:  # noqa: BLE001 - one broken plugin must not break the tool
            warnings.warn(
                f"invfp: plugin {ep.name!r} ({ep.value}) failed to load and is skipped: "
                f"{type(exc).__name__}: {exc}",
                PluginLoadWarning,
                stacklevel=2,
            )


def _check_hook_names(plugin: Any, name: str) -> None:
    """Raise PluginError if ``plugin`` defines a hook implementation invfp does not know."""
    assert _pm is not None
    for attr in dir(plugin):
        if not attr.startswith("register_"):
            continue
        if attr in HOOKS.values():
            continue
        value = getattr(plugin, attr, None)
        if callable(value) and _pm.parse_hookimpl_opts(plugin, attr) is not None:
            hint = closest(attr, HOOKS.values())
            raise PluginError(
                f"plugin {name!r} implements unknown hook {attr!r}"
                + (f" (did you mean {hint!r}?)" if hint else "")
                + f"; hooks: {', '.join(HOOKS.values())}"
            )


def _register(plugin: Any, name: str, version: str) -> None:
    global _registry
    assert _pm is not None
    _check_hook_names(plugin, name)
    try:
        _pm.register(plugin, name=name)
    except ValueError as exc:
        raise PluginError(f"plugin {name!r} is already registered") from exc
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"plugin {name!r} is invalid: {exc}") from exc
    _versions[name] = version
    _registry = None


def register_plugin(plugin: ModuleType | object, name: str | None = None, version: str = "local") -> str:
    """Register a plugin object or module at run time (tests, notebooks, scripts).

    Raises:
        PluginError: it implements a hook invfp does not define, or its name is taken.
        DuplicateComponentError: it registers a component name that is already taken
            (the plugin is removed again).
    """
    with _lock:
        get_plugin_manager()
        plugin_name = name or getattr(plugin, "__name__", None) or f"plugin-{id(plugin)}"
        _register(plugin, plugin_name, version)
        try:
            get_registry()
        except Exception:
            unregister_plugin(plugin_name)
            raise
        return plugin_name


def unregister_plugin(name: str) -> None:
    """Remove a plugin registered with :func:`register_plugin`."""
    global _registry
    with _lock:
        pm = get_plugin_manager()
        plugin = pm.get_plugin(name)
        if plugin is not None:
            pm.unregister(plugin)
        _versions.pop(name, None)
        _registry = None


def load_entry_point_plugins(*names: str) -> None:
    """Load named entry-point plugins now, whatever ``INVFP_LOAD_PLUGINS`` says.

    Used by tests that exercise the real third-party path.
    """
    global _registry
    with _lock:
        pm = get_plugin_manager()
        wanted = set(names)
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            if ep.name in wanted and pm.get_plugin(ep.name) is None:
                version = ep.dist.version if ep.dist is not None else "unknown"
                _register(ep.load(), ep.name, version)
        _registry = None


def get_registry() -> Registry:
    """The registry of every component, built once from all registered plugins."""
    global _registry
    with _lock:
        pm = get_plugin_manager()
        if _registry is not None:
            return _registry
        registry = Registry()
        for kind in KINDS:
            hook = getattr(pm.hook, HOOKS[kind])
            for impl in reversed(hook.get_hookimpls()):
                plugin_name = impl.plugin_name
                version = _versions.get(plugin_name, "unknown")

                def register(name, factory, *, aliases=(), description="",
                             _kind=kind, _plugin=plugin_name, _version=version):  # noqa: ANN001
                    registry.add(_kind, name, factory, plugin=_plugin, version=_version,
                                 description=description, aliases=aliases)

                try:
                    impl.function(register=register)
                except PluginError:
                    raise
                except Exception as exc:  # noqa: BLE001
                    if plugin_name in DEFAULT_PLUGINS:
                        raise
                    warnings.warn(
                        f"invfp: plugin {plugin_name!r} failed in {HOOKS[kind]} and its "
                        f"{kind}s are skipped: {type(exc).__name__}: {exc}",
                        PluginLoadWarning,
                        stacklevel=2,
                    )
        _registry = registry
        return registry


def reset() -> None:
    """Forget every loaded plugin (tests use this to start from a clean state)."""
    global _pm, _loaded, _registry
    with _lock:
        _pm = None
        _loaded = False
        _registry = None
        _versions.clear()


def create(kind: str, name_or_obj: Any, **params: Any) -> Any:
    """Build a component by name (or pass an instance through unchanged)."""
    if not isinstance(name_or_obj, str):
        if params:
            raise PluginError(f"parameters {sorted(params)} given with a ready-made {kind} object")
        return name_or_obj
    entry = get_registry().get(kind, name_or_obj)
    return entry.factory(**params)
