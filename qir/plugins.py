"""Loads the wings (passes, frontends, backends) and users' plugins through entry points."""
from __future__ import annotations

from importlib.metadata import entry_points

from qir.errors import QirError

_loaded: set[str] = set()


def load_group(group: str) -> dict[str, object]:
    """Import every entry point of `group` once; returns name -> loaded object."""
    found = {}
    for ep in entry_points(group=group):
        try:
            found[ep.name] = ep.load()
        except Exception as exc:  # a broken plugin must not take the whole tool down silently
            raise QirError(f"plugin '{ep.name}' ({ep.value}) in group {group} failed to load: {exc}") from exc
    _loaded.add(group)
    return found
