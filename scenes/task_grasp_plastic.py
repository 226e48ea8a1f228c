"""Task: grasp and lift a plastic object without slip and without crushing it. Two flat
tactile pads (FEM fingers, 10 x 10 x 3 mm, facing each other along x) close on a block of
plasticine (MPM, von Mises, 10 mm cube, E = 1e5 Pa, yield stress 1.5e3 Pa, 1 g, resting on
the floor under gravity), squeeze, lift it 2 mm and hold. FEM and MPM step together
(ds.FEMMPMCoupling); a squeeze past the yield stress leaves a permanent dent.

Objective: the block's centre of mass ends `lift` above where it started, held by friction
without slipping, and the block keeps its shape: its width between the fingers (the mean x
of the particles that started in its left and right face layers) shrinks by less than
`max_dent` of its rest width. Controls: each finger's closing velocity (along its
facing), a cubic spline of 4 waypoints per finger (0.05 m/s per unit) added to the nominal
profile (close until the pads reach the block's faces, then lift at 0.2 m/s: no grip, the
block stays on the floor). Loss: ((rise - lift) / lift)^2 + mean over the lift of
relu(slip ratio - 0.7)^2 per finger (|shear| / (friction x normal force) from each
finger's sensor) + (relu(dent - max_dent / 2) / max_dent)^2 at the end.
Success: the rise at the end is at least 90% of the lift, the slip ratio stays below 1 for
both fingers at every record interval of the lift and hold, and the dent is below
`max_dent`.

Options: lift (m, 2e-3), max_dent (fraction of the width, 0.1), friction (0.8),
yield_stress (Pa, 1.5e3), E_object (Pa, 1e5), E_sensor (Pa, 2e5), waypoints (4), dx (MPM
cell, m, 1e-3), dt (s, 4e-6: the grid contact only stops approach velocities, so a larger
step lets pressed material creep into a pad).
"""
import numpy as np
import torch

import diffsim as ds
from diffsim.tactile.sensor import mount_sensor
from diffsim.tasks import SplineControls, Task, finger_slip_ratios, finger_traces

SIZE = 0.010                                 # block edge (m)
CLOSE_SPEED, LIFT_SPEED, EVERY = 0.2, 0.2, 250
HOLD_RECORDS, SPACING = 2, 0.7               # records held after closing and at the end; particle spacing (cells)


def _setup(lift, friction, yield_stress, E_object, E_sensor, dx, dt):
    h = 0.5 * SIZE + 0.006                                   # room for the fingers
    top = 3 * dx + SIZE + 0.004 + lift
    mpm = ds.MPMSolver(domain_min=(-h, -h, 0.0), domain_max=(h, h, top), dt=dt,
                       grid=int(round(max(2 * h, top) / dx)), gravity=(0, 0, -9.81))
    floor = float(mpm.lo[2] + 3 * mpm.dx)
    zc = floor + 0.5 * SIZE
    block = mpm.add_body(ds.Box((0.0, 0.0, zc), (SIZE,) * 3),
                         ds.VonMises(E=E_object, nu=0.3, yield_stress=yield_stress, density=1000.0),
                         name="object", spacing=SPACING * mpm.dx)
    fem = ds.FEMSolver(dt=dt, gravity=(0, 0, 0), tape_substeps=EVERY)
    gap = mpm.dx                                             # the grid contact acts ~1 cell ahead of the particles
    period = EVERY * dt
    close = int(np.ceil(gap / CLOSE_SPEED / period))
    rise = int(np.ceil(lift / LIFT_SPEED / period))
    records = close + HOLD_RECORDS + rise + HOLD_RECORDS
    sensors, nominal = [], {}
    material = ds.FEMMaterial(E=E_sensor, nu=0.45, density=1100, mass_damping=300)
    for name, s in (("left", 1.0), ("right", -1.0)):
        prof = np.zeros((records, 6))
        prof[:close, 0] = s * gap / (close * period)
        prof[close + HOLD_RECORDS:close + HOLD_RECORDS + rise, 2] = lift / (rise * period)
        pad, plate, sensor = mount_sensor(
            fem, ds.flat_pad(width=0.010, depth=0.010, thickness=0.003, resolution=0.0015), material,
            apex=(-s * (0.5 * SIZE + gap), 0.0, zc), facing=(s, 0.0, 0.0), name=name, markers="grid",
            marker_grid=(6, 6), map_resolution=(8, 8),
            velocity=lambda t, p=prof: tuple(p[min(int(t / period), records - 1), :3]))
        sensors.append(sensor)
        nominal[plate.name] = prof
    both = ds.FEMMPMCoupling(mpm, fem, friction=friction)
    return both, block, sensors, nominal, close + HOLD_RECORDS


class GraspPlastic(Task):
    name = "grasp_plastic"

    def __init__(self, lift=2e-3, max_dent=0.1, friction=0.8, yield_stress=1.5e3, E_object=1e5, E_sensor=2e5,
                 waypoints=4, dx=1e-3, dt=4e-6):
        self.lift, self.max_dent, self.friction = float(lift), float(max_dent), float(friction)
        self.system, block, self.sensors, nominal, self.lift_start = _setup(
            lift, friction, yield_stress, E_object, E_sensor, dx, dt)
        records = len(next(iter(nominal.values())))
        self.steps, self.record_every = records * EVERY, EVERY
        x0 = self.system.mpm.initial_positions()[block.slice]
        layer = SPACING * dx
        self.block = block.slice
        self.left = np.flatnonzero(x0[:, 0] < x0[:, 0].min() + 0.5 * layer)
        self.right = np.flatnonzero(x0[:, 0] > x0[:, 0].max() - 0.5 * layer)
        self.width0 = float(x0[self.right, 0].mean() - x0[self.left, 0].mean())
        self.z0 = float(x0[:, 2].mean())
        # closing is +x for the left finger, -x for the right: one sign per dof
        self.controls = SplineControls(dofs=[(f"fem.{s.driver.name}", 0) for s in self.sensors], records=records,
                                       waypoints=int(waypoints), scale=[0.05, -0.05],
                                       nominal={f"fem.{k}": v for k, v in nominal.items()})

    def observe(self, rollout):
        xs = [s["mpm"]["x"][self.block] for _, s in rollout.records]
        out = {"rise": torch.stack([x[:, 2].mean() for x in xs]) - self.z0,
               "dent": 1.0 - (xs[-1][self.right, 0].mean() - xs[-1][self.left, 0].mean()) / self.width0}
        return {**out, **finger_traces(rollout, self.sensors)}

    def slip_ratio(self, run):
        """(fingers, records of the lift and hold) |shear| / (friction x normal force)."""
        return finger_slip_ratios(run.observed, self.sensors, self.friction, self.lift_start)

    def loss(self, run):
        rise, dent = run.observed["rise"][-1], run.observed["dent"]
        return (((rise - self.lift) / self.lift) ** 2 + (torch.relu(self.slip_ratio(run) - 0.7) ** 2).mean()
                + (torch.relu(dent - 0.5 * self.max_dent) / self.max_dent) ** 2)

    def success(self, run):
        ob = run.observed
        return bool(ob["rise"][-1].detach() >= 0.9 * self.lift and self.slip_ratio(run).detach().max() < 1.0
                    and ob["dent"].detach() < self.max_dent)

    def metrics(self, run):
        ob = run.observed
        return {"rise_m": float(ob["rise"][-1]), "max_slip_ratio": float(self.slip_ratio(run).detach().max()),
                "dent": float(ob["dent"]), "grip_force_n": float(ob["left_normal"][-1])}


def task(lift=2e-3, max_dent=0.1, friction=0.8, yield_stress=1.5e3, E_object=1e5, E_sensor=2e5, waypoints=4,
         dx=1e-3, dt=4e-6):
    return GraspPlastic(lift, max_dent, friction, yield_stress, E_object, E_sensor, waypoints, dx, dt)


def build(lift=2e-3, friction=0.8, yield_stress=1.5e3, E_object=1e5, E_sensor=2e5, dx=1e-3, dt=4e-6):
    """The nominal (empty) grasp, for ``diffsim run``."""
    both, block, sensors, nominal, _ = _setup(lift, friction, yield_stress, E_object, E_sensor, dx, dt)
    steps = len(next(iter(nominal.values()))) * EVERY
    return ds.Scene(both, description=__doc__, steps=steps, every=max(1, steps // 40), camera=(20.0, -70.0),
                    view_bounds=(np.array([-0.012, -0.012, 0.0]), np.array([0.012, 0.012, 0.02])),
                    options=dict(lift=lift, friction=friction, yield_stress=yield_stress, E_object=E_object,
                                 E_sensor=E_sensor, dx=dx, dt=dt))
