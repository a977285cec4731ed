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

import os
import re
import sys
from dataclasses import dataclass
from functools import cache
from importlib import import_module
from importlib.machinery import PathFinder
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
    found = [entry for entry in _scanned() if entry.group == group]
    core_names = [name for name, _ in BUILTIN[group]]
    core = [e for e in found if e.distribution.split()[0] == CORE]
    if not core:
        core = [Entry(group, name, value, f"{CORE} (built in)") for name, value in BUILTIN[group]]
    core.sort(key=lambda e: (core_names.index(e.name) if e.name in core_names else len(core_names), e.name))
    plugins = sorted((e for e in found if e.distribution.split()[0] != CORE),
                     key=lambda e: (e.distribution, e.name))
    return plugins + core


@cache
def _scanned() -> tuple[Entry, ...]:
    """The entries of both groups that installed distributions declare, one scan for both.

    Read from each `*.dist-info` / `*.egg-info` folder on sys.path (its entry_points.txt and,
    where it declares one of ours, its METADATA), as importlib.metadata reads them: the first
    distribution of a name on sys.path wins. Importing importlib.metadata (email, zipfile,
    csv) costs 10-20 ms, a tenth of a cold audit; this scan costs 1-2 ms. What it does not
    read (a zip or an .egg on sys.path, an import hook that supplies distributions) is left
    to importlib.metadata."""
    roots = [str(root) or "." for root in sys.path]  # sys.path may hold Path objects
    if any(root.lower().endswith(".egg") or os.path.isfile(root) for root in roots) or any(
            hasattr(finder, "find_distributions") for finder in sys.meta_path if finder is not PathFinder):
        return _from_importlib()
    found: list[Entry] = []
    seen: set[str] = set()
    for root in roots:
        try:
            children = os.listdir(root)
        except OSError:  # not there (sys.path may name anything)
            continue
        for child in children:
            stem, _, suffix = child.rpartition(".")
            if suffix.lower() not in ("dist-info", "egg-info"):
                continue
            name = re.sub(r"[-_.]+", "_", stem.partition("-")[0]).lower()
            if name not in seen:
                seen.add(name)
                found.extend(_declared(os.path.join(root, child)))
    return _unique(found)


def _declared(folder: str) -> list[Entry]:
    """The entries of our groups in one distribution's entry_points.txt (INI sections)."""
    try:
        with open(os.path.join(folder, "entry_points.txt"), encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except OSError:  # it declares none, or it is an old .egg-info file
        return []
    pairs, group = [], ""
    for line in map(str.strip, lines):
        if line.startswith("[") and line.endswith("]"):
            group = line[1:-1].strip()
        elif group in BUILTIN and "=" in line and not line.startswith(("#", ";")):
            name, _, value = line.partition("=")
            pairs.append((group, name.strip(), value.strip()))
    distribution = _distribution(folder) if pairs else ""
    return [Entry(group, name, value, distribution) for group, name, value in pairs]


def _distribution(folder: str) -> str:
    """"name version" from the metadata's header lines (those before the first blank one)."""
    for filename in ("METADATA", "PKG-INFO"):
        try:
            with open(os.path.join(folder, filename), encoding="utf-8") as handle:
                header = handle.read().split("\n\n", 1)[0]
        except OSError:
            continue
        fields: dict[str, str] = {}
        for line in header.splitlines():
            key, colon, value = line.partition(":")
            if colon:
                fields.setdefault(key.strip().lower(), value.strip())
        return f"{fields.get('name')} {fields.get('version')}"
    return "(unknown)"


def _from_importlib() -> tuple[Entry, ...]:
    from importlib.metadata import entry_points
    found = []
    for group in BUILTIN:
        for ep in entry_points(group=group):
            dist = getattr(ep, "dist", None)
            found.append(Entry(group, ep.name, ep.value,
                               f"{dist.metadata['Name']} {dist.version}" if dist is not None else "(unknown)"))
    return _unique(found)


def _unique(found: list[Entry]) -> tuple[Entry, ...]:
    """The first entry of each group, name and value: one distribution on sys.path twice
    under two names lists its entries twice."""
    first: dict[tuple[str, str, str], Entry] = {}
    for entry in found:
        first.setdefault((entry.group, entry.name, entry.value), entry)
    return tuple(first.values())


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
