"""The GIOROM surrogate as a whole: the model file (:class:`GIOROM`, save/load), its training
data (:class:`ROMData`, from a recorded sweep) and the step module that runs a body with it
in scenes, :func:`diffsim.rollout` and the fitter (:class:`ROMBody`).

Model files are ``torch.save`` dictionaries read with ``weights_only=True`` (no code runs
on load): ``format`` ("diffsim-giorom"), ``version``, ``config``, ``stats``, ``state_dict``,
``metadata`` (data, training history).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from diffsim.core import State, StepModule
from diffsim.errors import InvalidScene

from .giorom import MATERIAL_TYPES, FieldDecoder, SparseStepper, farthest_point_sample
from .model_file import instantiate, read_model_file as _read_model_file, resolve_config, write_model_file

FORMAT, VERSION = "diffsim-giorom", 1

#: training configurations: "small" trains on 2 CPU cores in minutes; "paper" is the size of
#: the published model (about 3.7 M parameters; use a GPU)
CONFIGS = {
    "small": dict(sparse=160, history=5, radius=0.08, width=48, layers=2, grid=12, latent=16, modes=4,
                  operator_layers=2, decoder_cell=1.5, decoder_hidden=64),
    "paper": dict(sparse=512, history=5, radius=0.06, width=128, layers=2, grid=16, latent=32, modes=6,
                  operator_layers=2, decoder_cell=1.5, decoder_hidden=64),
}


class GIOROM(nn.Module):
    """Time-stepper + decoder with the configuration and normalisation they were trained with.

    Args:
        config: a :data:`CONFIGS` entry (or its name), overridable key by key.
        bounds: ``(lo, hi)`` m, the walls of the training scenes.
        stats: velocity/acceleration normalisation (m/frame), see :class:`SparseStepper`.
        frame_dt: seconds per frame of the training data.
    """

    def __init__(self, config="small", bounds=((0.0,) * 3, (1.0,) * 3), stats=None, frame_dt: float = 5e-3,
                 metadata: dict | None = None, **overrides):
        super().__init__()
        cfg = resolve_config(CONFIGS, config, overrides, "GIOROM")
        self.config, self.frame_dt = cfg, float(frame_dt)
        self.bounds = [list(map(float, bounds[0])), list(map(float, bounds[1]))]
        self.stats = {k: list(map(float, v)) for k, v in (stats or {}).items()}
        self.metadata = dict(metadata or {})
        self.stepper = SparseStepper(self.bounds, cfg["radius"], cfg["history"], cfg["width"], cfg["layers"],
                                     cfg["grid"], cfg["latent"], cfg["modes"], cfg["operator_layers"],
                                     stats=self.stats or None,
                                     gravity=[0.0, 0.0, -9.81 * self.frame_dt ** 2])
        self.decoder = FieldDecoder(cfg["decoder_cell"], cfg["decoder_hidden"])

    @property
    def sparse(self) -> int:
        return int(self.config["sparse"])

    @property
    def history(self) -> int:
        return int(self.config["history"])

    def save(self, path, extra: dict | None = None):
        """Write the model file atomically (``extra``: more entries, e.g. optimizer state)."""
        blob = {"format": FORMAT, "version": VERSION, "config": self.config, "bounds": self.bounds,
                "stats": self.stats, "frame_dt": self.frame_dt, "metadata": self.metadata,
                "state_dict": {k: v.detach().cpu() for k, v in self.state_dict().items()}}
        blob.update(extra or {})
        write_model_file(path, blob)

    @classmethod
    def load(cls, path, dtype=torch.float32, with_extra: bool = False):
        """Read a model file; :class:`InvalidModel` names what is wrong with a bad one."""
        blob = read_model_file(path)
        model = instantiate(path, "GIOROM", lambda: cls(blob["config"], blob["bounds"], blob["stats"],
                                                         blob["frame_dt"], blob["metadata"]), blob, dtype)
        return (model, blob) if with_extra else model


def read_model_file(path) -> dict:
    return _read_model_file(path, FORMAT, VERSION, ("config", "bounds", "stats", "frame_dt", "state_dict"),
                            "train one with `diffsim train-rom`")


def material_type_of(material) -> int:
    """The type id of a diffsim material."""
    name = type(material).__name__
    if name not in MATERIAL_TYPES:
        raise InvalidScene(f"material {name!r} has no GIOROM type (known: {sorted(MATERIAL_TYPES)})")
    return MATERIAL_TYPES[name]


def material_type(trajectory) -> int:
    """The type id of a trajectory's (single) body material."""
    bodies = trajectory.metadata.get("bodies") or []
    if len(bodies) != 1:
        raise InvalidScene(f"{trajectory.path}: GIOROM data needs exactly one body per trajectory, got {len(bodies)}")
    name = bodies[0]["material"].get("model")
    if name not in MATERIAL_TYPES:
        raise InvalidScene(f"{trajectory.path}: material {name!r} has no GIOROM type (known: {sorted(MATERIAL_TYPES)})")
    return MATERIAL_TYPES[name]


def frame_velocities(positions: np.ndarray, v0: np.ndarray) -> np.ndarray:
    """Per-frame velocities (T,N,3) m/frame: ``x_f - x_{f-1}``, and ``v0`` (m/frame) at f = 0."""
    vel = np.empty_like(positions)
    vel[0] = v0
    vel[1:] = positions[1:] - positions[:-1]
    return vel


def history_at(vel: np.ndarray, t: int, H: int) -> np.ndarray:
    """The window ``vel[t-H+1 .. t]`` (H,N,3), frames before 0 repeating frame 0."""
    idx = np.clip(np.arange(t - H + 1, t + 1), 0, None)
    return vel[idx]


# ---------------------------------------------------------------------- the step module
class ROMBody(StepModule):
    """A body run by a trained GIOROM: its state is the sparse points' positions ``x``
    (M,3) m and velocity window ``history`` (M,H,3) m/frame; one substep is one frame of
    the model. :meth:`dense` decodes the positions of any reference points (differentiable).

    Args:
        model: a :class:`GIOROM` (or a path to one).
        reference: (N,3) m, the body's particles at rest (its dense reference points).
        velocity: initial velocity (3,) m/s; the parameters ``vx``, ``vy``, ``vz`` (fittable:
            ``Fitter(scene, data, ["vx", "vy", "vz"])``, or overridden in ``ds.rollout``).
        queries: reference points to decode in frames (default ``reference``).
        density: kg/m^3, for masses in diagnostics (particle volume from the spacing).
        start: farthest-point sampling start index (which sparse subset).
    """

    def __init__(self, model, reference, velocity=(0.0, 0.0, 0.0), queries=None, density: float = 1000.0,
                 material_type: int = 0, start: int = 0):
        from diffsim import runtime
        dtype = runtime.torch_dtype()
        model = GIOROM.load(model, dtype) if isinstance(model, (str, Path)) else model.to(dtype)
        reference = np.asarray(reference, np.float64)
        if reference.ndim != 2 or reference.shape[1] != 3 or len(reference) < model.sparse:
            raise InvalidScene(f"ROMBody: reference must be (N,3) with N >= {model.sparse} (the model's sparse "
                               f"points), got {reference.shape}")
        ids = farthest_point_sample(reference, model.sparse, start)
        velocity = np.asarray(velocity, np.float64)
        if velocity.shape != (3,) or not np.all(np.isfinite(velocity)):
            raise InvalidScene(f"ROMBody: velocity must be 3 finite numbers (m/s), got {velocity.tolist()}")
        hist = np.zeros((model.sparse, model.history, 3))   # set from the velocity parameters in begin()
        spacing = float(np.cbrt(np.prod(np.ptp(reference, 0) + 1e-12) / len(reference)))
        super().__init__(State(x=torch.as_tensor(reference[ids]), history=torch.as_tensor(hist)), model.frame_dt,
                         mass=density * spacing ** 3 * len(reference) / model.sparse,
                         gravity=(0.0, 0.0, -9.81), bounds=model.bounds)
        self.model, self.ids = model, ids
        for name, value in zip(("vx", "vy", "vz"), velocity):
            setattr(self, name, nn.Parameter(torch.tensor(float(value), dtype=dtype)))
        for p in self.model.parameters():   # a trained surrogate: its weights are not fitted by default
            p.requires_grad_(False)
        self.register_buffer("reference_sparse", torch.as_tensor(reference[ids], dtype=dtype))
        self.register_buffer("types", torch.full((model.sparse,), int(material_type), dtype=torch.long))
        self.queries = torch.as_tensor(reference if queries is None else queries, dtype=dtype)
        self._prepared = model.decoder.prepare(self.reference_sparse, self.queries)
        self.reset()

    def begin(self, state: State, parameters: dict) -> State:
        """The start: every sparse point's velocity window holds the initial velocity."""
        v = torch.stack([parameters["vx"], parameters["vy"], parameters["vz"]]) * self.dt
        return state.replace(history=v.to(state.x.dtype).expand(state.history.shape))

    def observed_positions(self, state: State) -> torch.Tensor:
        return self.dense(state)

    def forward(self, state: State, control: dict, dt: float) -> State:
        x, h = self.model.stepper(state.x[None], state.history[None], self.types[None], self.reference_sparse[None])
        return State(x=x[0], history=h[0])

    def dense(self, state: State | None = None, queries=None) -> torch.Tensor:
        """Decoded positions (Q,3) m of the prepared queries (or of ``queries``) in ``state``."""
        state = self.current_state() if state is None else state
        if queries is None:
            q, prepared = self.queries, self._prepared
        else:
            q = torch.as_tensor(queries, dtype=self.reference_sparse.dtype)
            prepared = self.model.decoder.prepare(self.reference_sparse, q)
        return q + self.model.decoder(prepared, state.x - self.reference_sparse)

    def parameter_values(self) -> dict:
        return {k: v for k, v in super().parameter_values().items() if not k.startswith("model.")}

    def frame(self) -> dict:
        with torch.no_grad():
            x = self.dense().double().numpy()
        return {"particles": (x, {"body": np.zeros(len(x), np.int32)}), "meshes": {}}

    def velocities(self, state: State) -> torch.Tensor:
        """The sparse points' last velocities in m/s (each stands for N/M particles)."""
        return state.history[:, -1] / self.dt

    def describe(self) -> dict:
        return {"solver": "GIOROM surrogate", "sparse_points": self.n, "dense_points": int(len(self.queries)),
                "frame_dt": self.dt, "config": self.model.config}
