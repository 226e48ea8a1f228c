"""Training a NeuralDEM surrogate on a recorded hopper sweep (``diffsim train-neuraldem``).

Each run's spheres become fields on one grid (``learned.granular_fields``); every step draws
(run, frame) pairs of the ``train`` split and query nodes (a quarter by the slot, the rest
half where there is material, half anywhere) and fits the fields there: occupancy
everywhere, the other fields weighted by the occupancy (they are undefined where there is
no material); beside them the flux through the slot (the outflow) and the exit-order ratio
(the flow regime) of a few runs, the integrals users read. Checkpoints, resume and
torchrun as ``train-rom`` (``learned.training.optimise``).
"""
from __future__ import annotations

import json
import math

import numpy as np
import torch

from diffsim.dem.discharge import order_sets
from diffsim.errors import InvalidScene

from .granular_fields import CONDITIONS, FIELDS, FieldGrid, exit_order_from_fields, hopper_fields, slot_line
from .neuraldem import OCCUPANCY_MAX, NeuralDEM, NeuralDEMEnsemble
from .training import _distributed, descend, optimise, resume_checkpoint

OUTLET_Z = -0.03
PACKED = 0.6          # occupancy of a packed bed: the occupancy's scale
#: signs of (x, z) and of the fields under the hopper's mirror symmetry x -> -x
MIRROR = np.array([-1, 1] + [-1 if name in ("vx", "dx") else 1 for name in FIELDS], np.float32)


def _typical_flux(flux: np.ndarray) -> float:
    """The RMS of the positive fluxes (kg/s), 0 where there are none."""
    flowing = flux[flux > 0].astype(np.float64)
    return float(np.sqrt(np.mean(flowing ** 2))) if len(flowing) else 0.0


class HopperFieldData:
    """The fields of the runs of one split of a recorded hopper sweep, on one grid.

    ``spacing``: node spacing in sphere diameters; the grid covers every run's initial bed
    and the outlet."""

    def __init__(self, trajectories, spacing: float = 1.5, grid: FieldGrid | None = None):
        if not trajectories:
            raise InvalidScene("HopperFieldData: no trajectories (is the split empty? record more runs)")
        # density became an option of scenes/dem_hopper.py later: runs without it used 2500
        opts = [{"density": 2500.0, **((t.metadata.get("scene") or {}).get("options") or {})} for t in trajectories]
        for t, o in zip(trajectories, opts):
            for key in ("radius", "depth", "orifice", "count", "density"):
                if o.get(key) != opts[0].get(key):
                    raise InvalidScene(f"{t.path}: {key} = {o.get(key)} differs from {opts[0].get(key)} of the first "
                                       f"run; one surrogate covers one hopper size (sweep angle and friction only)")
        r = float(opts[0].get("radius", 0.0) or 0.0)
        if grid is None:
            if not r > 0:
                raise InvalidScene(f"{trajectories[0].path}: not a dem_hopper run (no radius option)")
            x0 = np.concatenate([np.asarray(t.positions[0]) for t in trajectories])
            half = float(np.abs(x0[:, 0]).max()) + 2 * r
            grid = FieldGrid((-half, OUTLET_Z), (half, float(x0[:, 2].max()) + 2 * r), spacing * 2 * r,
                             float(opts[0]["depth"]))
        self.grid = grid
        self.runs = [hopper_fields(t, grid, OUTLET_Z) for t in trajectories]
        self.frame_dt = float(trajectories[0].dt)
        self.orifice = float(opts[0].get("orifice", 0.0))
        self.density = float(opts[0].get("density", 2500.0))
        self.nodes = grid.nodes().reshape(-1, 2).astype(np.float32)
        # the nodes by the slot, whose fields make the outflow (at least one node)
        near = (np.abs(self.nodes[:, 0]) <= 0.5 * self.orifice + 2 * grid.h) & (np.abs(self.nodes[:, 1]) <= 2 * grid.h)
        self.slot = np.nonzero(near)[0] if near.any() else np.array([int(np.argmin(np.abs(self.nodes).sum(1)))])
        self.slot_xz, self.slot_dx = slot_line(self.orifice, grid.h, grid.lo[0])
        for run in self.runs:
            self._discharge_targets(run, r)
        self.flux_scale = _typical_flux(np.concatenate([run["flux"] for run in self.runs])) or 1.0

    def _discharge_targets(self, run: dict, radius: float) -> None:
        """What the discharge figures are made of, per run: ``flux`` (kg/s through the slot at
        every frame, from the fields as the model computes it) and, at the gate's opening,
        the exit-order sets (``order_nodes``: node ids of the shoulders and of the top,
        ``order_weights``: their occupancy) and the true ``exit_order`` ratio."""
        y = np.maximum(-self.grid.sample(run["occupancy"] * run["vz"], self.slot_xz), 0.0)   # momentum
        run["flux"] = (self.density * self.grid.depth * np.trapezoid(y, dx=self.slot_dx, axis=-1)).astype(np.float32)
        run["flux_scale"] = _typical_flux(run["flux"])
        occ0, exit0 = run["occupancy"][0].reshape(-1), run["exit_time"][0].reshape(-1)
        keep = np.nonzero(occ0 > 0.1)[0]
        shoulders, top = order_sets(self.nodes[keep], float(run["conditions"][0]), self.orifice, radius,
                                    weights=occ0[keep])
        run["order_nodes"] = (keep[shoulders], keep[top])
        run["order_weights"] = (occ0[keep[shoulders]], occ0[keep[top]])
        run["exit_order"] = exit_order_from_fields(occ0, exit0, self.nodes, float(run["conditions"][0]),
                                                   self.orifice, radius)

    def stats(self) -> dict:
        """Trained ranges, field scales, grid and geometry (what the model file keeps)."""
        cond = np.stack([r["conditions"] for r in self.runs])
        times = np.concatenate([r["time"] for r in self.runs])
        ranges = {n: [float(cond[:, i].min()), float(cond[:, i].max())] for i, n in enumerate(CONDITIONS)}
        # from the gate's opening: the first frame lies a substep after it (4e-5 s), and the
        # regime is read, and the exit-order loss trained, at the opening itself
        ranges["time"] = [0.0, float(times.max())]
        scales = {"occupancy": PACKED}
        for name in FIELDS[1:]:
            vals = np.concatenate([r[name][r["occupancy"] > 0.1 * PACKED] for r in self.runs])
            scales[name] = float(np.sqrt(np.mean(vals.astype(np.float64) ** 2))) or 1.0
        g = self.grid
        return {"ranges": ranges, "scales": scales, "grid": [g.lo.tolist(), g.hi.tolist(), g.h, g.depth],
                "density": self.density, "total_mass": float(np.mean([r["total_mass"] for r in self.runs])),
                "orifice": self.orifice, "outlet_z": OUTLET_Z, "frame_dt": self.frame_dt}

    def _pair(self, rng) -> tuple[dict, int]:
        """A random (run, frame index) of the split."""
        run = self.runs[int(rng.integers(len(self.runs)))]
        return run, int(rng.integers(len(run["time"])))

    def batch(self, rng, size: int, queries: int):
        """Tensors (conditions (B,3), t (B,), xz (B,Q,2), targets (B,Q,F), slot flux (B,), the
        run's typical flux (B,): the RMS of its positive fluxes, or the dataset's where it
        has none) for ``size`` random (run, frame) pairs, ``queries`` nodes each: a quarter
        by the slot (the outflow is the flux there), three eighths among the occupied
        nodes, the rest anywhere; half of the pairs mirrored (x -> -x: the hopper is
        symmetric, its fill only statistically)."""
        cond, times, xz, target, flux, scale = [], [], [], [], [], []
        n_slot = queries // 4
        for _ in range(size):
            run, f = self._pair(rng)
            values = np.stack([run[name][f].reshape(-1) for name in FIELDS], -1)
            occupied = np.nonzero(values[:, 0] > 0.05 * PACKED)[0]
            n_occ = (queries - n_slot) // 2 if len(occupied) else 0
            ids = np.concatenate([self.slot[rng.integers(len(self.slot), size=n_slot)],
                                  occupied[rng.integers(len(occupied), size=n_occ)] if n_occ else np.zeros(0, int),
                                  rng.integers(len(values), size=queries - n_slot - n_occ)])
            points, values = self.nodes[ids], values[ids]
            if rng.random() < 0.5:      # the hopper's mirror image: x, vx and dx change sign
                points, values = points * MIRROR[:2], values * MIRROR[2:]
            cond.append(run["conditions"])
            times.append(run["time"][f])
            xz.append(points)
            target.append(values)
            flux.append(run["flux"][f])
            scale.append(run["flux_scale"] or self.flux_scale)
        return (torch.from_numpy(np.stack(cond)), torch.from_numpy(np.asarray(times, np.float32)),
                torch.from_numpy(np.stack(xz)), torch.from_numpy(np.stack(target)),
                torch.from_numpy(np.asarray(flux, np.float32)), torch.from_numpy(np.asarray(scale, np.float32)))

    def mass_batch(self, rng, size: int, stride: int = 3):
        """Tensors for the mass loss of ``size`` random (run, frame) pairs: conditions (M, 3),
        t (M,), the nodes of a strided subset of the grid (every ``stride``-th in x and z,
        from a random offset: (M, S, 2), padded), their mask (M, S) (0 on padding), the
        data's occupancy there (M, S) and the weight of one node's occupancy in units of
        the run's total mass (M,): (stride h)^2 x density x depth / total mass, so that the
        masked sum of occupancy x weight estimates the fraction of the mass inside."""
        nx, nz = self.grid.shape
        ids = np.arange(nx * nz).reshape(nx, nz)
        subsets = [ids[ox::stride, oz::stride].reshape(-1) for ox, oz in rng.integers(stride, size=(size, 2))]
        width = max(map(len, subsets))
        xz = np.zeros((size, width, 2), np.float32)
        mask = np.zeros((size, width), np.float32)
        occ = np.zeros((size, width), np.float32)
        cond, times, weight = [], [], []
        for i, sub in enumerate(subsets):
            run, f = self._pair(rng)
            xz[i, :len(sub)], mask[i, :len(sub)] = self.nodes[sub], 1.0
            occ[i, :len(sub)] = run["occupancy"][f].reshape(-1)[sub]
            cond.append(run["conditions"])
            times.append(run["time"][f])
            weight.append((stride * self.grid.h) ** 2 * self.density * self.grid.depth / run["total_mass"])
        return (torch.from_numpy(np.stack(cond)), torch.from_numpy(np.asarray(times, np.float32)),
                *map(torch.from_numpy, (xz, mask, occ, np.asarray(weight, np.float32))))

    def order_batch(self, rng, size: int):
        """Tensors for the exit-order loss of ``size`` random runs with a finite ratio:
        conditions (R, 3), the shoulders' and top's nodes side by side xz (R, S, 2) (padded),
        their occupancy weights (R, S) (0 on padding), a mask of the shoulders (R, S) and
        the true log ratio (R,); None where no run has a ratio (beds too small for shoulders)."""
        usable = [run for run in self.runs if np.isfinite(run["exit_order"])]
        if not usable:
            return None
        picks = [usable[int(i)] for i in rng.integers(len(usable), size=size)]
        width = max(sum(map(len, run["order_nodes"])) for run in picks)
        xz = np.zeros((size, width, 2), np.float32)
        w = np.zeros((size, width), np.float32)
        shoulder = np.zeros((size, width), np.float32)
        for i, run in enumerate(picks):
            ids, ws = np.concatenate(run["order_nodes"]), np.concatenate(run["order_weights"])
            xz[i, :len(ids)], w[i, :len(ids)] = self.nodes[ids], ws
            shoulder[i, :len(run["order_nodes"][0])] = 1.0
        cond = np.stack([run["conditions"] for run in picks])
        ratio = np.log([run["exit_order"] for run in picks]).astype(np.float32)
        return tuple(map(torch.from_numpy, (cond, xz, w, shoulder, ratio)))


def occupancy_divergence(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The Bernoulli KL divergence of the occupancy read as a fraction of its ceiling
    (:data:`learned.neuraldem.OCCUPANCY_MAX`): its gradient in the sigmoid's input is the
    plain difference of the fractions, where a squared error's is that times the fraction
    again, so a faint haze of occupancy over empty nodes is pushed down as hard as any other
    error (a squared error lets 0.005 stay on the ~2,000 empty nodes: a tenth of the bed)."""
    p = (pred / OCCUPANCY_MAX).clamp(1e-6, 1 - 1e-6)
    y = (target / OCCUPANCY_MAX).clamp(0, 1)
    entropy = lambda q: -(torch.xlogy(q, q) + torch.xlogy(1 - q, 1 - q))   # noqa: E731
    return -(y * torch.log(p) + (1 - y) * torch.log1p(-p)) - entropy(y)


def field_loss(model: NeuralDEM, pred: torch.Tensor, target: torch.Tensor, occupancy: str = "kl") -> torch.Tensor:
    """Occupancy error everywhere (squared in units of a packed bed's, ``"mse"``, or
    :func:`occupancy_divergence`, ``"kl"``) plus the other fields' errors weighted by the
    true occupancy, each in units of its scale."""
    if occupancy == "kl":
        occ = occupancy_divergence(pred[..., 0], target[..., 0])
    else:
        occ = ((pred[..., 0] - target[..., 0]) / PACKED) ** 2
    scales = torch.as_tensor([model.stats["scales"][f] for f in FIELDS[1:]], dtype=pred.dtype)
    weight = (target[..., 0] / PACKED).clamp(0, 1)
    rest = (((pred[..., 1:] - target[..., 1:]) / scales) ** 2).mean(-1)
    return occ.mean() + (weight * rest).sum() / weight.sum().clamp_min(1e-6)


def flux_loss(model: NeuralDEM, data: HopperFieldData, slot_fields: torch.Tensor, flux: torch.Tensor,
              scale: torch.Tensor | float | None = None) -> torch.Tensor:
    """Squared error of the flux through the slot (:meth:`NeuralDEM.slot_flux` of the
    fields predicted at ``data.slot_xz``, (B, P, F)) in units of ``scale`` (per pair; default:
    the data's typical flux)."""
    pred = model.slot_flux(slot_fields[..., 0], slot_fields[..., 2], data.slot_dx)
    return (((pred - flux) / (data.flux_scale if scale is None else scale)) ** 2).mean()


def mass_loss(model: NeuralDEM, cond, t, xz, mask, occupancy, weight) -> torch.Tensor:
    """Squared error of the mass inside, as a fraction of the run's total mass, estimated on
    the strided nodes of :meth:`HopperFieldData.mass_batch` from the predicted and the
    data's occupancy alike. The pointwise field loss lets a faint haze of occupancy over
    the ~2,000 empty nodes pass (0.005 everywhere is a tenth of the bed's mass) and weighs
    how much material is left only node by node; this is the integral users read."""
    pred = model(cond, t, xz)[..., 0]
    return ((((pred - occupancy) * mask).sum(1) * weight) ** 2).mean()


def order_loss(model: NeuralDEM, cond, xz, w, shoulder, log_ratio) -> torch.Tensor:
    """Squared error of the log exit-order ratio at the gate's opening: the weighted mean
    predicted exit time of the shoulders' nodes over the top's (:meth:`order_batch`)."""
    exit_time = model(cond, torch.zeros(len(cond), dtype=xz.dtype), xz)[..., FIELDS.index("exit_time")]
    mean = lambda m: (w * m * exit_time).sum(1) / (w * m).sum(1).clamp_min(1e-9)  # noqa: E731
    ratio = mean(shoulder).clamp_min(1e-3) / mean(1 - shoulder).clamp_min(1e-3)
    return ((torch.log(ratio) - log_ratio) ** 2).mean()


def train_neuraldem(dataset, out, config="small", iterations: int = 3000, batch: int = 16, queries: int = 512,
                    lr: float = 1e-3, checkpoint_every: int = 250, resume: bool = False, seed: int = 0,
                    progress: bool = True, flux_weight: float = 1.0, order_weight: float = 0.1,
                    flux_units: str = "run", mass_weight: float = 0.0, occupancy_loss: str = "kl",
                    **overrides) -> NeuralDEM:
    """Train a NeuralDEM on the recorded hopper sweep ``dataset`` and write ``out``.

    Args:
        config: "small" or "paper" (:data:`learned.neuraldem.CONFIGS`); ``overrides`` change
            single entries. batch: (run, frame) pairs per step (under torchrun shared among
            the processes); queries: nodes per pair. lr: Adam's rate, decaying to lr/10.
        resume: continue from ``out`` (its optimizer state, iteration and random stream).
        flux_weight, order_weight: weights of the slot-flux loss (:func:`flux_loss`, on every
            pair of the batch) and of the exit-order loss (:func:`order_loss`, on a quarter
            as many runs) beside the field loss: the outflow and the regime are what users
            read, and both are integrals the pointwise field loss weighs only indirectly.
        flux_units: the flux error of a pair in units of its run's typical flux ("run":
            every run's rate counts by its relative error, as users read it) or of the
            dataset's ("dataset": a run discharging at a quarter of the typical rate weighs
            1/16 as much).
        mass_weight: weight of the loss on the mass inside (:func:`mass_loss`, on a quarter as
            many pairs, every third node in x and z).
        occupancy_loss: "mse" (squared error) or "kl" (:func:`occupancy_divergence`).
    """
    if occupancy_loss not in ("mse", "kl"):
        raise InvalidScene(f"train-neuraldem: occupancy_loss must be 'mse' or 'kl', got {occupancy_loss!r}")
    if flux_units not in ("run", "dataset"):
        raise InvalidScene(f"train-neuraldem: flux_units must be 'run' or 'dataset', got {flux_units!r}")
    from pathlib import Path

    from diffsim.sweep import load_dataset
    rank, world = _distributed()
    out = Path(out)
    torch.manual_seed(seed)
    model, extra, start, history = resume_checkpoint(NeuralDEM.load, out, resume)
    if isinstance(model, NeuralDEMEnsemble):
        raise InvalidScene(f"train-neuraldem: {out} is an ensemble; train its members one by one (--seed) and "
                           f"combine them with `diffsim ensemble-neuraldem`")
    data = HopperFieldData(load_dataset(dataset, "train"))
    if model is None:
        model = NeuralDEM(config, data.stats(), metadata={"dataset": str(dataset), "runs": len(data.runs),
                                                          "flux_weight": flux_weight, "order_weight": order_weight,
                                                          "flux_units": flux_units, "mass_weight": mass_weight,
                                                          "occupancy_loss": occupancy_loss},
                          **overrides)
    if batch % world:
        raise InvalidScene(f"train-neuraldem: the batch ({batch}) must be a multiple of the processes ({world})")
    order_runs = max(world, batch // 4 // world * world)   # an equal share on every process
    params = list(model.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    if extra is not None and "optimizer" in extra:
        opt.load_state_dict(extra["optimizer"])
    rng = np.random.default_rng(seed)   # one stream on every process: each takes its share of a batch
    if extra is not None and "rng" in extra:
        rng.bit_generator.state = json.loads(extra["rng"])

    def save(k, rng_state):
        if rank == 0:
            model.metadata["history"] = history[-50:]
            model.save(out, {"iteration": k, "history": history, "optimizer": opt.state_dict(),
                             "rng": json.dumps(rng_state)})

    def iteration(k):
        for g in opt.param_groups:
            g["lr"] = lr * 0.1 ** (k / max(iterations, 1))
        cond, t, xz, target, flux, run_flux = (a[rank::world] for a in data.batch(rng, batch, queries))
        slot = torch.from_numpy(data.slot_xz.astype(np.float32)).expand(len(xz), -1, -1)
        pred = model(cond, t, torch.cat([xz, slot], 1))
        q = xz.shape[1]
        loss = field_loss(model, pred[:, :q], target, occupancy_loss)
        if flux_weight:
            loss = loss + flux_weight * flux_loss(model, data, pred[:, q:], flux,
                                                  run_flux if flux_units == "run" else None)
        ob = data.order_batch(rng, order_runs) if order_weight else None
        if ob is not None:
            loss = loss + order_weight * order_loss(model, *(a[rank::world] for a in ob))
        if mass_weight:
            mb = data.mass_batch(rng, order_runs)
            loss = loss + mass_weight * mass_loss(model, *(a[rank::world] for a in mb))
        return descend(opt, loss, params, world), "fields"

    optimise(iteration, start, iterations, save, history, checkpoint_every, rng, out, "train-neuraldem",
             progress, rank)
    return model


def evaluate_run(model: NeuralDEM, run: dict, grid: FieldGrid, radius: float,
                 iou_times=(0.1, 0.3, 0.5, 0.8, 1.2), **figure_options) -> dict:
    """Surrogate against one held-out run: the discharge figures of both (the run's from its
    own mass, which equals the DEM's trace at every frame), the flow regime of both (the
    exit-order ratio of their fields at the gate's opening, funnel flow from
    ``diffsim.dem.discharge.FUNNEL_ORDER``), and the IoU of the occupied region
    (occupancy > 0.3) at ``iou_times`` (s after the gate opened)."""
    from diffsim.dem import discharge_figures
    from diffsim.dem.discharge import FUNNEL_ORDER
    from .granular_fields import exit_order_from_fields
    cond = dict(zip(CONDITIONS, map(float, run["conditions"])))
    times = run["time"].astype(np.float64)
    nodes = grid.nodes().reshape(-1, 2)
    inside = run["occupancy"].reshape(len(times), -1).sum(-1) * model.stats["density"] * grid.depth * grid.h ** 2
    truth = discharge_figures(times, np.maximum.accumulate(run["total_mass"] - inside), run["total_mass"])
    pred = model.figures(cond, times, extrapolate=True, **figure_options)
    geometry = (cond["angle"], model.stats["orifice"], radius)
    order_true = exit_order_from_fields(run["occupancy"][0].reshape(-1), run["exit_time"][0].reshape(-1), nodes,
                                        *geometry)
    ious = []
    for k, tq in enumerate((0.0, *iou_times)):
        f = int(np.argmin(np.abs(times - tq)))
        with torch.no_grad():
            fields = model.fields(cond, [times[f]], nodes, extrapolate=True)
        phi = fields["occupancy"][0].numpy()
        if k == 0:
            order_pred = exit_order_from_fields(phi, fields["exit_time"][0].numpy(), nodes, *geometry)
            continue
        a, b = phi > 0.3, run["occupancy"][f].reshape(-1) > 0.3
        ious.append(float((a & b).sum() / (a | b).sum()) if (a | b).any() else 1.0)   # both empty: they agree
    regime = lambda r: None if not np.isfinite(r) else ("funnel" if r >= FUNNEL_ORDER else "mass")  # noqa: E731
    return {"conditions": cond, "pred": {**pred, "exit_order_ratio": order_pred, "regime": regime(order_pred)},
            "true": {**truth, "exit_order_ratio": order_true, "regime": regime(order_true)}, "iou": ious}


def relative_error(a, b) -> float:
    return abs(a - b) / abs(b) if b else math.inf
