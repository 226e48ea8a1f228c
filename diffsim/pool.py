"""A process-wide pool of Taichi field sets.

Taichi fields cannot be freed one by one, and every new field set also compiles new
kernels; a process that builds hundreds of scenes would grow without bound (and Taichi
crashes after ~70 re-allocations). Solvers therefore borrow field sets from this pool,
keyed by their (bucketed) sizes, and give them back when they are closed or garbage
collected; the next scene of a similar size reuses both the memory and the compiled
kernels.
"""
from __future__ import annotations

import threading
import weakref
from typing import Callable, Hashable

_lock = threading.Lock()
_free: dict[Hashable, list] = {}
_created: dict[Hashable, int] = {}


def bucket(n: int, minimum: int = 1024) -> int:
    """Round ``n`` up to the pool's size ladder (powers of two times 1 or 1.5)."""
    size = minimum
    while size < n:
        if size * 3 // 2 >= n and (size * 3 // 2) % 2 == 0:
            return size * 3 // 2
        size *= 2
    return size


def acquire(key: Hashable, factory: Callable[[], object], owner: object):
    """A field set for ``key`` (reused if one is free); returned to the pool when
    ``owner`` is garbage collected or :func:`release` is called."""
    with _lock:
        free = _free.setdefault(key, [])
        obj = free.pop() if free else None
    if obj is None:
        obj = factory()
        with _lock:
            _created[key] = _created.get(key, 0) + 1
    token = weakref.finalize(owner, _give_back, key, obj)
    return obj, token


def _give_back(key, obj):
    with _lock:
        _free.setdefault(key, []).append(obj)


def release(token) -> None:
    """Give a field set back now (idempotent)."""
    if token is not None and token.alive:
        token()


def stats() -> dict:
    """How many field sets were created and how many are free, per key."""
    with _lock:
        return {"created": sum(_created.values()), "free": sum(len(v) for v in _free.values()),
                "keys": len(_created)}
