"""Task: surface following. A dome tactile sensor (FEM, 12 mm footprint, facing down)
presses onto a rigid cylinder (radius 15 mm, axis along y: a curved surface) and traces it
along x over 8 mm, from one flank over the crest to the other, while keeping a target
normal force.

Objective: the sensor's normal force (its reading, per record interval) equal to the
target during the trace. Controls: the back plate's vertical velocity, a cubic spline of 6
waypoints (0.03 m/s per unit) added to the nominal profile (press 0.3 mm at the start,
then move along x at 0.5 m/s without any vertical motion: the force doubles over the
crest and falls on the far flank).
Loss: mean over the trace of ((F_n - target) / target)^2.
Success: |F_n - target| < 15% of the target at every record interval of the trace after
its first 1 mm (where the force builds up after the press).

Options: target (N, 0.3), radius (m, 0.015), trace (m, 8e-3), speed (trace speed m/s,
0.5), friction (0.3), E (sensor Pa, 5e4), waypoints (6), dt (s, 1.5e-5).
"""
import numpy as np

import diffsim as ds
from diffsim.tactile.sensor import mount_sensor
from diffsim.tasks import SplineControls, Task, sensor_trace

PRESS, PRESS_SPEED, EVERY = 3e-4, 0.1, 50
SETTLE = 1e-3          # m of the trace before the success test applies (the force builds up)


def _setup(radius, trace, speed, friction, E, dt):
    """Solver, sensor, the nominal plate velocity per record interval, record count and
    the first record of the trace."""
    sim = ds.FEMSolver(dt=dt, gravity=(0, 0, 0), tape_substeps=500)
    sim.add_collider(ds.CylinderCollider(center=(0.0, 0.0, -radius), radius=radius, height=0.05, axis=(0, 1, 0),
                                         name="surface"))
    x0, gap = -0.5 * trace, 5e-5
    apex_z = np.sqrt(radius ** 2 - x0 ** 2) - radius + gap          # just above the surface at x0
    press = int(round((PRESS + gap) / PRESS_SPEED / dt / EVERY))
    glide = int(round(trace / speed / dt / EVERY))
    nominal = np.zeros((press + glide, 6))
    nominal[:press, 2] = -(PRESS + gap) / (press * EVERY * dt)
    nominal[press:, 0] = trace / (glide * EVERY * dt)
    period = EVERY * dt
    pad, plate, sensor = mount_sensor(
        sim, ds.dome_pad(width=0.012, thickness=0.002, cap_height=0.002, cap_radius=0.012, resolution=0.0015),
        ds.FEMMaterial(E=E, nu=0.45, density=1100, mass_damping=300),
        ds.PenaltyContact(stiffness=1e10, friction=friction), apex=(x0, 0.0, apex_z), name="sensor",
        velocity=lambda t: tuple(nominal[min(int(t / period), len(nominal) - 1), :3]),
        markers="grid", map_resolution=(8, 8))
    return sim, plate, sensor, nominal, press


class SurfaceFollowing(Task):
    name = "surface_following"

    def __init__(self, target=0.3, radius=0.015, trace=8e-3, speed=0.5, friction=0.3, E=5e4, waypoints=6,
                 dt=1.5e-5):
        self.target = float(target)
        self.system, plate, self.sensor, nominal, self.first = _setup(radius, trace, speed, friction, E, dt)
        self.records = len(nominal)
        self.settle = int(round(SETTLE / speed / dt / EVERY))     # records of the trace's first SETTLE
        self.steps, self.record_every = self.records * EVERY, EVERY
        self.controls = SplineControls(dofs=[(plate.name, 2)], records=self.records, waypoints=int(waypoints),
                                       scale=0.03, nominal={plate.name: nominal})

    def observe(self, rollout):
        return {"normal_force": sensor_trace(rollout, self.sensor)["normal"]}

    def _error(self, run):
        return (run.observed["normal_force"][self.first:] - self.target) / self.target

    def loss(self, run):
        return (self._error(run) ** 2).mean()

    def success(self, run):
        return bool(self._error(run).detach()[self.settle:].abs().max() < 0.15)

    def metrics(self, run):
        e = self._error(run).detach()
        return {"max_force_error": float(e[self.settle:].abs().max()), "mean_normal_force": float(
            run.observed["normal_force"][self.first:].detach().mean())}


def task(target=0.3, radius=0.015, trace=8e-3, speed=0.5, friction=0.3, E=5e4, waypoints=6, dt=1.5e-5):
    return SurfaceFollowing(target, radius, trace, speed, friction, E, waypoints, dt)


def build(radius=0.015, trace=8e-3, speed=0.5, friction=0.3, E=5e4, dt=1.5e-5):
    """The nominal (uncontrolled) trace, for ``diffsim run``."""
    sim, plate, sensor, nominal, _ = _setup(radius, trace, speed, friction, E, dt)
    steps = len(nominal) * EVERY
    return ds.Scene(sim, description=__doc__, steps=steps, every=max(1, steps // 40), camera=(10.0, -80.0),
                    view_bounds=(np.array([-0.012, -0.01, -0.004]), np.array([0.012, 0.01, 0.006])),
                    options=dict(radius=radius, trace=trace, speed=speed, friction=friction, E=E, dt=dt))
