"""Inserting spheres: pours (a mass rate into a region) and random non-overlapping packings."""
from __future__ import annotations

import numpy as np

from ..errors import InvalidScene


class Pour:
    """Spheres inserted at ``mass_rate`` (kg/s) into the box ``[lo, hi]`` (m) from
    ``start`` to ``stop`` (s), at random non-overlapping positions, every ``interval`` s,
    with ``velocity`` (m/s). Room for all of them is reserved when the solver is built."""

    def __init__(self, lo, hi, radius, mass_rate, start=0.0, stop=1.0, interval=0.01, velocity=(0, 0, 0), seed=0):
        self.lo, self.hi = np.asarray(lo, float), np.asarray(hi, float)
        self.radius = radius
        if not mass_rate > 0 or not stop > start or not interval > 0:
            raise InvalidScene("Pour needs mass_rate > 0 kg/s, stop > start and interval > 0 s")
        self.mass_rate, self.start, self.stop, self.interval = float(mass_rate), float(start), float(stop), float(interval)
        self.velocity = np.asarray(velocity, float)
        self.rng = np.random.default_rng(seed)
        self.inserted_mass = 0.0
        self.next_time = self.start


def random_packing(lo, hi, radius, count, rng, obstacles=None, max_rounds=200):
    """Random sequential addition: up to ``count`` non-overlapping spheres in [lo, hi] (m),
    ``radius`` a number or (min, max); ``obstacles`` (x (M,3), r (M,)) must not be
    overlapped. Returns (x (k,3), r (k,)) with k <= count."""
    from scipy.spatial import cKDTree
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    rmin, rmax = (float(radius), float(radius)) if np.isscalar(radius) else map(float, radius)
    if np.any(hi - lo < 2 * rmax):
        raise InvalidScene(f"region [{lo.tolist()}, {hi.tolist()}] is thinner than a sphere diameter {2 * rmax} m")
    ox, orad = obstacles if obstacles is not None else (np.zeros((0, 3)), np.zeros(0))
    tree = cKDTree(ox) if len(ox) else None
    cell = 2 * rmax
    grid: dict = {}
    xs, rs = [], []
    for _ in range(max_rounds):
        need = count - len(xs)
        if need <= 0:
            break
        cand = rng.uniform(lo + rmax, hi - rmax, (need * 3 + 8, 3))
        crad = rng.uniform(rmin, rmax, len(cand))
        if tree is not None:
            near = tree.query_ball_point(cand, crad + orad.max())
            ok = np.array([not any(np.linalg.norm(ox[j] - c) < r + orad[j] for j in nb)
                           for c, r, nb in zip(cand, crad, near)], bool)
            cand, crad = cand[ok], crad[ok]
        for c, r in zip(cand, crad):
            key = tuple(np.floor(c / cell).astype(int))
            clash = False
            for dx in (-1, 0, 1):
                for dy in (-1, 0, 1):
                    for dz in (-1, 0, 1):
                        for k in grid.get((key[0] + dx, key[1] + dy, key[2] + dz), ()):
                            if np.sum((xs[k] - c) ** 2) < (rs[k] + r) ** 2:
                                clash = True
                                break
                        if clash:
                            break
                    if clash:
                        break
                if clash:
                    break
            if not clash:
                grid.setdefault(key, []).append(len(xs))
                xs.append(c)
                rs.append(r)
                if len(xs) == count:
                    break
    return np.asarray(xs).reshape(-1, 3), np.asarray(rs)
