"""A NeuralDEM-style surrogate of hopper discharge (torch only).

The granular material is a set of fields (``learned.granular_fields``) queried at any
point (x, z) and time t, conditioned on scalars (hopper angle, sliding and rolling
friction). As in NeuralDEM (Alkin et al. 2025): a set of learnable latent tokens is
processed by transformer blocks whose layer norms are modulated by the conditioning
(adaLN: scale, shift and gate from an embedding of the scalars and t); a Perceiver-style
decoder lets each query point (Fourier features of its position) attend to the latents and
reads occupancy, velocity, displacement and exit time there. The discharge figures follow
from the occupancy: the mass inside is its integral over the hopper, the discharged mass
the rest, the outflow rate that curve's steady slope. Everything is differentiable in the
conditioning scalars (inverse design through the surrogate).

Model files (``learned.model_file``): format "diffsim-neuraldem", ``config``, ``stats``
(trained ranges, field scales, grid, geometry), ``state_dict``, ``metadata``.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from torch import nn

from diffsim.errors import InvalidScene

from .granular_fields import CONDITIONS, FIELDS, slot_line
from .model_file import instantiate, read_model_file, resolve_config, write_model_file

FORMAT, VERSION = "diffsim-neuraldem", 1
CONFIGS = {
    "small": dict(width=64, latents=32, blocks=3, heads=4, frequencies=12, condition_frequencies=3,
                  decoder_hidden=96),
    "paper": dict(width=192, latents=256, blocks=8, heads=6, frequencies=32, condition_frequencies=3,
                  decoder_hidden=384),
}
# ``frequencies`` embed time and position; the conditions get ``condition_frequencies``: the
# outputs vary smoothly with them and a sweep samples them at a few dozen points, where
# finer features let the network tell the training runs apart instead of interpolating
# (files without the key used ``frequencies`` for the conditions too)
#: fluxes under this fraction of the peak count as no flow in the discharge figures
NO_FLOW = 0.02
#: the occupancy's ceiling (a sigmoid times it; a packed bed is ~0.6)
OCCUPANCY_MAX = 0.7
#: conditioning within this fraction of the trained span beyond its ends warns; farther raises
EXTRAPOLATION = 0.05


class ConditionOutOfRange(InvalidScene):
    """A conditioning scalar lies outside the range the surrogate was trained on."""


def fourier_features(u: torch.Tensor, frequencies) -> torch.Tensor:
    """(..., D) in about [-1, 1] -> u, then sin and cos of pi 2^(k/2) u for k < the
    dimension's count of ``frequencies`` (one int for every dimension, or one per dimension),
    dimension by dimension."""
    counts = [frequencies] * u.shape[-1] if isinstance(frequencies, int) else list(frequencies)
    sins, coss = [], []
    for d, n in enumerate(counts):
        a = u[..., d:d + 1] * (math.pi * 2.0 ** (0.5 * torch.arange(n, dtype=u.dtype, device=u.device)))
        sins.append(torch.sin(a))
        coss.append(torch.cos(a))
    return torch.cat([u, *sins, *coss], -1)


class AdaBlock(nn.Module):
    """Pre-norm transformer block whose norms are modulated by a conditioning vector
    (adaLN-zero: the modulation starts at zero, so each block starts as the identity)."""

    def __init__(self, width: int, heads: int, cross: bool = False):
        super().__init__()
        self.cross = cross
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))
        self.modulation = nn.Linear(width, 6 * width)
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        s1, b1, g1, s2, b2, g2 = self.modulation(cond).unsqueeze(1).chunk(6, -1)
        h = self.norm1(x) * (1 + s1) + b1
        kv = context if self.cross else h
        x = x + g1 * self.attn(h, kv, kv, need_weights=False)[0]
        h = self.norm2(x) * (1 + s2) + b2
        return x + g2 * self.mlp(h)


class NeuralDEM(nn.Module):
    """The surrogate with the ranges, scales and geometry it was trained with.

    Args:
        config: a :data:`CONFIGS` name or dict (overridable key by key).
        stats: ``ranges`` {name: (lo, hi)} of the conditions and ``time``; ``scales``
            {field: typical magnitude}; ``grid`` (lo, hi, spacing, depth) of the training
            fields; ``density`` (kg/m^3), ``total_mass`` (kg), ``orifice`` (m), ``outlet_z``.
    """

    def __init__(self, config="small", stats: dict | None = None, metadata: dict | None = None, **overrides):
        super().__init__()
        cfg = resolve_config(CONFIGS, config, overrides, "NeuralDEM")
        self.config, self.stats, self.metadata = cfg, dict(stats or {}), dict(metadata or {})
        w, nf = cfg["width"], cfg["frequencies"]
        self._embedding = [cfg.get("condition_frequencies", nf)] * len(CONDITIONS) + [nf]
        self.condition = nn.Sequential(nn.Linear(sum(2 * n + 1 for n in self._embedding), w), nn.GELU(),
                                       nn.Linear(w, w))
        self.latents = nn.Parameter(0.02 * torch.randn(cfg["latents"], w))
        self.blocks = nn.ModuleList(AdaBlock(w, cfg["heads"]) for _ in range(cfg["blocks"]))
        self.query = nn.Sequential(nn.Linear(2 * (2 * nf + 1), w), nn.GELU(), nn.Linear(w, w))
        self.read = AdaBlock(w, cfg["heads"], cross=True)
        self.head = nn.Sequential(nn.LayerNorm(w), nn.Linear(w, cfg["decoder_hidden"]), nn.GELU(),
                                  nn.Linear(cfg["decoder_hidden"], len(FIELDS)))

    # --------------------------------------------------------------------- normalisation
    def _unit(self, value: torch.Tensor, name: str) -> torch.Tensor:
        lo, hi = self.stats["ranges"][name]
        return 2.0 * (value - lo) / max(hi - lo, 1e-12) - 1.0

    def check_conditions(self, conditions: dict, extrapolate: bool = False) -> None:
        """Raise :class:`ConditionOutOfRange` (or warn, with ``extrapolate``) for a scalar
        beyond its trained range by more than ``EXTRAPOLATION`` of the span; warn within."""
        for name in (*CONDITIONS, "time"):
            if name not in conditions:
                continue
            lo, hi = self.stats["ranges"][name]
            values = torch.as_tensor(conditions[name]).detach().double().reshape(-1)
            worst = float(torch.clamp(torch.maximum(lo - values, values - hi), min=0).max())
            if worst <= 1e-6 * (hi - lo):   # round-off (a time grid built from the range itself)
                continue
            span = (f"{values.min().item():.4g}" if values.min() == values.max() else
                    f"{values.min().item():.4g}..{values.max().item():.4g}")
            msg = f"{name} = {span} lies {worst:.3g} outside the trained range [{lo:.4g}, {hi:.4g}]"
            if worst > EXTRAPOLATION * (hi - lo) and not extrapolate:
                raise ConditionOutOfRange(f"{msg}; the surrogate would extrapolate (pass extrapolate=True to "
                                          f"accept, or train on a wider sweep)")
            warnings.warn(f"{msg}: extrapolating", RuntimeWarning, stacklevel=3)

    # --------------------------------------------------------------------------- fields
    def encode(self, conditions: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Latent tokens (B, L, W) and conditioning vectors (B, W) for conditions (B, C)
        (physical units, in :data:`CONDITIONS` order) at times t (B,) s after the gate opened."""
        units = torch.stack([self._unit(conditions[:, i], n) for i, n in enumerate(CONDITIONS)]
                            + [self._unit(t, "time")], -1)
        cond = self.condition(fourier_features(units, self._embedding))
        x = self.latents.expand(len(cond), -1, -1)
        for block in self.blocks:
            x = block(x, cond)
        return x, cond

    def decode(self, latents: torch.Tensor, cond: torch.Tensor, xz: torch.Tensor) -> torch.Tensor:
        """Fields (B, Q, len(FIELDS)) in physical units at query points xz (B, Q, 2) m."""
        lo, hi = self.stats["grid"][0], self.stats["grid"][1]
        lo = torch.as_tensor(lo, dtype=xz.dtype)
        hi = torch.as_tensor(hi, dtype=xz.dtype)
        units = 2.0 * (xz - lo) / (hi - lo) - 1.0
        q = self.query(fourier_features(units, self.config["frequencies"]))
        raw = self.head(self.read(q, cond, context=latents))
        scales = torch.as_tensor([self.stats["scales"][f] for f in FIELDS], dtype=raw.dtype)
        occupancy = OCCUPANCY_MAX * torch.sigmoid(raw[..., :1])     # a packed bed is ~0.6; empty is 0
        return torch.cat([occupancy, raw[..., 1:] * scales[1:]], -1)

    def forward(self, conditions: torch.Tensor, t: torch.Tensor, xz: torch.Tensor) -> torch.Tensor:
        latents, cond = self.encode(conditions, t)
        return self.decode(latents, cond, xz)

    def fields(self, conditions: dict, times, points=None, extrapolate: bool = False) -> dict:
        """``{FIELD: (T, Q) tensor}`` for one set of ``conditions`` ({name: value}) at
        ``times`` (s after the gate opened) and ``points`` (Q, 2) m (default: the training
        grid's nodes, flattened)."""
        self.check_conditions({**conditions, "time": times}, extrapolate)
        dtype = next(self.parameters()).dtype
        t = torch.as_tensor(times, dtype=dtype).reshape(-1)
        c = torch.stack([torch.as_tensor(conditions[n], dtype=dtype) for n in CONDITIONS]).expand(len(t), -1)
        xz = torch.as_tensor(self.grid_nodes() if points is None else points, dtype=dtype)
        out = self(c, t, xz.expand(len(t), -1, -1))
        return {name: out[..., i] for i, name in enumerate(FIELDS)}

    def grid_nodes(self, stride: int = 1) -> np.ndarray:
        """(Q, 2) nodes of the training grid (every ``stride``-th in x and z)."""
        lo, hi, h, _ = self.stats["grid"]
        xs = np.arange(lo[0], hi[0] + 0.5 * h, h)[::stride]
        zs = np.arange(lo[1], hi[1] + 0.5 * h, h)[::stride]
        return np.stack(np.meshgrid(xs, zs, indexing="ij"), -1).reshape(-1, 2)

    # ------------------------------------------------------------------------ discharge
    def slot_points(self) -> tuple[np.ndarray, float]:
        """Points (P, 2) across the slot on the line z = 0 (at the grid nodes' x, reaching two
        spacings past each edge; :func:`learned.granular_fields.slot_line`) and their
        spacing (m): where :meth:`slot_flux` integrates."""
        lo, _, h, _ = self.stats["grid"]
        return slot_line(self.stats["orifice"], h, lo[0])

    def slot_flux(self, occupancy: torch.Tensor, vz: torch.Tensor, dx: float) -> torch.Tensor:
        """Mass flux (kg/s) from the fields at :meth:`slot_points` (last axis): density x
        depth x the integral of occupancy x descent speed (trapezoid); negative flux counts
        as 0."""
        density = (occupancy * -vz).clamp_min(0)
        return self.stats["density"] * self.stats["grid"][3] * torch.trapezoid(density, dx=dx, dim=-1)

    def outflow(self, conditions: dict, times, extrapolate: bool = False) -> torch.Tensor:
        """Mass flux (kg/s) through the slot at ``times`` (:meth:`slot_flux`)."""
        points, dx = self.slot_points()
        f = self.fields(conditions, times, points, extrapolate)
        return self.slot_flux(f["occupancy"], f["vz"], dx)

    def discharge_curve(self, conditions: dict, times, extrapolate: bool = False, no_flow: float = 0.0,
                        every: int = 1) -> torch.Tensor:
        """Discharged mass (kg) at ``times`` (increasing, from the gate's opening): the time
        integral (trapezoid) of :meth:`outflow`, fluxes under ``no_flow`` x their peak taken
        as none. ``every``: the flux evaluated at every ``every``-th time (and the last)
        and interpolated linearly between them (the network's cost is per time; the flux
        is smooth in time)."""
        t = torch.as_tensor(times, dtype=next(self.parameters()).dtype).reshape(-1)
        if every > 1:
            keep = np.unique(np.append(np.arange(0, len(t), every), len(t) - 1))
            q_kept = self.outflow(conditions, t[keep], extrapolate)
            hi = np.clip(np.searchsorted(keep, np.arange(len(t))), 1, len(keep) - 1)
            tn, t0, t1 = t.detach().numpy(), t[keep[hi - 1]].numpy(), t[keep[hi]].numpy()
            w = torch.as_tensor((tn - t0) / (t1 - t0), dtype=t.dtype)
            q = (1 - w) * q_kept[hi - 1] + w * q_kept[hi]
        else:
            q = self.outflow(conditions, t, extrapolate)
        if no_flow:
            q = torch.where(q < no_flow * q.max(), torch.zeros_like(q), q)
        steps = 0.5 * (q[1:] + q[:-1]) * (t[1:] - t[:-1])
        return torch.cat([q.new_zeros(1), torch.cumsum(steps, 0)])

    def mass_inside(self, conditions: dict, times, extrapolate: bool = False, stride: int = 1) -> torch.Tensor:
        """Mass (kg) in the hopper at ``times`` (T,): the occupancy's integral over the grid
        (density x depth x h^2 per node, the deposit's exact quadrature), or over every
        ``stride``-th node in x and z (weight (stride h)^2: a cheaper estimate)."""
        _, _, h, depth = self.stats["grid"]
        nodes = self.grid_nodes(stride)
        phi = self.fields(conditions, np.atleast_1d(times), nodes, extrapolate=extrapolate)["occupancy"]
        return self.stats["density"] * depth * (stride * h) ** 2 * phi.sum(-1)

    def outflow_rate(self, conditions: dict, times=None, extrapolate: bool = False) -> torch.Tensor:
        """Outflow rate (kg/s), differentiable in the conditions: the least-squares slope of
        :meth:`discharge_curve` while 20-80% of the finally discharged mass has left (the
        window is chosen on the detached curve)."""
        times = torch.as_tensor(self.default_times() if times is None else times,
                                dtype=next(self.parameters()).dtype)
        m = self.discharge_curve(conditions, times, extrapolate)
        final = m[-1].detach()
        md = m.detach()
        use = (md >= 0.2 * final) & (md <= 0.8 * final)
        if int(use.sum()) < 2:
            raise InvalidScene("outflow_rate: the predicted curve has under two frames between 20% and 80% of "
                               "its final mass; query more times")
        t, y = times[use], m[use]
        tc = t - t.mean()
        return (tc * (y - y.mean())).sum() / (tc * tc).sum()

    def figures(self, conditions: dict, times=None, extrapolate: bool = False, every: int = 2,
                residual_times: int = 12) -> dict:
        """The discharge figures of :func:`diffsim.dem.discharge_figures` from the surrogate:
        the curve of :meth:`discharge_curve` (the flux at every ``every``-th time) with
        fluxes under ``NO_FLOW`` of the peak taken as none (a DEM's flow stops with its last
        sphere; a network's flux only gets small), the residual mass from
        :meth:`mass_inside` (the flux integral's error does not accumulate into it) as the
        least mass inside over the second half of the times (``residual_times`` of them,
        every third node in x and z: the cost of 1.3 fields at 12): material cannot come
        back, but a network's fields can show some again (measured: 15% of the mass at
        2.5 s after under 1% at 2.0 s on a held-out run)."""
        from diffsim.dem import discharge_figures
        times = np.asarray(self.default_times() if times is None else times, float)
        late = np.linspace(len(times) // 2, len(times) - 1, residual_times)
        late = times[np.unique(late.round().astype(int))]
        with torch.no_grad():
            curve = self.discharge_curve(conditions, times, extrapolate, no_flow=NO_FLOW, every=every)
            curve = curve.double().numpy()
            inside = float(self.mass_inside(conditions, late, extrapolate, stride=3).min())
        total = self.stats["total_mass"]
        out = discharge_figures(times, curve, total)
        out["residual_mass_fraction"] = max(0.0, min(1.0, inside / total))
        return out

    def default_times(self) -> np.ndarray:
        lo, hi = self.stats["ranges"]["time"]
        return np.arange(lo, hi + 1e-9, self.stats.get("frame_dt", 0.02))

    # ------------------------------------------------------------------------------ io
    def save(self, path, extra: dict | None = None):
        blob = {"format": FORMAT, "version": VERSION, "config": self.config, "stats": self.stats,
                "metadata": self.metadata, "state_dict": {k: v.detach().cpu() for k, v in self.state_dict().items()}}
        blob.update(extra or {})
        write_model_file(path, blob)

    @classmethod
    def load(cls, path, dtype=torch.float32, with_extra: bool = False):
        """The model of ``path``: a :class:`NeuralDEM`, or a :class:`NeuralDEMEnsemble` where
        the file holds several (``diffsim ensemble-neuraldem``)."""
        blob = read_model_file(path, FORMAT, VERSION, ("config", "stats", "state_dict"),
                               "train one with `diffsim train-neuraldem`")
        if "members" in blob:
            make = lambda: NeuralDEMEnsemble([NeuralDEM(m["config"], m["stats"], m.get("metadata"))  # noqa: E731
                                              for m in blob["members"]], blob.get("metadata"))
        else:
            make = lambda: NeuralDEM(blob["config"], blob["stats"], blob.get("metadata"))  # noqa: E731
        model = instantiate(path, "NeuralDEM", make, blob, dtype)
        return (model, blob) if with_extra else model


def _same_stat(key: str, a, b) -> bool:
    """Whether two members' ``stats[key]`` agree: the field ``scales`` within 10% (they are
    typical magnitudes of the data: a sweep run again differs in rounding), the rest (ranges,
    grid, geometry) to 1e-6."""
    tolerance = 0.1 if key == "scales" else 1e-6
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_stat(key, a[n], b[n]) for n in a)
    try:
        x, y = np.asarray(a, float), np.asarray(b, float)
    except (TypeError, ValueError):
        return a == b
    return x.shape == y.shape and np.allclose(x, y, rtol=tolerance, atol=1e-12)


class NeuralDEMEnsemble(NeuralDEM):
    """Several NeuralDEMs trained on the same data (other seeds) acting as one: the fields
    are the members' mean, so every figure, the scene's step module and the gradients in
    the conditions follow from the mean fields exactly as from one model's.

    Why: members trained alike disagree most where the sweep sampled the conditions
    thinly (measured: the worst outflow-rate error and the regimes moved with the seed as
    much as with any change of the training), and their mean varies less there. It costs
    one evaluation per member."""

    def __init__(self, members, metadata: dict | None = None):
        nn.Module.__init__(self)
        members = list(members)
        if not members or not all(isinstance(m, NeuralDEM) and not isinstance(m, NeuralDEMEnsemble)
                                  for m in members):
            raise InvalidScene("NeuralDEMEnsemble: give one or more NeuralDEM models (not ensembles)")
        first = members[0].stats
        for k, m in enumerate(members[1:], 1):
            differ = sorted(key for key in set(first) | set(m.stats) if not _same_stat(key, first.get(key),
                                                                                          m.stats.get(key)))
            if differ:
                raise InvalidScene(f"NeuralDEMEnsemble: member {k} was trained on other data or geometry "
                                   f"(stats {differ} differ from member 0's)")
        self.members = nn.ModuleList(members)
        self.config, self.stats = dict(members[0].config), dict(first)
        self.metadata = {**(metadata or {}), "ensemble": len(members)}

    def encode(self, *args):
        raise NotImplementedError("a NeuralDEMEnsemble has no single latent set: call the model (or fields) "
                                  "for the members' mean fields, or encode a member")

    decode = encode      # both take the one latent set an ensemble does not have

    def forward(self, conditions: torch.Tensor, t: torch.Tensor, xz: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(conditions, t, xz) for m in self.members]).mean(0)

    def save(self, path, extra: dict | None = None):
        members = [{"config": m.config, "stats": m.stats, "metadata": m.metadata} for m in self.members]
        super().save(path, {"members": members, **(extra or {})})

    @classmethod
    def combine(cls, paths, out=None, dtype=torch.float32) -> "NeuralDEMEnsemble":
        """The ensemble of the model files ``paths`` (each one NeuralDEM), written to
        ``out`` if given."""
        ensemble = cls([NeuralDEM.load(p, dtype) for p in paths], {"sources": [str(p) for p in paths]})
        if out is not None:
            ensemble.save(out)
        return ensemble
