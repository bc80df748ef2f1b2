"""The component registry: kind -> name -> factory, with provenance.

Duplicate names raise (naming both providers); unknown names raise with the list of
available names and the closest match.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

from invfp.components import closest
from invfp.errors import ConfigError, DuplicateComponentError, UnknownComponentError

KINDS: tuple[str, ...] = ("representation", "optimizer", "model", "validator")


@dataclasses.dataclass(frozen=True)
class Entry:
    """One registered component."""

    kind: str
    name: str
    factory: Callable[..., Any]
    plugin: str
    """Name of the plugin that registered it (a module name or an entry-point name)."""
    version: str
    """Version of the distribution that ships the plugin."""
    description: str = ""
    aliases: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly view (no factory)."""
        return {
            "kind": self.kind,
            "name": self.name,
            "aliases": list(self.aliases),
            "plugin": self.plugin,
            "version": self.version,
            "description": self.description,
        }


class Registry:
    """Components of every kind, by name and alias."""

    def __init__(self) -> None:
        self._entries: dict[str, dict[str, Entry]] = {k: {} for k in KINDS}
        self._lookup: dict[str, dict[str, Entry]] = {k: {} for k in KINDS}

    def add(
        self,
        kind: str,
        name: str,
        factory: Callable[..., Any],
        *,
        plugin: str,
        version: str,
        description: str = "",
        aliases: Iterable[str] = (),
    ) -> Entry:
        """Record a component; a name or alias already taken raises."""
        if kind not in self._entries:
            raise ConfigError(f"unknown component kind {kind!r}; kinds: {', '.join(KINDS)}")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"plugin {plugin!r} registered a {kind} without a name")
        if not callable(factory):
            raise ConfigError(f"plugin {plugin!r} registered {kind} {name!r} with a non-callable factory")
        if not description:
            doc = getattr(factory, "description", "") or (factory.__doc__ or "")
            description = doc.strip().splitlines()[0] if doc.strip() else ""
        entry = Entry(kind, name, factory, plugin, version, description, tuple(aliases))
        for key in (name, *entry.aliases):
            taken = self._lookup[kind].get(key)
            if taken is not None:
                raise DuplicateComponentError(
                    f"{kind} name {key!r} is registered twice: by plugin {taken.plugin!r} "
                    f"({taken.name}) and by plugin {plugin!r} ({name}); uninstall or "
                    "disable one of them (INVFP_LOAD_PLUGINS limits which plugins load)"
                )
        self._entries[kind][name] = entry
        for key in (name, *entry.aliases):
            self._lookup[kind][key] = entry
        return entry

    def get(self, kind: str, name: str) -> Entry:
        """The entry for ``name`` (or an alias); unknown names raise with suggestions."""
        if kind not in self._lookup:
            raise ConfigError(f"unknown component kind {kind!r}; kinds: {', '.join(KINDS)}")
        try:
            return self._lookup[kind][name]
        except (KeyError, TypeError):
            pass
        names = sorted(self._entries[kind])
        msg = f"unknown {kind} {name!r}"
        hint = closest(str(name), self._lookup[kind])
        if hint:
            msg += f" (did you mean {self._lookup[kind][hint].name!r}?)"
        msg += f"; available: {', '.join(names) if names else '(none registered)'}"
        raise UnknownComponentError(msg)

    def names(self, kind: str) -> list[str]:
        """Sorted registered names of one kind (aliases excluded)."""
        return sorted(self._entries[kind])

    def entries(self, kind: str | None = None) -> list[Entry]:
        """All entries, of one kind or of every kind, sorted by kind then name."""
        kinds = [kind] if kind else list(KINDS)
        return [self._entries[k][n] for k in kinds for n in sorted(self._entries[k])]
