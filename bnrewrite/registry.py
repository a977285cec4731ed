"""The open catalogue: which batch-norm variants and hosts exist, read from the Python
entry-point groups `bnrewrite.variants` and `bnrewrite.hosts`, so a pipeline adds its own
without forking. The core registers its own families the same way (pyproject.toml).

Each entry point names a tuple of `Variant` (or of `Host`). Order is deterministic: a
plugin's variants come first (its own spelling wins where it overlaps a core pattern),
sorted by distribution and entry-point name; then the core's, in BUILTIN's order, larger
patterns first. A source checkout whose installed metadata is missing or stale (no core
entry points) uses BUILTIN, the same list pyproject.toml declares.

A plugin that cannot load, holds the wrong type or claims a host op another entry has is
a PluginError (one line naming it, exit 2): a catalogue silently missing a user's form
would leave their batch norms unfolded without a word.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import import_module
from typing import Any, Mapping

from .errors import BnRewriteError

VARIANTS = "bnrewrite.variants"
HOSTS = "bnrewrite.hosts"
CORE = "bnrewrite"

# As [project.entry-points] in pyproject.toml declares them (tests hold the two equal).
BUILTIN: Mapping[str, tuple[tuple[str, str], ...]] = {
    VARIANTS: (("decomposed", "bnrewrite.variants.decomposed:VARIANTS"),
               ("formula", "bnrewrite.variants.formula:VARIANTS"),
               ("fused", "bnrewrite.variants.fused:VARIANTS"),
               ("global_norm", "bnrewrite.variants.global_norm:VARIANTS")),
    HOSTS: (("core", "bnrewrite.hosts:CORE_HOSTS"),),
}


class PluginError(BnRewriteError):
    """A registered plugin cannot be used (import error, wrong type, a clash)."""


@dataclass(frozen=True)
class Entry:
    group: str
    name: str
    value: str  # "module:attribute"
    distribution: str  # "name version"


@dataclass(frozen=True)
class Registered:
    entry: Entry
    items: tuple[Any, ...]


@cache
def registered(group: str) -> tuple[Registered, ...]:
    """Every entry of `group`, loaded and checked, plugins first (see the module doc)."""
    from .hosts import Host  # hosts.py reads HOSTS from here: imported when first used
    from .variants import Variant
    kind = {VARIANTS: Variant, HOSTS: Host}[group]
    return tuple(Registered(entry, _load(entry, kind)) for entry in _entries(group))


def forget() -> None:
    """Read the entry points again on next use (after installing or removing a plugin)."""
    for cached in (_scanned, registered, hosts):
        cached.cache_clear()


def variants() -> tuple[Any, ...]:
    return tuple(item for reg in registered(VARIANTS) for item in reg.items)


@cache
def hosts() -> dict[str, Any]:
    """The registered hosts by op; one op has one host."""
    by_op: dict[str, Any] = {}
    owner: dict[str, Entry] = {}
    for reg in registered(HOSTS):
        for host in reg.items:
            if host.op in by_op:
                raise PluginError(f"{_label(reg.entry)}: host op '{host.op}' is already registered by "
                                  f"{_label(owner[host.op])}")
            by_op[host.op], owner[host.op] = host, reg.entry
    return by_op


def listing() -> list[dict[str, Any]]:
    """What the audit reports: each entry, where it came from and what it registers."""
    return [{"group": reg.entry.group, "name": reg.entry.name, "distribution": reg.entry.distribution,
             "registers": sorted({getattr(item, "form", None) or item.op for item in reg.items})}
            for group in (VARIANTS, HOSTS) for reg in registered(group)]


def _entries(group: str) -> list[Entry]:
    found = [Entry(group, ep.name, ep.value, _distribution(ep)) for ep in _installed(group)]
    core_names = [name for name, _ in BUILTIN[group]]
    core = [e for e in found if e.distribution.split()[0] == CORE]
    if not core:
        core = [Entry(group, name, value, f"{CORE} (built in)") for name, value in BUILTIN[group]]
    core.sort(key=lambda e: (core_names.index(e.name) if e.name in core_names else len(core_names), e.name))
    plugins = sorted((e for e in found if e.distribution.split()[0] != CORE),
                     key=lambda e: (e.distribution, e.name))
    return plugins + core


@cache
def _scanned() -> Any:
    # importlib.metadata costs 10-20 ms to import and 2-4 ms a scan of site-packages:
    # imported only here, and one scan serves both groups
    from importlib.metadata import entry_points
    return entry_points()


def _installed(group: str) -> list[Any]:
    seen: dict[tuple[str, str], Any] = {}
    for ep in _scanned().select(group=group):  # one distribution on sys.path twice lists twice
        seen.setdefault((ep.name, ep.value), ep)
    return list(seen.values())


def _distribution(ep: Any) -> str:
    dist = getattr(ep, "dist", None)
    return f"{dist.metadata['Name']} {dist.version}" if dist is not None else "(unknown)"


def _load(entry: Entry, kind: type) -> tuple[Any, ...]:
    module, _, attribute = entry.value.partition(":")
    try:
        value: Any = import_module(module.strip())
        for part in filter(None, attribute.strip().split(".")):
            value = getattr(value, part)
    except Exception as error:  # whatever a plugin raises on import is its own problem
        raise PluginError(f"{_label(entry)}: cannot load '{entry.value}': {type(error).__name__}: {error}") from None
    items = tuple(value) if isinstance(value, (tuple, list)) else (value,)
    wrong = [type(item).__name__ for item in items if not isinstance(item, kind)]
    if wrong or not items:
        raise PluginError(f"{_label(entry)}: '{entry.value}' must be a tuple of {kind.__name__}, "
                          f"holds {', '.join(wrong) or 'nothing'}")
    return items


def _label(entry: Entry) -> str:
    return f"plugin '{entry.name}' ({entry.group}, from {entry.distribution})"
