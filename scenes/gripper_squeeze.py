"""Gripper squeeze: a two-finger parallel gripper whose fingers are tactile sensors (flat
FEM pads, 10 mm tall x 16 mm x 3 mm, a 9 x 6 marker grid each, sensors "left" and
"right" on one FEMSolver) closes on an elastoplastic block (MPM, von Mises, 16 x 12 x 12 mm,
resting on the floor), squeezes it from both sides, holds, optionally lifts it, and opens
again: the block keeps a narrower waist (permanent plastic strain). ds.FEMMPMCoupling steps
FEM and MPM together. The summary traces both fingers' normal and shear forces (sensor
frames: normal along the finger's facing, +x for "left", -x for "right");
``max_penetration`` is the deepest any particle gets inside a finger's pad (m).

Options: depth (m each finger travels beyond the block's rest face, 3e-3; the grid contact
acts about a cell ahead of the particles, so the block yields a little less), speed
(closing speed, m/s, 0.4; the fingers open at twice that), yield_stress (Pa, 3e3),
E_object (Pa, 1e5), friction (finger-block Coulomb coefficient, 0.8), E_sensor (Pa, 2e5),
hold (s, 2e-3), lift (m both fingers rise after the hold, 0), lift_speed (m/s, 0.2),
release (open the fingers by ``depth`` at the end, True), gravity (True), dx (MPM cell, m,
1e-3), spacing (particle spacing in cells, 0.7), dt (s, 4e-6: the grid contact only
stops approach velocities, so pressed material creeps into a pad at a rate that grows
with dt, ~0.5 cell at 4e-6 with the defaults).
"""
import numpy as np

import diffsim as ds
from diffsim.tactile.sensor import mount_sensor

SIZE = (0.016, 0.012, 0.012)          # block (m): x (squeezed) , y, z


class GripperScene(ds.Scene):
    """A :class:`~diffsim.Scene` whose diagnostics' ``max_penetration`` is the deepest a
    particle gets inside either finger's pad (m; 0 when none is inside one)."""

    def diagnostics(self) -> dict:
        d = self.solver.diagnostics()
        d["max_penetration"] = max(0.0, max(finger_penetration(self.solver).values()))
        return d


def build(depth=3e-3, speed=0.4, yield_stress=3e3, E_object=1e5, friction=0.8, E_sensor=2e5, hold=2e-3,
          lift=0.0, lift_speed=0.2, release=True, gravity=True, dx=1e-3, spacing=0.7, dt=4e-6):
    sx, sy, sz = SIZE
    hx, hy = 0.5 * (sx + 0.01), 0.5 * (sy + 0.014)          # room for the fingers and the bulge
    top = 3 * dx + sz + 0.008 + lift                         # floor 3 cells up, room above
    mpm = ds.MPMSolver(domain_min=(-hx, -hy, 0.0), domain_max=(hx, hy, top), dt=dt,
                       grid=int(round(max(2 * hx, 2 * hy, top) / dx)), gravity=(0, 0, -9.81) if gravity else (0, 0, 0))
    floor = float(mpm.lo[2] + 3 * mpm.dx)
    zc = floor + 0.5 * sz
    mpm.add_body(ds.Box((0.0, 0.0, zc), SIZE),
                 ds.VonMises(E=E_object, nu=0.3, yield_stress=yield_stress, density=1000.0),
                 name="object", spacing=spacing * mpm.dx)
    fem = ds.FEMSolver(dt=dt, gravity=(0, 0, 0), tape_substeps=200)
    gap = mpm.dx                        # the grid contact reaches ~1 cell beyond the particles
    t_close = (gap + depth) / speed
    t_lift = t_close + hold
    t_open = t_lift + lift / lift_speed
    t_end = t_open + (depth / (2 * speed) + 1.5e-3 if release else 0.0)   # open at 2 x speed, settle

    def finger(direction):              # +1: the left finger (moves +x), -1: the right one
        def velocity(t):
            opening = release and t_open <= t < t_open + depth / (2 * speed)
            vx = speed if t < t_close else (-2 * speed if opening else 0.0)
            vz = lift_speed if t_lift <= t < t_open else 0.0
            return (direction * vx, 0.0, vz)
        return velocity

    material = ds.FEMMaterial(E=E_sensor, nu=0.45, density=1100, mass_damping=300)
    for name, s in (("left", 1.0), ("right", -1.0)):
        mount_sensor(fem, ds.flat_pad(width=0.010, depth=0.016, thickness=0.003, resolution=0.001), material,
                     apex=(-s * (0.5 * sx + gap), 0.0, zc), facing=(s, 0.0, 0.0), velocity=finger(s), name=name,
                     markers="grid", marker_grid=(9, 6))
    both = ds.FEMMPMCoupling(mpm, fem, friction=friction)
    steps = int(round(t_end / dt))
    lo, hi = np.array([-0.016, -0.012, 0.0]), np.array([0.016, 0.012, top])
    return GripperScene(both, description=__doc__, steps=steps, every=max(1, steps // 40), camera=(20.0, -75.0),
                        view_bounds=(lo, hi),
                        options=dict(depth=depth, speed=speed, yield_stress=yield_stress, E_object=E_object,
                                     friction=friction, E_sensor=E_sensor, hold=hold, lift=lift,
                                     lift_speed=lift_speed, release=release, gravity=gravity, dx=dx,
                                     spacing=spacing, dt=dt))


def finger_penetration(both) -> dict:
    """``{finger: signed depth (m) of the deepest particle inside the finger's pad}``:
    positive when a particle lies inside the pad (behind its deformed contact surface and
    within its footprint: the smallest distance to the contact surface, the pad's sides and
    its back plate), negative when none does (then roughly the clearance of the closest
    particle). Measured in each sensor's rest frame against its depth map (nearest pixel)."""
    x = both.mpm.positions()
    xf = both.fem.positions()
    out = {}
    for s in both.fem.instruments:
        depth = np.asarray(s.read(xf)["depth"])
        p = s.to_sensor_frame(x)
        u, v, h = p @ s.t1, p @ s.t2, p @ s.normal
        H, W = s.map_shape
        (u0, v0), (u1, v1) = s.uv_lo, s.uv_hi
        j = np.clip(np.rint((u - u0) / (u1 - u0) * (W - 1)).astype(np.int64), 0, W - 1)
        i = np.clip(np.rint((v - v0) / (v1 - v0) * (H - 1)).astype(np.int64), 0, H - 1)
        surface = s.top - depth[i, j]
        inside = np.min([surface - h, u - u0, u1 - u, v - v0, v1 - v, h - s.center @ s.normal], axis=0)
        out[s.name] = float(inside.max())
    return out


def object_width(both, band=1e-3) -> float:
    """The block's extent along x (m) in a slab of half-thickness ``band`` around its median
    height (the part the fingers squeeze)."""
    x = both.mpm.positions("object")
    mid = np.abs(x[:, 2] - np.median(x[:, 2])) < band
    return float(x[mid, 0].max() - x[mid, 0].min())
