"""Task: object repositioning. A flat tactile pad (FEM, 10 x 10 x 3 mm, facing down) presses
on the top of a soft block (FEM, 12 x 12 x 6 mm, E = 3e5 Pa, 0.9 g) resting on a rigid
table and drags it, by friction through the contact, to a target pose on the table: moved
by `shift` (x, y) and turned by `yaw` about the vertical.

Objective: the block's pose (centroid and yaw, the best-fit rotation of its nodes about
the vertical) at the target when the pad stops, without losing the grip on the way.
Controls: the back plate's x and y velocities (0.1 m/s per unit) and its angular
velocity about the vertical (10 rad/s per unit), a cubic spline of 4 waypoints each over the
move (the press before it and a 3 ms hold after it are fixed), added to the nominal profile
(press 0.35 mm, then stand still: the block stays where it is).
The pad turns about its own centre. Pad-block friction 1.0, block-table friction 0.2
(each surface uses its own body's coefficient).
Loss: |centroid - target| / 1 mm squared + ((yaw - target yaw) / 1 degree)^2, both at the
end, + mean over the move of relu(slip ratio - 0.7)^2 (the pad's |shear| / (friction x
normal force): DiffTactile's slip measure).
Success: at the end the centroid is within 0.3 mm of the target and the yaw within 1.5
degrees of the target yaw.

Options: shift (m, (3e-3, 1.5e-3): x and y), yaw (degrees, 20), move (s the pad has to move
the block, 0.03), E_object (Pa, 3e5), E_sensor (Pa, 1e5), waypoints (4), dt (s, 2e-5).
"""
import numpy as np
import torch

import diffsim as ds
from diffsim.tactile.sensor import mount_sensor
from diffsim.tasks import SplineControls, Task, sensor_trace, slip_ratio

BLOCK = (0.012, 0.012, 0.006)
PRESS, PRESS_SPEED, GAP, EVERY = 3.5e-4, 0.05, 5e-5, 50
HOLD_RECORDS = 3
PAD_FRICTION, TABLE_FRICTION = 1.0, 0.2


def _setup(move, E_object, E_sensor, dt):
    sim = ds.FEMSolver(dt=dt, gravity=(0, 0, -9.81), tape_substeps=400)
    sim.add_collider(ds.PlaneCollider(point=(0, 0, 0), normal=(0, 0, 1), size=0.06, name="table"))
    block = sim.add_body(ds.box_tet_mesh(BLOCK, (6, 6, 3), origin=(-BLOCK[0] / 2, -BLOCK[1] / 2, 1e-6)),
                         ds.FEMMaterial(E=E_object, nu=0.4, density=1000, mass_damping=100),
                         contact=ds.PenaltyContact(stiffness=1e9, friction=TABLE_FRICTION), name="block")
    period = EVERY * dt
    press = int(np.ceil((PRESS + GAP) / PRESS_SPEED / period))
    records = press + max(1, int(round(move / period))) + HOLD_RECORDS
    nominal = np.zeros((records, 6))
    nominal[:press, 2] = -(PRESS + GAP) / (press * period)
    pad, plate, sensor = mount_sensor(
        sim, ds.flat_pad(width=0.010, depth=0.010, thickness=0.003, resolution=0.0015),
        ds.FEMMaterial(E=E_sensor, nu=0.45, density=1100, mass_damping=300),
        ds.PenaltyContact(stiffness=1e9, friction=PAD_FRICTION), apex=(0.0, 0.0, BLOCK[2] + 1e-6 + GAP),
        name="sensor", markers="grid", marker_grid=(6, 6), map_resolution=(8, 8),
        velocity=lambda t: tuple(nominal[min(int(t / period), records - 1), :3]))
    return sim, block, plate, sensor, nominal, press


def planar_pose(x, X0):
    """Centroid (2,) and yaw (radians) of nodes ``x`` (n,3) relative to their rest
    positions ``X0`` (n,3): the rotation about the vertical that best maps the rest
    offsets from the centroid onto the current ones (2-D Procrustes, differentiable)."""
    c, c0 = x[:, :2].mean(0), X0[:, :2].mean(0)
    p, p0 = x[:, :2] - c, X0[:, :2] - c0
    s = (p0[:, 0] * p[:, 1] - p0[:, 1] * p[:, 0]).sum()
    k = (p0 * p).sum()
    return c - c0, torch.atan2(s, k)


class ObjectRepositioning(Task):
    name = "object_repositioning"

    def __init__(self, shift=(3e-3, 1.5e-3), yaw=20.0, move=0.03, E_object=3e5, E_sensor=1e5, waypoints=4,
                 dt=2e-5):
        shift = np.asarray(shift, np.float64).reshape(-1)
        if shift.shape != (2,):
            raise ds.InvalidScene(f"object_repositioning: shift must be two numbers (x, y in m), got {shift}")
        self.shift, self.yaw = shift, float(yaw)
        self.system, self.block, plate, self.sensor, nominal, self.move_start = _setup(move, E_object, E_sensor, dt)
        records = len(nominal)
        self.steps, self.record_every = records * EVERY, EVERY
        # the spline acts on the move only: the press and the final hold are fixed
        self.controls = SplineControls(dofs=[(plate.name, 0), (plate.name, 1), (plate.name, 5)], records=records,
                                       waypoints=int(waypoints), scale=[0.1, 0.1, 10.0],
                                       nominal={plate.name: nominal},
                                       span=(self.move_start, records - HOLD_RECORDS))
        self.rest = self.system.initial_state().x[self.block.start:self.block.stop]   # the block's nodes at rest

    def observe(self, rollout):
        final = rollout.records[-1][1].x[self.block.start:self.block.stop]
        centroid, yaw = planar_pose(final, self.rest.to(final.dtype))
        trace = sensor_trace(rollout, self.sensor)
        return {"shift": centroid, "yaw": torch.rad2deg(yaw), "normal_force": trace["normal"], "shear": trace["shear"]}

    def slip_ratio(self, run):
        ob = run.observed
        return slip_ratio(ob["shear"][self.move_start:], ob["normal_force"][self.move_start:], PAD_FRICTION)

    def _errors(self, run):
        """(centroid miss in m, yaw miss in degrees)."""
        d = run.observed["shift"] - torch.as_tensor(self.shift, dtype=run.observed["shift"].dtype)
        return torch.linalg.vector_norm(d), run.observed["yaw"] - self.yaw

    def loss(self, run):
        miss, dyaw = self._errors(run)
        return (miss / 1e-3) ** 2 + dyaw ** 2 + (torch.relu(self.slip_ratio(run) - 0.7) ** 2).mean()

    def success(self, run):
        miss, dyaw = self._errors(run)
        return bool(miss.detach() < 3e-4 and dyaw.detach().abs() < 1.5)

    def metrics(self, run):
        miss, dyaw = self._errors(run)
        return {"shift_m": run.observed["shift"].detach().tolist(), "yaw_deg": float(run.observed["yaw"]),
                "miss_m": float(miss), "yaw_miss_deg": float(dyaw),
                "max_slip_ratio": float(self.slip_ratio(run).detach().max())}


def task(shift=(3e-3, 1.5e-3), yaw=20.0, move=0.03, E_object=3e5, E_sensor=1e5, waypoints=4, dt=2e-5):
    return ObjectRepositioning(shift, yaw, move, E_object, E_sensor, waypoints, dt)


def build(move=0.03, E_object=3e5, E_sensor=1e5, dt=2e-5):
    """The nominal press (the block stays put), for ``diffsim run``."""
    sim, block, plate, sensor, nominal, _ = _setup(move, E_object, E_sensor, dt)
    steps = len(nominal) * EVERY
    return ds.Scene(sim, description=__doc__, steps=steps, every=max(1, steps // 40), camera=(30.0, -60.0),
                    view_bounds=(np.array([-0.012, -0.012, 0.0]), np.array([0.012, 0.012, 0.012])),
                    options=dict(move=move, E_object=E_object, E_sensor=E_sensor, dt=dt))
