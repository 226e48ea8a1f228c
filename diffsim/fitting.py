"""Material parameter identification from trajectory data, by gradient descent through
the whole differentiable rollout.

    fitter = Fitter(scene, load_trajectory("data.npz"), ["E", "nu"], init={"E": 2e3, "nu": 0.1})
    result = fitter.run(optimizer="lbfgs", iters=30, out="runs/fit")

Parameters are optimised in an unconstrained space (log for positive quantities, a
scaled logistic for bounded ones: nu in (0, 0.5), friction angle in (0, pi/2)). The loss
is the mean squared position error over every observed particle and frame, in mm^2.
The uncertainty of the fitted values comes from the loss curvature: with ``M`` residuals,
``p`` parameters and the Gauss-Newton approximation, ``Cov = 2 s^2 / M * H^-1`` where ``H``
is the Hessian of the loss (by central differences of its exact gradient) and ``s^2 =
M L / (M - p)`` the residual variance.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch

from . import io as dio
from . import runtime
from .errors import InvalidScene
from .trajectory import Trajectory

MM2 = 1e-6  # loss unit: mm^2 in m^2

# name -> (kind, lower, upper): "log" (positive) or "logistic" on (lower, upper)
TRANSFORMS = {
    "E": ("log", 0.0, None), "yield_stress": ("log", 0.0, None), "bulk_modulus": ("log", 0.0, None),
    "viscosity": ("log", 0.0, None), "cohesion": ("log", 0.0, None),
    "nu": ("logistic", 0.0, 0.5), "friction_angle": ("logistic", 0.0, math.pi / 2),
    # DEM and FEM contact, FEM damping
    "friction": ("log", 0.0, None), "rolling_friction": ("log", 0.0, None), "restitution": ("logistic", 0.0, 1.0),
    "contact_stiffness": ("log", 0.0, None), "contact_damping": ("log", 0.0, None),
    "mass_damping": ("log", 0.0, None), "stiffness_damping": ("log", 0.0, None), "stiffness": ("log", 0.0, None),
    # step modules (e.g. learned.damping.LinearDamping; learned.rom.ROMBody's initial velocity)
    "rate": ("log", 0.0, None),
    "vx": ("linear", None, None), "vy": ("linear", None, None), "vz": ("linear", None, None),
}


def to_unconstrained(name, value):
    kind, lo, hi = TRANSFORMS[name.rsplit(".", 1)[-1]]
    if kind == "linear":
        return float(value)
    if kind == "log":
        if not value > 0:
            raise InvalidScene(f"initial {name} must be > 0, got {value}")
        return math.log(value)
    if not lo < value < hi:
        raise InvalidScene(f"initial {name} must be in ({lo}, {hi}), got {value}")
    r = (value - lo) / (hi - lo)
    return math.log(r / (1 - r))


def to_physical(name, u: torch.Tensor) -> torch.Tensor:
    kind, lo, hi = TRANSFORMS[name.rsplit(".", 1)[-1]]
    if kind == "linear":
        return u
    if kind == "log":
        return torch.exp(u)
    return lo + (hi - lo) * torch.sigmoid(u)


class Fitter:
    """Fit parameters of ``scene``'s system (any :class:`~diffsim.System`: MPM, FEM, DEM,
    a step module) to observed positions ``data``, through :func:`diffsim.rollout`.

    Args:
        scene: a :class:`~diffsim.Scene` built with the options the data was recorded with.
        data: the observed :class:`Trajectory` (checked against the scene first).
        params: names, e.g. ``["E", "nu", "yield_stress"]`` (MPM), ``["friction"]`` (DEM),
            ``["E"]`` (FEM), or qualified (``"jelly.E"``); see :data:`TRANSFORMS` and
            ``system.parameter_values()``.
        body: the body whose parameters are fitted (default: the only body having them).
        init: starting values (default: the system's own values).
        checkpoint_every: segment length of the differentiable rollout where the system
            has one (default: one segment per frame).
    """

    def __init__(self, scene, data: Trajectory, params, body: str | None = None, init: dict | None = None,
                 checkpoint_every: int | None = None):
        self.scene = scene
        self.sim = scene.solver
        self.sim.build()
        self.data = data
        data.check_scene(scene)
        params = [p.strip() for p in params if p.strip()]
        if not params:
            raise InvalidScene("no parameters to fit; pass e.g. --params E,nu")
        unknown = [p for p in params if p.rsplit(".", 1)[-1] not in TRANSFORMS]
        if unknown:
            raise InvalidScene(f"cannot fit {unknown}; fittable: {sorted(TRANSFORMS)}")
        known = self.sim.parameter_values()
        if body is None:  # the one body having all of them, if there is one
            owners = sorted({k.rsplit(".", 1)[0] for k in known if "." in k})
            full = [o for o in owners if all(f"{o}.{p}" in known for p in params)]
            body = full[0] if len(full) == 1 else None
        self.qualified = [_qualify(self.sim, p, body) for p in params]
        owners = {q.rsplit(".", 1)[0] for q in self.qualified if "." in q}
        self.body = owners.pop() if len(owners) == 1 else None
        self.params = params
        init = dict(init or {})
        bad = set(init) - set(params)
        if bad:
            raise InvalidScene(f"initial values given for {sorted(bad)}, which are not fitted")
        self.init = {p: float(init.get(p, known[q])) for p, q in zip(params, self.qualified)}
        dtype = runtime.torch_dtype()
        self.u = torch.tensor([to_unconstrained(p, self.init[p]) for p in params], dtype=torch.float64,
                              requires_grad=True)
        self.steps = (data.frames - 1) * data.frame_every
        self.every = data.frame_every
        self.options = {"checkpoint_every": checkpoint_every or self.every} \
            if "checkpoint_every" in self.sim.rollout_options else {}
        self.target = torch.tensor(data.positions[1:], dtype=dtype)      # (T-1, M, 3)
        self.ids = torch.as_tensor(data.ids)
        self.history = []
        self.evaluations = 0

    # ------------------------------------------------------------------ loss
    def values(self, u=None) -> dict[str, torch.Tensor]:
        u = self.u if u is None else u
        return {p: to_physical(p, u[i]) for i, p in enumerate(self.params)}

    def loss(self, u=None) -> torch.Tensor:
        """Mean squared position error (mm^2) of the rollout with parameters ``u``."""
        from .core import rollout
        values = self.values(u)
        _, frames = rollout(self.sim, self.steps, params={q: values[p] for p, q in zip(self.params, self.qualified)},
                            record_every=self.every, **self.options)
        pred = torch.stack([self.sim.observed_positions(s)[self.ids] for _, s in frames])
        self.evaluations += 1
        return ((pred - self.target) ** 2).mean() / MM2

    # ------------------------------------------------------------------ optimisation
    def run(self, optimizer: str = "lbfgs", iters: int = 30, lr: float | None = None, out=None,
            resume: bool = False, progress: bool = True, tol: float = 1e-12) -> dict:
        """Optimise; returns the result dict (also written to ``OUT/fit.json`` with a loss
        curve ``OUT/loss.png`` and a resumable ``OUT/fit_state.pt``)."""
        from .progress import Progress
        if optimizer not in ("lbfgs", "adam"):
            raise InvalidScene(f"optimizer must be 'lbfgs' or 'adam', got {optimizer!r}")
        out = Path(out) if out is not None else None
        if optimizer == "lbfgs":
            opt = torch.optim.LBFGS([self.u], lr=lr or 1.0, max_iter=1, max_eval=25, line_search_fn="strong_wolfe",
                                    tolerance_grad=tol, tolerance_change=tol, history_size=20)
        else:
            opt = torch.optim.Adam([self.u], lr=lr or 0.05)
        start_iter = 0
        state_path = out / "fit_state.pt" if out else None
        if resume:
            if state_path is None or not state_path.exists():
                raise InvalidScene(f"--resume: no fit_state.pt in {out}; run without --resume first")
            st = torch.load(state_path, weights_only=False)
            if st["params"] != self.params or st["optimizer"] != optimizer:
                raise InvalidScene(f"--resume: {state_path} fitted {st['params']} with {st['optimizer']}")
            with torch.no_grad():
                self.u.copy_(st["u"])
            opt.load_state_dict(st["opt"])
            self.history, start_iter = st["history"], st["iteration"]
        t0 = time.perf_counter()
        last = None

        def closure():
            opt.zero_grad()
            L = self.loss()
            L.backward()
            return L

        with Progress(total=iters, desc=f"fit {','.join(self.params)}", unit="iter", disable=not progress) as bar:
            bar.update(start_iter)
            for it in range(start_iter, iters):
                L = float(opt.step(closure).detach())
                vals = {k: float(v.detach()) for k, v in self.values().items()}
                self.history.append({"iteration": it + 1, "loss_mm2": L, **vals,
                                     "evaluations": self.evaluations})
                bar.update(1, loss=f"{L:.3g}", **{k: f"{v:.4g}" for k, v in vals.items()})
                if state_path is not None:
                    _atomic_torch_save({"u": self.u.detach().clone(), "opt": opt.state_dict(),
                                        "history": self.history, "iteration": it + 1,
                                        "params": self.params, "optimizer": optimizer}, state_path)
                if last is not None and abs(last - L) <= tol * max(1.0, abs(last)):
                    break
                if self.u.grad is not None and float(self.u.grad.abs().max()) < tol:
                    break
                last = L
        final_loss = float(self.loss().detach())
        unc = self.uncertainty()
        result = {
            "params": self.params, "body": self.body, "optimizer": optimizer,
            "initial": self.init, "fitted": {k: float(v.detach()) for k, v in self.values().items()},
            "std": unc["std"], "std_method": unc["method"], "std_note": unc["note"],
            "correlation": unc["correlation"], "final_loss_mm2": final_loss,
            "residual_rms_mm": math.sqrt(max(final_loss, 0.0)), "iterations": len(self.history),
            "evaluations": self.evaluations, "seconds": time.perf_counter() - t0,
            "data": self.data.path, "observed_particles": self.data.observed, "frames": self.data.frames,
            "history": self.history,
        }
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            dio.atomic_write_json(out / "fit.json", result)
            _loss_plot(out / "loss.png", self.history, self.params)
        return result

    def uncertainty(self, h: float = 1e-3) -> dict:
        """Standard deviations from the loss curvature at the current values (see module doc)."""
        p = len(self.params)
        u0 = self.u.detach().clone()
        H = np.zeros((p, p))
        for i in range(p):
            grads = []
            for sgn in (1.0, -1.0):
                u = u0.clone()
                u[i] += sgn * h
                u.requires_grad_(True)
                g, = torch.autograd.grad(self.loss(u), u)
                grads.append(g.detach().numpy())
            H[:, i] = (grads[0] - grads[1]) / (2 * h)
        H = 0.5 * (H + H.T)
        L = float(self.loss(u0).detach())
        M = self.target.numel()
        s2 = M * L / max(M - p, 1)
        # d value / d u at u0 (diagonal)
        J = np.array([float(torch.autograd.functional.jacobian(lambda t, n=n: to_physical(n, t), u0[i]))
                      for i, n in enumerate(self.params)])
        method = ("Gauss-Newton: Cov = 2 s^2 / M H^-1 (H: Hessian of the mean squared error in the optimised "
                  "coordinates, s^2 = M L / (M - p)); assumes independent, equal-variance position errors and a "
                  "converged fit")
        if not np.all(np.isfinite(H)) or np.linalg.eigvalsh(H).min() <= 0.0:
            # not a minimum, or a direction the data does not constrain: no honest number
            return {"std": {n: None for n in self.params}, "correlation": None, "hessian_u": H.tolist(),
                    "method": method, "note": "the loss is not curved upwards in every direction at the fitted "
                    "values (not converged, or a parameter the data does not determine): no uncertainty"}
        cov_u = 2.0 * s2 / M * np.linalg.inv(H)
        cov = cov_u * np.outer(J, J)
        std = {n: float(math.sqrt(cov[i, i])) for i, n in enumerate(self.params)}
        d = np.sqrt(np.diag(cov))
        corr = (cov / np.outer(d, d)).tolist()
        return {"std": std, "correlation": corr, "hessian_u": H.tolist(), "method": method, "note": None}


def _qualify(system, name: str, body: str | None) -> str:
    """The one qualified parameter of ``system`` that ``name`` (of ``body``) stands for."""
    known = system.parameter_values()
    if name in known:
        return name
    hits = [k for k in known if k.endswith("." + name) and (body is None or k == f"{body}.{name}")]
    if body is not None and not hits:
        raise InvalidScene(f"body {body!r} does not exist or has no parameter {name!r}; parameters: {list(known)}")
    if not hits:
        raise InvalidScene(f"this {type(system).__name__} has no parameter {name!r}; parameters: {list(known)}")
    if len(hits) > 1:
        raise InvalidScene(f"{len(hits)} bodies have parameter {name!r} ({hits}); choose one with body=/--body")
    return hits[0]


def fit_log_parameters(loss_fn, start: dict, iterations: int, tolerance_grad: float = 1e-12,
                       report=None) -> tuple[dict, list]:
    """Minimise ``loss_fn(params)`` over positive parameters by L-BFGS (strong-Wolfe line
    search) on their logarithms, in float64.

    ``start``: ``{name: initial value}``; ``loss_fn`` gets ``{name: tensor}`` and returns a
    scalar tensor; ``report(evaluation, loss, params)`` (floats) runs after every
    evaluation (e.g. to print progress). Returns ``(fitted {name: float}, losses of every
    evaluation)``.
    """
    logs = {k: torch.tensor(math.log(v), dtype=torch.float64, requires_grad=True) for k, v in start.items()}
    opt = torch.optim.LBFGS(list(logs.values()), lr=1.0, max_iter=iterations, line_search_fn="strong_wolfe",
                            tolerance_grad=tolerance_grad, tolerance_change=1e-14)
    losses = []

    def closure():
        opt.zero_grad()
        params = {k: v.exp() for k, v in logs.items()}
        loss = loss_fn(params)
        loss.backward()
        losses.append(loss.item())
        if report is not None:
            report(len(losses), losses[-1], {k: v.item() for k, v in params.items()})
        return loss

    opt.step(closure)
    return {k: v.detach().exp().item() for k, v in logs.items()}, losses


def _atomic_torch_save(obj, path: Path):
    from .io import _atomic_path
    path.parent.mkdir(parents=True, exist_ok=True)
    with _atomic_path(path, suffix=".pt") as tmp:
        torch.save(obj, tmp)


def _loss_plot(path, history, params):
    try:
        from .plot import write_plot
    except ImportError:  # pragma: no cover
        return
    it = np.array([h["iteration"] for h in history], dtype=float)
    loss = np.array([h["loss_mm2"] for h in history], dtype=float)
    write_plot(path, {"loss (mm^2)": (it, loss)}, title=f"fit of {', '.join(params)}", xlabel="iteration",
               ylabel="mean squared position error (mm^2)", logy=True, markers=True)
