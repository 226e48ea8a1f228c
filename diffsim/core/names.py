"""Parameter and control names: nested dicts flattened to dotted names, short names
resolved against a system's qualified ones."""
from __future__ import annotations

from collections.abc import Mapping

from ..errors import InvalidScene


def flatten(tree: Mapping | None, prefix: str = "") -> dict:
    """``{"jelly": {"E": t}}`` -> ``{"jelly.E": t}`` (already dotted names pass through)."""
    out = {}
    for key, value in (tree or {}).items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def by_part(named: Mapping) -> dict:
    """``{"jelly.E": t, "jelly.nu": u}`` -> ``{"jelly": {"E": t, "nu": u}}``: qualified names
    grouped by what precedes their last dot (the inverse of :func:`flatten`, one level)."""
    out = {}
    for name, value in named.items():
        part, _, leaf = name.rpartition(".")
        out.setdefault(part, {})[leaf] = value
    return out


def resolve(given: Mapping, known, what: str = "parameter") -> dict:
    """Map each name of ``given`` to the qualified names of ``known`` it stands for: the
    name itself, every known name ending in ``.name`` (a short name sets that quantity
    for every body/part that has it), or, for ``part.quantity``, every ``quantity`` under
    ``part`` (``"fem.E"`` sets ``"fem.pad.E"`` and ``"fem.plate.E"``). Unknown names raise :class:`InvalidScene` listing
    the known ones. Returns ``{qualified: value}``; a qualified name given explicitly wins
    over a short one."""
    known = list(known)
    out, explicit = {}, set()
    for name, value in flatten(given).items():
        if name in known:
            out[name] = value
            explicit.add(name)
            continue
        hits = [k for k in known if _stands_for(name, k)]
        if not hits:
            raise InvalidScene(f"unknown {what} {name!r}; this system has: {known or 'none'}")
        for k in hits:
            if k not in explicit:
                out[k] = value
    return out


def _stands_for(name: str, qualified: str) -> bool:
    if qualified.endswith("." + name):
        return True
    prefix, _, leaf = name.rpartition(".")
    return bool(prefix) and qualified.startswith(prefix + ".") and qualified.rsplit(".", 1)[-1] == leaf
