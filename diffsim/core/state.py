"""Named tensors: the state of a system at one instant."""
from __future__ import annotations

from collections.abc import Mapping

import torch


class State(Mapping):
    """What changes every substep, as named tensors (``x, v, C, F`` for MPM particles,
    ``x, v`` for FEM nodes, ``x, v, w`` for DEM spheres); a composed system's state holds
    its parts' states (``state.fem.x``, ``state.mpm.F``).

    Read fields as attributes or keys; ``State(x=x, v=v)`` or ``State({"x": x, "v": v})``."""

    __slots__ = ("_fields",)

    def __init__(self, fields: Mapping | None = None, /, **named):
        object.__setattr__(self, "_fields", dict(fields or {}, **named))

    def __getattr__(self, name):
        try:
            return object.__getattribute__(self, "_fields")[name]
        except KeyError:
            raise AttributeError(f"this state has no field {name!r}; fields: {list(self._fields)}") from None

    def __setattr__(self, name, value):
        raise AttributeError("a State is immutable: build a new one with state.replace(name=value)")

    def __getitem__(self, name):
        return self._fields[name]

    def __iter__(self):
        return iter(self._fields)

    def __len__(self):
        return len(self._fields)

    def _new(self, fields: dict) -> "State":
        out = object.__new__(type(self))
        object.__setattr__(out, "_fields", fields)
        return out

    def replace(self, **fields) -> "State":
        unknown = set(fields) - set(self._fields)
        if unknown:
            raise KeyError(f"unknown state fields {sorted(unknown)}; fields: {list(self._fields)}")
        return self._new({**self._fields, **fields})

    def map(self, fn) -> "State":
        """A state of the same kind with ``fn`` applied to every tensor (nested states too)."""
        return self._new({k: v.map(fn) if isinstance(v, State) else fn(v) for k, v in self._fields.items()})

    def detach(self) -> "State":
        return self.map(lambda t: t.detach())

    def leaves(self) -> "State":
        """Detached copies that require grad (the start of a differentiable rollout whose
        gradient with respect to the state you want)."""
        return self.map(lambda t: t.detach().clone().requires_grad_(True))

    def tensors(self) -> tuple:
        """The fields in order (nested states flattened)."""
        out = []
        for v in self._fields.values():
            out.extend(v.tensors() if isinstance(v, State) else (v,))
        return tuple(out)

    def __repr__(self):
        parts = [f"{k}={v!r}" if isinstance(v, State) else
                 f"{k}: {tuple(v.shape) if torch.is_tensor(v) else type(v).__name__}" for k, v in self._fields.items()]
        return f"{type(self).__name__}({', '.join(parts)})"
