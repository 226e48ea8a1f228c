"""What every coupled system of two parts shares: clock, states, names, diagnostics, frames
and checkpoints, from its parts'. A coupling (:class:`~diffsim.FEMMPMCoupling`,
:class:`~diffsim.FEMModuleCoupling`) adds its term: ``step``, ``build`` and ``_rollout``."""
from __future__ import annotations

import numpy as np

from ..core.state import State
from ..core.system import System


class CoupledPair(System):
    """Two systems under the names ``self.names`` (e.g. ``("mpm", "fem")``), the second
    keeping the clock. States are ``State(<first>=..., <second>=...)``, parameters
    ``<part>.<name>``, checkpoint arrays ``<part>_<name>``."""

    names: tuple = ()
    clock: str = ""          # the part whose time and step count the pair reports

    def parts(self):
        return [(name, getattr(self, name)) for name in self.names]

    @property
    def dt(self):
        return getattr(self, self.clock).dt

    @property
    def n(self):
        return sum(part.n for _, part in self.parts())

    @property
    def time(self):
        return getattr(self, self.clock).time

    @property
    def step_count(self):
        return getattr(self, self.clock).step_count

    @property
    def lo(self):
        return np.minimum.reduce([np.asarray(part.lo, float) for _, part in self.parts()])

    @property
    def hi(self):
        return np.maximum.reduce([np.asarray(part.hi, float) for _, part in self.parts()])

    def initial_state(self) -> State:
        self.build()
        return State(**{name: part.initial_state() for name, part in self.parts()})

    def current_state(self) -> State:
        self.build()
        return State(**{name: part.current_state() for name, part in self.parts()})

    def parameter_values(self) -> dict:
        return {f"{name}.{k}": v for name, part in self.parts() for k, v in part.parameter_values().items()}

    def reset(self):
        for _, part in self.parts():
            part.reset()

    def diagnostics(self) -> dict:
        """The clock part's diagnostics with energies, momentum and speed over both; the
        other part's energies and momentum under its name."""
        (name_a, a), (name_b, b) = self.parts()
        da, db = a.diagnostics(), b.diagnostics()
        own, other, other_name = (da, db, name_b) if name_a == self.clock else (db, da, name_a)
        out = dict(own)
        for k in ("kinetic", "potential", "elastic", "energy"):
            out[k] = da[k] + db[k]
        out["momentum"] = (np.asarray(da["momentum"]) + np.asarray(db["momentum"])).tolist()
        out["max_speed"] = max(da["max_speed"], db["max_speed"])
        out[other_name] = {k: other[k] for k in ("kinetic", "elastic", "momentum")}
        return out

    def frame(self) -> dict:
        frames = [part.frame() for _, part in self.parts()]
        xs, bodies, velocities, top = [], [], [], 0
        for f in frames:
            x, data = f["particles"]
            xs.append(x)
            bodies.append(data["body"] + top)
            velocities.append(data["velocity"])
            top += int(data["body"].max()) + 1 if len(data["body"]) else 0
        data = {"body": np.concatenate(bodies), "velocity": np.concatenate(velocities)}
        meshes, images = {}, {}
        for f in frames:
            meshes.update(f.get("meshes", {}))
            images.update(f.get("images", {}))
        return {"particles": (np.concatenate(xs), data), "meshes": meshes, "images": images}

    def checkpoint(self):
        arrays, meta = {}, {}
        for name, part in self.parts():
            a, m = part.checkpoint()
            arrays.update({f"{name}_{k}": v for k, v in a.items()})
            meta[name] = m
        meta.update(time=meta[self.clock]["time"], step=meta[self.clock]["step"])
        return arrays, meta

    def restore(self, arrays, meta):
        self.build()
        for name, part in self.parts():
            prefix = f"{name}_"
            part.restore({k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}, meta[name])


def split(named: dict, prefix: str) -> dict:
    """The entries of ``named`` under ``prefix``, with the prefix removed."""
    return {k[len(prefix):]: v for k, v in named.items() if k.startswith(prefix)}
